"""The local Kinesis event source mapping's logic (shared/event_source.py), without processes: how a batch is
delivered (partial batch responses, bisect on function error, bounded retries, the on-failure record),
the event it builds, and its checkpoints. The invocations are scripted answers; the I/O is tested by
tests/stack/test_kinesis.py on real processes."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from shared.event_source import (
    Answer,
    BatchDelivery,
    Checkpoints,
    Discarded,
    EventSourceSettings,
    Record,
    ShardProgress,
    kinesis_event,
    lane_of,
    on_failure_record,
    parse_answer,
)
from shared.events import KinesisEventRecord
from tests.support.paths import EVENTS

NOW = 1_800_000_000.0


def records(n: int, arrival: float = NOW) -> list[Record]:
    return [Record(str(100 + i), f"pk{i}", json.dumps({"doc_id": f"d{i}"}).encode(), arrival) for i in range(n)]


def settings(**kw: Any) -> EventSourceSettings:
    return EventSourceSettings(**{"maximum_retry_attempts": 2, "retry_backoff_s": 0.1, **kw})


class Run:
    """A delivery whose invocations answer ``script(batch)``; records what happened."""

    def __init__(self, script: Callable[[list[str]], Answer], **kw: Any) -> None:
        self.calls: list[list[str]] = []
        self.done: list[list[str]] = []
        self.discarded: list[Discarded] = []
        self.sleeps: list[float] = []

        def invoke(batch: Sequence[Record]) -> Answer:
            seqs = [r.sequence_number for r in batch]
            self.calls.append(seqs)
            return script(seqs)

        self.delivery = BatchDelivery(
            settings(**kw),
            invoke=invoke,
            checkpoint=lambda part: self.done.append([r.sequence_number for r in part]),
            discard=self.discarded.append,
            sleep=self.sleeps.append,
            clock=lambda: NOW + 1,
        )

    def deliver(self, batch: Sequence[Record]) -> Run:
        self.delivery.deliver(batch)
        return self


def fails(*bad: str) -> Callable[[list[str]], Answer]:
    """The handler's partial batch response: the records in ``bad`` fail whenever they are delivered."""
    return lambda seqs: Answer(failed=tuple(s for s in seqs if s in bad))


def crashes_with(poison: str) -> Callable[[list[str]], Answer]:
    """A function that raises (X-Amz-Function-Error) whenever ``poison`` is in its batch."""
    return lambda seqs: Answer(function_error="Unhandled") if poison in seqs else Answer()


def test_a_batch_that_succeeds_is_checkpointed_once() -> None:
    run = Run(lambda seqs: Answer()).deliver(records(3))
    assert run.calls == [["100", "101", "102"]]
    assert run.done == [["100", "101", "102"]] and run.discarded == [] and run.sleeps == []


def test_a_partial_failure_checkpoints_before_it_and_retries_from_it() -> None:
    answers = iter([Answer(failed=("102",)), Answer()])
    run = Run(lambda seqs: next(answers)).deliver(records(4))
    assert run.calls == [["100", "101", "102", "103"], ["102", "103"]]
    assert run.done == [["100", "101"], ["102", "103"]]
    assert len(run.sleeps) == 1 and run.discarded == []


def test_the_lowest_failed_record_decides() -> None:
    answers = iter([Answer(failed=("103", "101")), Answer()])
    run = Run(lambda seqs: next(answers)).deliver(records(4))
    assert run.calls[1] == ["101", "102", "103"] and run.done[0] == ["100"]


def test_after_the_retries_the_rest_goes_to_the_on_failure_destination() -> None:
    run = Run(fails("101"), maximum_retry_attempts=2).deliver(records(3))
    # The first attempt and two retries, each from the failed record on.
    assert run.calls == [["100", "101", "102"], ["101", "102"], ["101", "102"]]
    assert run.done == [["100"], ["101", "102"]]
    (part,) = run.discarded
    assert [r.sequence_number for r in part.records] == ["101", "102"]
    assert part.condition == "RetryAttemptsExhausted" and part.invoke_count == 3
    # Backoff doubles.
    assert len(run.sleeps) == 2 and run.sleeps[1] > run.sleeps[0] / 2


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_maximum_retry_attempts_bounds_the_invocations(retries: int) -> None:
    run = Run(fails("100"), maximum_retry_attempts=retries).deliver(records(1))
    assert len(run.calls) == 1 + retries and len(run.discarded) == 1


def test_a_function_error_bisects_down_to_the_poison_record() -> None:
    run = Run(crashes_with("102")).deliver(records(4))
    assert run.calls[:3] == [["100", "101", "102", "103"], ["100", "101"], ["102", "103"]]
    # The poison record alone fails 1 + 2 times; its neighbour goes on.
    assert run.calls[3:] == [["102"], ["102"], ["102"], ["103"]]
    assert run.done == [["100", "101"], ["102"], ["103"]]
    (part,) = run.discarded
    assert [r.sequence_number for r in part.records] == ["102"] and part.function_error == "Unhandled"


