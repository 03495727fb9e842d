"""What identity costs a WebSocket connect: the handshake through ``$connect`` with the authorizer (warm
cache) vs ``RAG_AUTH=none``, on real processes, measured in one run.

    python -m bench.connect_overhead              # make bench-auth; writes bench/results/connect-overhead.json
    python -m bench.connect_overhead -n 50        # quicker

Two stacks are started with the launcher ``make up`` uses (shared/stack.py): the gateway, the authorizer and
the chat function (started for completeness: since issue 11 ``$connect`` invokes no function), each on its
own ports and data folder; identity is on in one
(an API key made with shared/api_keys.py, sent as ``Authorization: Bearer``) and off in the other. The first
connect of the authorized stack fills the gateway's authorizer cache (TTL 300 s, as API Gateway's default);
then connects alternate between the two stacks, so that both see the same machine load. A connect is timed
from the TCP connect to the completed handshake (101) — on the authorized stack that includes the
authorizer-cache lookup (the results in bench/results were measured when ``$connect`` also invoked the chat
function on both stacks); closing is not timed.

Target (issue 10): p50 overhead <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from shared.stack import Stack, StackConfig, key_store, plan

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "connect-overhead.json"
TARGET_P50_MS = 5.0
SERVICES = ("authorizer", "chat", "gateway")  # what a connect touches


def start(name: str, data: Path, log_dir: Path, auth: str | None) -> Stack:
    cfg = StackConfig.any_ports(
        data_dir=data,
        auth=auth,
        extra_env={"LOG_LEVEL": "WARNING"},
    )
    processes = plan(cfg)
    for p in processes:
        if p.name not in SERVICES:
            p.stop()  # releases the socket plan() bound; never started
    stack = Stack([p for p in processes if p.name in SERVICES], cfg)
    stack.start(log_dir / name, timeout=180)
    return stack


def connect_ms(url: str, headers: dict[str, str] | None) -> float:
    t0 = time.perf_counter()
    with connect(url, additional_headers=headers, open_timeout=30):
        elapsed = (time.perf_counter() - t0) * 1000
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.50), 3),
        "p90_ms": round(percentile(values, 0.90), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
        "min_ms": round(min(values), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connect_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connects", type=int, default=300, help="timed connects per stack (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed connects per stack first (default 20)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="connect-overhead-") as tmp:
        root = Path(tmp)
        stacks: list[Stack] = []
        try:
            print("starting two stacks (authorizer on / RAG_AUTH=none) ...", flush=True)
            on = start("auth-on", root / "on", root / "logs", None)
            stacks.append(on)
            off = start("auth-off", root / "off", root / "logs", "none")
            stacks.append(off)
            assert on.config is not None
            _record, key = key_store(on.config).create("default", "bench: connect overhead")
            headers = {"Authorization": f"Bearer {key}"}
            for _ in range(args.warmup):  # the first fills the authorizer cache
                connect_ms(on.ws_url, headers)
                connect_ms(off.ws_url, None)
            with_auth: list[float] = []
            without: list[float] = []
            for i in range(args.connects):
                # Alternate which goes first, so neither always follows the other.
                if i % 2:
                    with_auth.append(connect_ms(on.ws_url, headers))
                    without.append(connect_ms(off.ws_url, None))
                else:
                    without.append(connect_ms(off.ws_url, None))
                    with_auth.append(connect_ms(on.ws_url, headers))
            authorizer_invocations = authorizer_count(on)
        finally:
            for s in stacks:
                s.stop()

    on_s, off_s = summary(with_auth), summary(without)
    overhead = {k: round(on_s[k] - off_s[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    result: dict[str, Any] = {
        "benchmark": "WebSocket connect (handshake through $connect): authorizer with a warm cache vs RAG_AUTH=none",
        "command": f"make bench-auth  ({' '.join(['python -m bench.connect_overhead', *(argv or sys.argv[1:])])})",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "connects_per_stack": args.connects,
        "warmup_per_stack": args.warmup,
        "auth_on": on_s,
        "auth_off": off_s,
        "overhead": overhead,
        "authorizer_invocations": authorizer_invocations,
        "target_p50_overhead_ms": TARGET_P50_MS,
        "meets_target": overhead["p50_ms"] <= TARGET_P50_MS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nconnect p50 / p99: auth on {on_s['p50_ms']:.2f} / {on_s['p99_ms']:.2f} ms, "
        f"RAG_AUTH=none {off_s['p50_ms']:.2f} / {off_s['p99_ms']:.2f} ms\n"
        f"overhead p50 {overhead['p50_ms']:+.2f} ms, p99 {overhead['p99_ms']:+.2f} ms "
        f"(target p50 <= {TARGET_P50_MS:g} ms: {'met' if result['meets_target'] else 'NOT met'}); "
        f"authorizer invoked {authorizer_invocations} times\n-> {args.out}"
    )
    return 0


def authorizer_count(stack: Stack) -> int | None:
    """How often the authorizer ran (its runtime's /health): 1 means every timed connect hit the cache."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{stack.by_name['authorizer'].url}/health", timeout=5) as resp:
            return int(json.loads(resp.read())["invocations"])
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
