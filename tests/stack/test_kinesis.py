"""The real-time article's pipeline, locally: its producer ``put_event.py`` (unchanged, pointed at the stack's
Kinesis endpoint by AWS_ENDPOINT_URL_KINESIS) -> moto's Kinesis server -> the event source mapping
(shared/event_source.py) -> the ingestion function through the signed Invoke API -> searchable.

Kinesis records carry no caller identity: what they write is the ``default`` tenant's, so the searches use
its key. The stack's mapping retries a failing batch twice, with short waits, so that a poison record
reaches the on-failure queue quickly, and reads the shard with ParallelizationFactor 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from shared.stack import Stack
from tests.conftest import StackFactory, WsClient, stack_keys
from tests.stack.test_upload import chunk_rows, search
from tests.support.paths import ROOT
from tests.support.timeouts import scaled

PUT_EVENT = ROOT / "tests" / "support" / "seed_code" / "put_event.py"
CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
STACK_ENV = {
    "RAG_MAX_DISTANCE": "0.7",
    "RAG_KINESIS_MAXIMUM_RETRY_ATTEMPTS": "2",
    "RAG_KINESIS_RETRY_BACKOFF_S": "0.05",
    # Two batches of the shard at once (template.yaml's ParallelizationFactor may be up to 10): every test here
    # then also checks that one key's records stay in order across lanes.
    "RAG_KINESIS_PARALLELIZATION_FACTOR": "2",
}


@pytest.fixture(scope="module")
def kstack(start_stack: StackFactory) -> Stack:
    return start_stack("kinesis", **STACK_ENV)


@pytest.fixture
def client(kstack: Stack) -> Iterator[WsClient]:
    c = WsClient(kstack.ws_url, key=stack_keys(kstack).default, timeout=120)
    try:
        yield c
    finally:
        c.close()


def kinesis(stack: Stack) -> Any:
    return boto3.client("kinesis", endpoint_url=stack.kinesis_url, region_name="us-east-1", **_creds())


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


def poller_health(stack: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.by_name['event_source'].url}/health", timeout=scaled(10)) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def eventually(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + scaled(timeout)
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {scaled(timeout):.0f}s (last: {last!r})")


def hit(client: WsClient, query: str, doc_id: str) -> dict[str, Any] | None:
    return next((h for h in search(client, query, top_k=20) if h["doc_id"] == doc_id), None)


def put(stack: Stack, doc_id: str, data: bytes) -> str:
    seq: str = kinesis(stack).put_record(StreamName=stack.stream_name, Data=data, PartitionKey=doc_id)["SequenceNumber"]
    return seq


def doc(doc_id: str, text: str) -> bytes:
    return json.dumps({"doc_id": doc_id, "text": text, "source": "test"}).encode()


def test_the_articles_producer_runs_unchanged_and_its_document_is_searchable(kstack: Stack, client: WsClient) -> None:
    env = {
        **os.environ,
        **CREDS,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_KINESIS": kstack.kinesis_url,
        "STREAM_NAME": kstack.stream_name,
    }
    fact = "Project Nimbus ships its v3 release on 2026-08-14 and drops Python 3.9 support."
    proc = subprocess.run(
        [sys.executable, str(PUT_EVENT), fact, "nimbus-v3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("put nimbus-v3 -> shard shardId-"), proc.stdout
    found = eventually(lambda: hit(client, "When does Project Nimbus ship v3?", "nimbus-v3"), "nimbus-v3 searchable")
    assert "Python 3.9" in found["excerpt"]
    # The article's fields arrive as the document's: source "cli", ts (Unix seconds) as its date.
    rows = chunk_rows(kstack, "nimbus-v3")
    assert [r["source"] for r in rows] == ["cli"]


def test_records_of_one_partition_key_apply_in_order(kstack: Stack, client: WsClient) -> None:
    v1 = "The lighthouse keeper's cat is named Pepper and sleeps on the lamp room stairs."
    v2 = "The lighthouse keeper's cat is named Saffron and sleeps in the boathouse."
    # One call (one batch) and one each after it: every time, the later version wins.
    kinesis(kstack).put_records(
        StreamName=kstack.stream_name,
        Records=[{"Data": doc("cat", v1), "PartitionKey": "cat"}, {"Data": doc("cat", v2), "PartitionKey": "cat"}],
    )
    put(kstack, "cat2", doc("cat2", v1.replace("cat", "dog")))
    last = put(kstack, "cat2", doc("cat2", v2.replace("cat", "dog")))
    eventually(lambda: _done_past(kstack, last), "the poller checkpointed past the last record")
    assert [r["text"] for r in chunk_rows(kstack, "cat")] == [v2]
    assert [r["text"] for r in chunk_rows(kstack, "cat2")] == [v2.replace("cat", "dog")]
    found = hit(client, "What is the lighthouse keeper's cat called?", "cat")
    assert found is not None and "Saffron" in found["excerpt"]


def test_batches_of_one_shard_run_in_parallel_and_each_keys_versions_still_apply_in_order(
    kstack: Stack, client: WsClient
) -> None:
    """ParallelizationFactor 2: the records of one GetRecords go to two lanes by partition key, both invoked at
    once; a key's versions, interleaved with other keys', apply in order."""
    keys = [f"fleet-{i}" for i in range(8)]
    versions = ["moored in the north harbour", "sailing past the breakwater", "anchored off Gull Island"]
    batch = [
        {"Data": doc(k, f"The boat {k} is {v}, version {n}."), "PartitionKey": k}
        for n, v in enumerate(versions)
        for k in keys
    ]
    seqs = kinesis(kstack).put_records(StreamName=kstack.stream_name, Records=batch)["Records"]
    last = max((r["SequenceNumber"] for r in seqs), key=int)
    eventually(lambda: _done_past(kstack, last), "the poller checkpointed past the last record")
    for k in keys:
        assert [r["text"] for r in chunk_rows(kstack, k)] == [f"The boat {k} is {versions[-1]}, version 2."]
    health = poller_health(kstack)
    assert health["in_flight_max"] == 2  # two batches of the one shard were invoked at once, never more


def _done_past(stack: Stack, seq: str) -> bool:
    cfg = stack.config
    assert cfg is not None
    path = cfg.data_dir / "event-source" / f"{stack.stream_name}.json"
    if not path.is_file():
        return False
    shards = json.loads(path.read_text())["shards"]
    return any(int(done) >= int(seq) for done in shards.values())


def test_a_poison_record_goes_to_the_on_failure_queue_and_the_others_are_indexed(
    kstack: Stack, client: WsClient
) -> None:
    resp = kinesis(kstack).put_records(
        StreamName=kstack.stream_name,
        Records=[
            {"Data": doc("volcano", "Stratovolcanoes are built from layers of lava and ash."), "PartitionKey": "p"},
            {"Data": b"{not json", "PartitionKey": "p"},
            {"Data": doc("glacier", "Glaciers carve U-shaped valleys as they flow downhill."), "PartitionKey": "p"},
        ],
    )
    seqs = [r["SequenceNumber"] for r in resp["Records"]]
    sqs = boto3.client("sqs", endpoint_url=kstack.kinesis_url, region_name="us-east-1", **_creds())
    queue = sqs.get_queue_url(QueueName="localrag-documents-failures")["QueueUrl"]

    def failure() -> dict[str, Any] | None:
        msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for m in msgs:
            body: dict[str, Any] = json.loads(m["Body"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            if body["KinesisBatchInfo"]["startSequenceNumber"] == seqs[1]:
                return body
        return None

    record = eventually(failure, "the on-failure record of the poison record")
    info = record["KinesisBatchInfo"]
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["functionArn"].endswith(":function:ingestion")
    # Retried from the failed record on (as Lambda does with ReportBatchItemFailures): the poison record and
    # what followed it in the batch; the stream has them, not the message.
    assert info["shardId"].startswith("shardId-") and info["streamArn"].endswith(f":stream/{kstack.stream_name}")
    assert int(info["endSequenceNumber"]) >= int(seqs[1]) and info["batchSize"] >= 1
    assert set(info) == {
        "shardId",
        "startSequenceNumber",
        "endSequenceNumber",
        "approximateArrivalOfFirstRecord",
        "approximateArrivalOfLastRecord",
        "batchSize",
        "streamArn",
    }
    eventually(lambda: _done_past(kstack, seqs[2]), "the poller moved past the batch")
    assert hit(client, "How is a stratovolcano built?", "volcano") is not None
    assert hit(client, "What shape of valley do glaciers carve?", "glacier") is not None


def test_a_restarted_poller_redelivers_nothing_that_succeeded(kstack: Stack, client: WsClient) -> None:
    last = put(kstack, "before", doc("before", "Honeybees communicate the direction of flowers with a waggle dance."))
    eventually(lambda: _done_past(kstack, last), "the record before the restart is done")
    kstack.kill("event_source")
    kstack.restart("event_source", timeout=scaled(120))
    after = put(kstack, "after", doc("after", "Octopuses have three hearts and blue, copper-based blood."))
    eventually(lambda: hit(client, "How many hearts does an octopus have?", "after"), "the record after the restart")
    eventually(lambda: _done_past(kstack, after), "the restarted poller checkpointed it")
    # Everything before the restart was checkpointed: the restarted poller read after it, so the one record
    # it ever delivered is the new one, in one invocation.
    health = poller_health(kstack)
    assert (health["records_done"], health["invocations"], health["discarded_records"]) == (1, 1, 0), health
    log = kstack.by_name["event_source"].log().split("restarted (restart")[-1]
    assert "reading shardId-" in log and "from after " in log
