"""``put_record`` -> searchable, through the local Kinesis pipeline, at a steady rate.

    python -m bench.kinesis              # make bench-kinesis; 10 records/s for 60 s; bench/results/kinesis.json
    python -m bench.kinesis --quick      # 5 records/s for 5 s: checks the bench runs (not a measurement)

One stack is started with the launcher ``make up`` uses (shared/stack.py): the six services, moto's Kinesis
server and the event source mapping (shared/event_source.py, its default settings: BatchSize 100, no
batching window, GetRecords every ``RAG_KINESIS_POLL_INTERVAL_S`` on an idle shard). A producer puts one
document per record (``put_record``, PartitionKey = doc_id, the real-time article's producer's call) at
``--rate`` records/s; a watcher reads the index the way the chat function does (LanceDB, read consistency
0: a search sees every commit) every few milliseconds and notes when each document is there. Latency =
that moment - just before ``put_record``. At the end a sample of the documents is searched through the
product (WebSocket ``search``, the default tenant's key) to confirm "there" means "searchable".

Where the time goes (``stages``, p50/p99 per record): the poller logs each invocation (when GetRecords
returned its records, when it invoked, when the answer came) and the ingestion function each Kinesis batch
(``stages_ms``: parse, embed, lease_acquire, raw_put, chunks_commit, leftovers, lease_release); the bench
joins them to each record by its sequence number (``stage_breakdown``).

The machine's load average and CPU count are recorded at the start and the end: a shared machine makes the
figures noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import summary_ms

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "kinesis.json"
WORDS = [
    "amber",
    "basalt",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "iris",
    "juniper",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "opal",
    "prairie",
    "quartz",
    "river",
    "sierra",
    "tundra",
    "umber",
    "valley",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
]


def text_for(i: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(40))
    return f"Bench record {i}: station {i} reports {words}."


class Watcher(threading.Thread):
    """Polls LanceDB for the pending doc ids; ``seen[doc_id]`` = perf_counter when first there. It looks at
    the table's latest version every 2 ms and queries the pending ids only when a commit made a new one (not
    when ids were added: an id's commit comes after it is added, so it makes a new version): the query (~17
    ms of CPU) run back to back took most of a core from the two-core pipeline it measures, and once per
    added id, 10 a second, still ~40% of one (stop 21); the bench process's CPU is in the results."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri = uri
        self.pending: set[str] = set()
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.query_s: list[float] = []

    def run(self) -> None:
        from datetime import timedelta

        import lancedb

        from shared.vector_store import sql_str

        db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
        table = None
        queried: int | None = None  # the version last queried
        # A commit adds a manifest to the table's _versions folder, which changes the folder's mtime: a stat
        # (microseconds) tells when to ask LanceDB for the version (0.33 ms of CPU a call, 2 ms apart: ~15%
        # of a core). Not a folder (an s3:// URI): ask LanceDB every time.
        versions = Path(self.uri) / "chunks.lance" / "_versions"
        local = "://" not in self.uri
        stamp: int | None = None
        while not self.stop.is_set():
            with self.lock:
                pending = sorted(self.pending)
            if not pending:
                time.sleep(0.002)
                continue
            t0 = time.perf_counter()
            try:
                if local:
                    mtime = versions.stat().st_mtime_ns
                    if mtime == stamp:
                        time.sleep(0.002)
                        continue
                    stamp = mtime
                if table is None:
                    table = db.open_table("chunks")
                version = table.version
                if queried == version:
                    # No commit since the last query: an id added since cannot be there either (it is added
                    # before its put_record, so its commit makes a version after the one queried).
                    time.sleep(0.002)
                    continue
                queried = version
                where = "doc_id IN (" + ", ".join(sql_str(d) for d in pending) + ")"
                rows = table.search().where(where).select(["doc_id"]).limit(10_000).to_list()
            except (ValueError, FileNotFoundError, OSError, RuntimeError):
                table = None  # not created yet
                time.sleep(0.005)
                continue
            now = time.perf_counter()
            self.query_s.append(now - t0)
            found = {r["doc_id"] for r in rows}
            with self.lock:
                for d in found & self.pending:
                    self.seen[d] = now
                self.pending -= found