def test_without_bisect_a_function_error_fails_the_whole_batch() -> None:
    run = Run(crashes_with("102"), bisect_on_function_error=False).deliver(records(4))
    assert run.calls == [["100", "101", "102", "103"]] * 3
    assert [len(p.records) for p in run.discarded] == [4] and run.done == [["100", "101", "102", "103"]]


@pytest.mark.parametrize("failed", [("999",), ("*",)])
def test_an_unknown_or_empty_identifier_fails_the_whole_batch(failed: tuple[str, ...]) -> None:
    answers = iter([Answer(failed=failed), Answer()])
    run = Run(lambda seqs: next(answers)).deliver(records(3))
    assert run.calls == [["100", "101", "102"]] * 2 and run.done == [["100", "101", "102"]]


def test_an_unavailable_function_is_retried_without_counting_an_attempt() -> None:
    answers = iter([Answer(unavailable="URLError")] * 5 + [Answer()])
    run = Run(lambda seqs: next(answers), maximum_retry_attempts=0).deliver(records(2))
    assert len(run.calls) == 6 and run.discarded == [] and run.done == [["100", "101"]]


def test_records_older_than_the_maximum_age_are_discarded_uninvoked() -> None:
    run = Run(lambda seqs: Answer(), maximum_record_age_s=60).deliver(records(2, arrival=NOW - 120))
    assert run.calls == [] and [p.condition for p in run.discarded] == ["RecordAgeExceeded"]
    assert run.done == [["100", "101"]]
    # -1: no limit.
    assert Run(lambda seqs: Answer(), maximum_record_age_s=-1).deliver(records(2, arrival=0)).calls != []


@pytest.mark.parametrize(
    ("status", "error", "payload", "expected"),
    [
        (200, None, b'{"batchItemFailures": []}', Answer()),
        (200, None, b"", Answer()),
        (200, None, b"null", Answer()),
        (
            200,
            None,
            b'{"batchItemFailures": [{"itemIdentifier": "7"}, {"itemIdentifier": "9"}]}',
            Answer(failed=("7", "9")),
        ),
        (200, None, b'{"batchItemFailures": [{"itemIdentifier": ""}]}', Answer(failed=("*",))),
        (200, None, b'{"batchItemFailures": [{"itemIdentifier": null}]}', Answer(failed=("*",))),
        (200, None, b'{"batchItemFailures": "x"}', Answer(failed=("*",))),
        (200, "Unhandled", b'{"errorMessage": "boom"}', Answer(function_error="Unhandled")),
    ],
)
def test_parse_answer(status: int, error: str | None, payload: bytes, expected: Answer) -> None:
    assert parse_answer(status, error, payload) == expected


def test_the_event_is_lambdas_kinesis_event_and_the_handler_reads_it() -> None:
    s = settings(stream_name="docs", region="eu-west-1")
    event = kinesis_event(records(2), "shardId-000000000003", s)
    sample = json.loads((EVENTS / "kinesis_batch.json").read_text())["Records"][0]
    first = event["Records"][0]
    assert set(first) == set(sample) and set(first["kinesis"]) == set(sample["kinesis"])
    assert first["eventID"] == "shardId-000000000003:100" and first["eventSource"] == "aws:kinesis"
    assert first["eventSourceARN"] == "arn:aws:kinesis:eu-west-1:123456789012:stream/docs"
    assert first["awsRegion"] == "eu-west-1" and first["kinesis"]["kinesisSchemaVersion"] == "1.0"
    # The model the ingestion handler validates each record with (shared/events.py).
    good = [KinesisEventRecord.model_validate(r) for r in event["Records"]]
    assert [json.loads(r.kinesis.payload())["doc_id"] for r in good] == ["d0", "d1"]
    assert [r.event_id for r in good] == ["shardId-000000000003:100", "shardId-000000000003:101"]


