"""What the bounded HTML parser costs, against BeautifulSoup (the tree parser it replaced), in one run.

    python -m bench.parse_limits            # make bench-parse; writes bench/results/parse-limits.json

Each case runs in a fresh process per parser (so peak memory is that parser's alone): the product's
``ingestion.parsers.parse_document`` and, as the baseline, ``BeautifulSoup(data, "html.parser").get_text()``.
Reported: seconds, peak RSS growth (MiB), the outcome (a typed error for the bounded parser is the point),
and the product/baseline time ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "flat-5MB": lambda: b"<p>a</p>" * (5 * 1024 * 1024 // 8),
    "nested-2000": lambda: b"<div>" * 2000 + b"x" + b"</div>" * 2000,
    "text-5MB": lambda: (b"<p>" + b"word " * 40 + b"</p>\n") * (5 * 1024 * 1024 // 209),
}


def run_one(case: str, impl: str) -> dict[str, object]:
    data = CASES[case]()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        if impl == "product":
            from ingestion.parsers import parse_document

            outcome = f"ok: {len(parse_document(data, 'page.html').text)} chars"
        else:
            from bs4 import BeautifulSoup

            outcome = f"ok: {len(BeautifulSoup(data, 'html.parser').get_text())} chars"
    except BaseException as exc:  # the outcome is what is measured, errors included
        outcome = f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()
    seconds = time.perf_counter() - t0
    rss_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(rss_mib), "outcome": outcome}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/parse-limits.json"))
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return 0
    results: dict[str, dict[str, object]] = {}
    for case in CASES:
        row: dict[str, object] = {}
        for impl in ("baseline", "product"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.parse_limits", "--one", case, impl],
                capture_output=True,
                text=True,
                check=True,
            )
            row[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        base, prod = row["baseline"], row["product"]
        assert isinstance(base, dict) and isinstance(prod, dict)
        row["time_ratio"] = round(float(prod["seconds"]) / max(float(base["seconds"]), 1e-3), 2)
        results[case] = row
        print(f"{case}: baseline {base} | product {prod} | time ratio {row['time_ratio']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