def run(rate: float, duration: float, root: Path) -> dict[str, Any]:
    import boto3

    from shared.stack import Stack, StackConfig, ensure_local_key, fetch_model, plan

    cfg = StackConfig.any_ports(llm_model_path=fetch_model(), data_dir=root / "data")
    stack = Stack(plan(cfg), cfg)
    stack.start(root / "logs", timeout=300)
    try:
        key, _ = ensure_local_key(cfg)  # tenant "default": where Kinesis records write
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=stack.kinesis_url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        stream = stack.stream_name
        assert cfg.lancedb_uri is not None
        watcher = Watcher(cfg.lancedb_uri)
        watcher.start()
        rng = random.Random(13)
        # Warm-up: the first record pays the cold start (table creation, model load): not measured.
        warm = "warmup-0"
        with watcher.lock:
            watcher.pending.add(warm)
        kinesis.put_record(
            StreamName=stream, Data=json.dumps({"doc_id": warm, "text": text_for(0, rng)}).encode(), PartitionKey=warm
        )
        deadline = time.monotonic() + 120
        while warm not in watcher.seen and time.monotonic() < deadline:
            time.sleep(0.05)
        load_start = os.getloadavg()
        cpu_start = time.process_time()
        put_at: dict[str, float] = {}
        put_s: list[float] = []
        sequence: dict[str, str] = {}
        wall = time.time() - time.perf_counter()  # perf_counter -> Unix time (the processes log Unix times)
        n = int(rate * duration)
        start = time.perf_counter()
        for i in range(n):
            target = start + i / rate
            time.sleep(max(0.0, target - time.perf_counter()))
            doc_id = f"bench-{i}"
            data = json.dumps({"doc_id": doc_id, "text": text_for(i, rng), "source": "bench"}).encode()
            with watcher.lock:
                watcher.pending.add(doc_id)
            t0 = time.perf_counter()
            put_at[doc_id] = t0
            put = kinesis.put_record(StreamName=stream, Data=data, PartitionKey=doc_id)
            put_s.append(time.perf_counter() - t0)
            sequence[doc_id] = str(put["SequenceNumber"])
        deadline = time.monotonic() + 60
        while watcher.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        watcher.stop.set()
        bench_cpu_s = time.process_time() - cpu_start
        load_end = os.getloadavg()
        latencies = [watcher.seen[d] - t for d, t in put_at.items() if d in watcher.seen]
        missing = sorted(d for d in put_at if d not in watcher.seen)
        searchable = confirm_searchable(stack, key, rng.sample(sorted(watcher.seen), min(20, len(watcher.seen))))
        with urllib.request.urlopen(f"{stack.by_name['event_source'].url}/health", timeout=10) as r:
            poller = json.loads(r.read())
        timeline = [
            Put(sequence[d], put_at[d] + wall, put_at[d] + put_s[k] + wall, watcher.seen[d] + wall)
            for k, d in enumerate(put_at)
            if d in watcher.seen
        ]
        breakdown = stage_breakdown(
            timeline, read_log(root / "logs" / "event_source.log"), read_log(root / "logs" / "ingestion.log")
        )
        return {
            "rate_per_s": rate,
            "duration_s": duration,
            "records": n,
            "put_record_to_searchable": summary_ms(latencies),
            "put_record_call": summary_ms(put_s),
            **breakdown,
            "not_searchable_within_60s": missing,
            "watcher_query": summary_ms(watcher.query_s),
            # the producer and the watcher: CPU the measurement takes from the pipeline it measures
            "bench_process_cpu_s": round(bench_cpu_s, 2),
            "confirmed_by_product_search": searchable,
            "poller": poller,
            "load_avg_start": [round(x, 2) for x in load_start],
            "load_avg_end": [round(x, 2) for x in load_end],
        }
    finally:
        stack.stop()


@dataclass(frozen=True)
class Put:
    """One record's life as the bench saw it (Unix seconds): put_record called and answered, first seen."""

    sequence_number: str
    put_at: float
    put_done: float
    seen_at: float