def test_the_on_failure_record_is_lambdas() -> None:
    part = Discarded(tuple(records(3)), "RetryAttemptsExhausted", 4, "Unhandled")
    out = on_failure_record(part, "shardId-000000000000", settings())
    assert out["version"] == "1.0" and out["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert out["requestContext"]["approximateInvokeCount"] == 4
    assert out["requestContext"]["functionArn"] == "arn:aws:lambda:us-east-1:123456789012:function:ingestion"
    assert out["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    info = out["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == ("100", "102", 3)
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")
    assert "doc_id" not in json.dumps(out)  # metadata only, never the records' data


def test_checkpoints_persist_move_forward_only_and_belong_to_one_stream(tmp_path: Path) -> None:
    cp = Checkpoints(tmp_path, "docs", epoch="2026-01-01T00:00:00")
    assert cp.get("shardId-0") is None
    cp.set("shardId-0", "120")
    cp.set("shardId-0", "110")  # behind: ignored
    cp.set("shardId-1", "5")
    again = Checkpoints(tmp_path, "docs", epoch="2026-01-01T00:00:00")
    assert (again.get("shardId-0"), again.get("shardId-1")) == ("120", "5")
    # Sequence numbers compare as numbers, not strings.
    again.set("shardId-1", "10")
    assert Checkpoints(tmp_path, "docs", epoch="2026-01-01T00:00:00").get("shardId-1") == "10"
    # The stream was created again (moto's server restarted): its old checkpoints are not this one's.
    assert Checkpoints(tmp_path, "docs", epoch="2026-02-02T00:00:00").get("shardId-0") is None


def test_batch_settings_reach_the_event_and_the_arns(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "RAG_KINESIS_STREAM_NAME": "feed",
        "RAG_KINESIS_FUNCTION_NAME": "ingest2",
        "RAG_AWS_REGION": "ap-south-1",
        "RAG_KINESIS_BATCH_SIZE": "7",
        "RAG_KINESIS_MAXIMUM_BATCHING_WINDOW_S": "1.5",
        "RAG_KINESIS_MAXIMUM_RETRY_ATTEMPTS": "9",
        "RAG_KINESIS_BISECT_ON_FUNCTION_ERROR": "false",
    }.items():
        monkeypatch.setenv(var, value)
    s = EventSourceSettings()
    assert s.stream_arn() == "arn:aws:kinesis:ap-south-1:123456789012:stream/feed"
    assert s.function_arn().endswith(":function:ingest2")
    assert (s.batch_size, s.maximum_batching_window_s, s.maximum_retry_attempts) == (7, 1.5, 9)
    assert s.bisect_on_function_error is False


def test_one_partition_key_always_joins_the_same_lane_and_keys_spread_over_all() -> None:
    keys = [f"doc-{i}" for i in range(400)]
    for factor in (1, 2, 4, 10):
        lanes = [lane_of(k, factor) for k in keys]
        assert lanes == [lane_of(k, factor) for k in keys]  # stable (not Python's per-process hash)
        assert set(lanes) == set(range(factor))
        assert min(lanes.count(i) for i in range(factor)) > 400 / factor / 2  # roughly even
    assert lane_of("anything", 1) == 0


@pytest.mark.parametrize("seed", range(200))
def test_the_checkpoint_moves_only_over_records_done_without_a_gap(seed: int) -> None:
    """Lanes finish their batches in any order: the checkpoint never passes a record not yet done, and
    reaches the last record once all are."""
    rng = random.Random(seed)
    batch = records(rng.randint(1, 40))
    factor = rng.randint(1, 4)
    progress = ShardProgress()
    progress.read(batch)
    lanes: list[list[Record]] = [[r for r in batch if lane_of(r.partition_key, factor) == i] for i in range(factor)]
    # Each lane completes its records in order, in parts; the lanes interleave at random.
    parts = []
    for lane in lanes:
        i = 0
        while i < len(lane):
            n = rng.randint(1, 5)
            parts.append(lane[i : i + n])
            i += n
    order: list[list[Record]] = []
    queues = [[p for p in parts if p and lane_of(p[0].partition_key, factor) == i] for i in range(factor)]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        order.append(q.pop(0))
    done: set[str] = set()
    checkpoint: str | None = None
    for part in order:
        done.update(r.sequence_number for r in part)
        moved = progress.done(part)
        if moved is not None:
            assert checkpoint is None or int(moved) > int(checkpoint)
            checkpoint = moved
        # Every record up to the checkpoint is done, and the next one (if any) is not.
        upto = [
            r.sequence_number for r in batch if checkpoint is not None and int(r.sequence_number) <= int(checkpoint)
        ]
        assert set(upto) <= done
        rest = [r.sequence_number for r in batch if r.sequence_number not in upto]
        assert not rest or rest[0] not in done
    assert checkpoint == batch[-1].sequence_number and len(progress) == 0


def test_progress_is_consistent_when_lanes_mark_records_from_many_threads() -> None:
    batch = records(2_000)
    progress = ShardProgress()
    progress.read(batch)
    factor = 8
    lanes = [[r for r in batch if lane_of(r.partition_key, factor) == i] for i in range(factor)]
    moved: list[str] = []
    lock = threading.Lock()

    def run(lane: list[Record]) -> None:
        for i in range(0, len(lane), 3):
            last = progress.done(lane[i : i + 3])
            if last is not None:
                with lock:
                    moved.append(last)

    threads = [threading.Thread(target=run, args=(lane,)) for lane in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(progress) == 0
    assert max(moved, key=int) == batch[-1].sequence_number
