"""bench/load.py's own arithmetic and inputs (the bench itself runs on a real stack: ``make bench-load``)."""

from __future__ import annotations

import json

import pytest

from bench.load import PHASES, QUICK, Sizes, documents, main, percentile, summary_ms, table
from shared.protocol import MAX_MESSAGE_BYTES, IngestBatchRequest


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([3.0], 0.99) == 3.0


def test_summary_is_in_milliseconds_and_empty_is_marked() -> None:
    s = summary_ms([0.010, 0.020, 0.030])
    assert s["n"] == 3 and s["p50_ms"] == 20.0 and s["max_ms"] == 30.0
    assert summary_ms([]) == {"n": 0}


def test_bench_documents_are_distinct_and_a_batch_of_them_is_a_valid_message() -> None:
    docs = documents(Sizes().batch, "t")
    assert len({d["id"] for d in docs}) == len(docs)
    body = {"action": "ingest_batch", "request_id": "x", "documents": docs}
    IngestBatchRequest.model_validate(body)
    assert len(json.dumps(body).encode()) < MAX_MESSAGE_BYTES


def test_quick_is_smaller_than_the_full_run() -> None:
    full = Sizes()
    assert max(QUICK.held) < min(full.held) and QUICK.burst < full.burst and QUICK.chats < full.chats


def test_an_unknown_phase_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--quick", "--phases", "held,nonsense"])
    assert "nonsense" in capsys.readouterr().err
    assert "held" in PHASES


def test_the_table_shows_only_the_phases_run() -> None:
    report = {"llm": "m", "rag_max_tokens": 8, "burst": {
        "connects": 5, "chats_generating": 4, "succeeded": 5, "refused": 0, "failed_otherwise": 0,
        "all_opened_in_s": 0.1, "connect_latency": {"p50_ms": 1.0, "p99_ms": 2.0}, "chat_slots_busy_when_opened": 4,
    }}  # fmt: skip
    text = table(report)
    assert "burst of 5 connects" in text and "chats at once" not in text and "held" not in text