def read_log(path: Path) -> list[dict[str, Any]]:
    """A process's JSON log lines (other lines skipped)."""
    lines: list[dict[str, Any]] = []
    if not path.is_file():
        return lines
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def stage_breakdown(
    puts: list[Put], poller_log: list[dict[str, Any]], ingestion_log: list[dict[str, Any]]
) -> dict[str, Any]:
    """Each record's latency, stage by stage (p50/p99 over the records, in ms):

    - ``in_stream``: put_record answered -> GetRecords returned the record (the poll interval, and the
      previous batch's invocation when the shard's reader was busy with it);
    - ``to_invoke``: -> the invocation started; ``invoke``: the invocation, answer included; in it
      ``handler.<stage>`` (the ingestion function's stages_ms of the batch) and ``invoke_overhead`` (the
      invocation minus the handler's batch: HTTP, SigV4, the local runtime, the event's JSON);
    - ``answered_to_seen``: the answer -> the watcher saw the document (negative: seen before the
      invocation returned, i.e. before the lease was given up).

    A record is joined to the last invocation whose sequence range holds it (a retried batch's final one)
    and to the ingestion line of the batch that invocation started with."""
    invocations = [
        line
        for line in poller_log
        if "invoked_at" in line and "first_sequence_number" in line and "last_sequence_number" in line
    ]
    batches: dict[str, dict[str, Any]] = {}
    for line in ingestion_log:
        if isinstance(line.get("stages_ms"), dict) and "first_sequence_number" in line:
            batches[str(line["first_sequence_number"])] = line  # the last of a retried batch
    values: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        values.setdefault(name, []).append(seconds)

    joined = 0
    for put in puts:
        seq = int(put.sequence_number)
        inv = next(
            (
                i
                for i in reversed(invocations)
                if int(i["first_sequence_number"]) <= seq <= int(i["last_sequence_number"])
            ),
            None,
        )
        if inv is None:
            continue
        joined += 1
        add("put_record_call", put.put_done - put.put_at)
        add("in_stream", float(inv["read_at"]) - put.put_done)
        add("to_invoke", float(inv["invoked_at"]) - float(inv["read_at"]))
        invoke = float(inv["answered_at"]) - float(inv["invoked_at"])
        add("invoke", invoke)
        batch = batches.get(str(inv["first_sequence_number"]))
        if batch is not None:
            for name, ms in batch["stages_ms"].items():
                add(f"handler.{name}", float(ms) / 1000)
            add("handler.batch", float(batch["batch_ms"]) / 1000)
            add("invoke_overhead", invoke - float(batch["batch_ms"]) / 1000)
        add("answered_to_seen", put.seen_at - float(inv["answered_at"]))
        add("total", put.seen_at - put.put_at)
    optimized = [
        float(m.group(1)) / 1000
        for line in ingestion_log
        if (m := re.fullmatch(r"optimized chunks in (\d+) ms", str(line.get("message", ""))))
    ]
    stages = {name: summary_ms(v) for name, v in values.items()}
    return {
        "stages": stages,
        "records_joined_to_logs": joined,
        "invocations": len(invocations),
        "fts_optimizations": summary_ms(optimized),
    }


def confirm_searchable(stack: Any, key: str, doc_ids: list[str]) -> dict[str, int]:
    """Search each sampled document's own text through the product: found at rank 1..5?"""
    from websockets.sync.client import connect

    found = 0
    with connect(stack.ws_url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=30) as ws:
        for i, doc_id in enumerate(doc_ids):
            n = int(doc_id.split("-")[-1])
            ws.send(json.dumps({"action": "search", "request_id": f"s{i}", "query": f"Bench record {n} station {n}"}))
            reply = json.loads(ws.recv(timeout=60))
            if any(h.get("doc_id") == doc_id for h in reply.get("results", [])[:5]):
                found += 1
    return {"sampled": len(doc_ids), "found_in_top_5": found}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kinesis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="records per second (default 10)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of producing (default 60)")
    parser.add_argument("--quick", action="store_true", help="5 records/s for 5 s, no results file")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    rate, duration = (5.0, 5.0) if args.quick else (args.rate, args.duration)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    with tempfile.TemporaryDirectory(prefix="bench-kinesis-") as tmp:
        result = run(rate, duration, Path(tmp))
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **result,
    }
    print(json.dumps(report, indent=2))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
