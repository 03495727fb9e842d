"""Small commits: what a stream of small writes costs as their files pile up, with folds after 32 commits
(the default) against folds by rows only (the baseline, ``fold_commits=0``), both in this run.

Every LanceDB commit leaves a small file that later commits and queries read until a fold
(Table.optimize) compacts them. Two streams, each on a fresh folder store, in process:
- chunks: one-chunk ``replace_document`` calls (a Kinesis stream of documents) on a 2,000-chunk table;
- turns: a chat turn's claim and commit (``begin_turn`` + ``commit_turn``), ten conversations in rotation.
Writes are spaced as a stream's are, so the background upkeep runs between them. Reports p50/p99 of each
write, p50 of the first and of the last 50, the folds during the stream (``optimized ... in N ms`` log lines),
the process's CPU over the stream (its upkeep included), and the ratios against the baseline. Writes
bench/results/small-commits.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import percentile
from shared.timing import iso_utc
from shared.vector_store import ChunkRow, MessageRow, VectorStore

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ["lighthouse", "keeper", "ledger", "ship", "green", "sea", "rock", "coast", "harbour", "storm", "wave", "tide"]


class Folds(logging.Handler):
    """The durations of the folds the store's upkeep logs."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"optimized \S+ in (\d+) ms", record.getMessage())
        if m:
            self.ms.append(float(m.group(1)))


def _chunk(rnd: random.Random, doc_id: str) -> ChunkRow:
    v = [rnd.gauss(0, 1) for _ in range(384)]
    norm = sum(x * x for x in v) ** 0.5
    text = " ".join(rnd.choice(WORDS) for _ in range(40))
    return ChunkRow(doc_id=doc_id, chunk=0, title=doc_id, text=text, vector=[x / norm for x in v])


def chunks_stream(fold_commits: int, writes: int, gap_s: float, folds: Folds) -> tuple[list[float], float]:
    rnd = random.Random(1)
    store = VectorStore(
        tempfile.mkdtemp(prefix="small-commits-"), dimension=384, model_id="m", fts_fold_commits=fold_commits
    )
    for b in range(20):  # the table before the stream: 2,000 chunks in 20 commits, folded
        store.replace_documents({f"base{b}-{k}": [_chunk(rnd, f"base{b}-{k}")] for k in range(100)}, tenant="default")
    store.full_text_index.optimize(store.chunks())
    store.wait_for_upkeep(300)
    folds.ms.clear()
    cpu0 = time.process_time()
    ms = []
    for i in range(writes):
        t0 = time.perf_counter()
        store.replace_document(f"doc{i}", [_chunk(rnd, f"doc{i}")], tenant="default")
        ms.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap_s)
    store.wait_for_upkeep(300)
    return ms, time.process_time() - cpu0


def turns_stream(fold_commits: int, turns: int, gap_s: float, folds: Folds) -> tuple[list[float], float]:
    store = VectorStore(
        tempfile.mkdtemp(prefix="small-commits-"), dimension=384, model_id="m", messages_fold_commits=fold_commits
    )
    conversations = [str(uuid.uuid4()) for _ in range(10)]
    folds.ms.clear()
    cpu0 = time.process_time()
    ms = []
    for i in range(turns):
        cid = conversations[i % len(conversations)]
        t0 = time.perf_counter()
        claim = store.begin_turn(cid, tenant="default", principal="bench", lease_s=60, new=i < len(conversations))
        assert claim is not None
        now = iso_utc()
        messages = [
            MessageRow(str(uuid.uuid4()), cid, claim.seq, "user", f"question {i}", now),
            MessageRow(str(uuid.uuid4()), cid, claim.seq + 1, "assistant", f"answer {i}", now),
        ]
        store.commit_turn(claim, messages, tenant="default", principal="bench")
        ms.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap_s)
    store.wait_for_upkeep(300)
    return ms, time.process_time() - cpu0


def _summary(ms: list[float], folds: list[float], cpu_s: float) -> dict[str, Any]:
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "first_50_p50_ms": round(statistics.median(ms[:50]), 1),
        "last_50_p50_ms": round(statistics.median(ms[-50:]), 1),
        "folds": len(folds),
        "fold_p50_ms": round(statistics.median(folds), 1) if folds else None,
        "process_cpu_s": round(cpu_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.small_commits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300, help="writes (chunks) and turns of each stream")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="the pause between two writes")
    args = parser.parse_args(argv)
    folds = Folds()
    logging.getLogger("shared.vector_store").addHandler(folds)
    logging.getLogger("shared.vector_store").setLevel(logging.INFO)
    streams = {"chunks": chunks_stream, "turns": turns_stream}
    result: dict[str, Any] = {"benchmark": "small commits", "command": "make bench-small-commits", "streams": {}}
    for name, stream in streams.items():
        rows: dict[str, Any] = {}
        for label, fold_commits in (("baseline: folds by rows only", 0), ("folds after 32 commits too", 32)):
            ms, cpu_s = stream(fold_commits, args.writes, args.gap_ms / 1000, folds)
            rows[label] = _summary(ms, list(folds.ms), cpu_s)
            print(f"{name:6} {label:30} {rows[label]}", flush=True)
        base, new = rows.values()
        rows["ratio (folds after 32 commits / baseline)"] = {
            k: round(new[k] / base[k], 3) for k in ("p50_ms", "p99_ms", "last_50_p50_ms", "process_cpu_s")
        }
        print(f"{name:6} ratio {rows['ratio (folds after 32 commits / baseline)']}", flush=True)
        result["streams"][name] = rows
    result.update(
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={"platform": platform.platform(), "python": platform.python_version()},
        writes=args.writes,
        gap_ms=args.gap_ms,
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "small-commits.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
