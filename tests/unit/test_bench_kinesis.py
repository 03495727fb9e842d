"""bench/kinesis.py's stage breakdown (the bench itself runs on a real stack: ``make bench-kinesis``) and the
stage timer it reads (shared/stages.py): log lines as the poller and the ingestion function write them,
joined to the records by sequence number."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.kinesis import Put, read_log, stage_breakdown
from shared.stages import collecting, stage


def invocation(first: int, last: int, read: float, invoked: float, answered: float) -> dict[str, Any]:
    return {
        "message": "invoked ingestion",
        "first_sequence_number": str(first),
        "last_sequence_number": str(last),
        "read_at": read,
        "invoked_at": invoked,
        "answered_at": answered,
    }


def batch(first: int, ms: float, **stages: float) -> dict[str, Any]:
    return {"message": "kinesis batch", "first_sequence_number": str(first), "batch_ms": ms, "stages_ms": stages}


def test_each_record_is_joined_to_its_invocation_and_batch() -> None:
    puts = [Put("10", 100.000, 100.010, 100.400), Put("11", 100.100, 100.110, 100.400)]
    poller = [invocation(10, 11, 100.150, 100.151, 100.351)]
    ingestion = [batch(10, 190.0, embed=100.0, chunks_commit=50.0), {"message": "optimized chunks in 120 ms"}]
    out = stage_breakdown(puts, poller, ingestion)
    s = out["stages"]
    assert out["records_joined_to_logs"] == 2 and out["invocations"] == 1
    assert s["in_stream"]["n"] == 2 and s["in_stream"]["max_ms"] == pytest.approx(140.0)  # 100.150 - 100.010
    assert s["invoke"]["p50_ms"] == pytest.approx(200.0)
    assert s["handler.embed"]["p50_ms"] == 100.0 and s["handler.chunks_commit"]["p50_ms"] == 50.0
    assert s["invoke_overhead"]["p50_ms"] == pytest.approx(10.0)
    assert s["answered_to_seen"]["p50_ms"] == pytest.approx(49.0)
    assert s["total"]["max_ms"] == pytest.approx(400.0)
    assert out["fts_optimizations"]["n"] == 1 and out["fts_optimizations"]["p50_ms"] == 120.0


def test_a_retried_record_counts_its_last_invocation_and_unlogged_records_are_left_out() -> None:
    puts = [Put("5", 10.0, 10.01, 11.0), Put("9", 10.0, 10.01, 11.0)]
    poller = [invocation(5, 6, 10.1, 10.1, 10.3), invocation(5, 6, 10.5, 10.5, 10.9)]  # the retry
    out = stage_breakdown(puts, poller, [batch(5, 100.0, embed=20.0), batch(5, 300.0, embed=30.0)])
    assert out["records_joined_to_logs"] == 1
    assert out["stages"]["invoke"]["p50_ms"] == pytest.approx(400.0)
    assert out["stages"]["handler.embed"]["p50_ms"] == 30.0


def test_read_log_keeps_the_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text(json.dumps({"a": 1}) + "\nnot json\n[1]\n" + json.dumps({"b": 2}) + "\n")
    assert read_log(path) == [{"a": 1}, {"b": 2}]
    assert read_log(tmp_path / "missing.log") == []


def test_stages_add_up_within_a_collection_and_only_there() -> None:
    with stage("outside"):
        pass  # no collection: nothing recorded, nothing raised
    with collecting() as ms:
        for _ in range(2):
            with stage("a"):
                pass
        with pytest.raises(ValueError), stage("b"):
            raise ValueError("a failing stage still counts")

        def elsewhere() -> None:
            with stage("c"):
                pass

        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())  # another thread's "c" is not in it
