"""Event-driven ingestion: S3 notifications and Kinesis batches, in AWS's formats (tests/events/), sent
with boto3's ``lambda`` client to the real ingestion runtime; partial batch responses name only the
records that failed, and the good ones are searchable.

These sources carry no caller identity: what they write belongs to the ``default`` tenant, so the
searches here use the default tenant's key."""

from __future__ import annotations

import base64
import copy
import json
import statistics
import time
import uuid
from typing import Any
from urllib.parse import quote

import boto3
import pytest

from shared.stack import Stack
from tests.conftest import ARTIFACTS, StackFactory, WsClient, stack_keys
from tests.stack.test_documents import make_pdf
from tests.stack.test_upload import chunk_rows, local_stack, read_object, s3_stack, search, store_keys, write_object
from tests.support import auth
from tests.support.paths import EVENTS
from tests.support.timeouts import scaled

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}


def event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def invoke(stack: Stack, payload: dict[str, Any]) -> dict[str, Any]:
    client = auth.lambda_client(stack, "ingestion", read_timeout=180)  # the Invoke API wants the internal key
    resp = client.invoke(FunctionName="ingestion", Payload=json.dumps(payload).encode())
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp, resp
    body: dict[str, Any] = json.loads(resp["Payload"].read())
    return body


def failures(body: dict[str, Any]) -> list[str]:
    assert set(body) == {"batchItemFailures"}, body
    return [f["itemIdentifier"] for f in body["batchItemFailures"]]


@pytest.fixture(scope="module")
def s3stack(start_stack: StackFactory, moto_s3: str) -> Stack:
    return s3_stack(start_stack, moto_s3)


@pytest.fixture(scope="module")
def localstack(start_stack: StackFactory) -> Stack:
    return local_stack(start_stack)


def s3_record(template: dict[str, Any], key: str, name: str = "ObjectCreated:Put") -> dict[str, Any]:
    rec = copy.deepcopy(template["Records"][0])
    rec["eventName"] = name
    rec["s3"]["object"]["key"] = key.replace(" ", "+")
    return rec


# ---------------------------------------------------------------------- S3 notifications


def test_s3_object_created_and_removed(s3stack: Stack) -> None:
    created, removed = event("s3_object_created.json"), event("s3_object_removed.json")
    bucket = created["Records"][0]["s3"]["bucket"]["name"]
    cfg = s3stack.config
    assert cfg is not None and cfg.documents_uri == f"s3://{bucket}/documents"
    key = "inbox/field notes/Hot springs & geysers.md"  # the fixture's URL-encoded key, decoded
    doc_id = "field notes:Hot springs & geysers.md"  # shared.doc_ids: the path under inbox/, "/" -> ":"
    text = (
        "# Hot springs\n\nHot springs form where groundwater heated by magma rises to the surface.\n\n"
        "## Geysers\n\nA geyser erupts when water trapped in narrow underground channels boils."
    )
    write_object(s3stack, key, text.encode(), "text/markdown")

    assert failures(invoke(s3stack, created)) == []
    rows = chunk_rows(s3stack, doc_id)
    assert [r["metadata"]["heading"] for r in rows] == ["Hot springs", "Hot springs > Geysers"]
    c = WsClient(s3stack.ws_url, key=stack_keys(s3stack).default)
    try:
        hits = search(c, "why does a geyser erupt from underground channels")
        assert hits and hits[0]["doc_id"] == doc_id
        # The inbox file stays where it is and is the document's original (no copy under originals/).
        raw = json.loads(read_object(s3stack, quote(doc_id, safe="") + ".json"))  # ids are percent-encoded in keys
        assert raw["original"]["key"] == key and raw["source"] == f"s3://{bucket}/documents/{key}"
        assert not any(k.startswith("originals/") and "geysers" in k for k in store_keys(s3stack))
        # Notifications are at-least-once: the same one again just re-indexes.
        assert failures(invoke(s3stack, created)) == []
        assert len(chunk_rows(s3stack, doc_id)) == 2

        # ObjectRemoved: the file was deleted from the bucket -> the document goes.
        s3 = boto3.client("s3", endpoint_url=cfg.s3_endpoint_url, **CREDS)
        s3.delete_object(Bucket=bucket, Key=f"documents/{key}")
        assert failures(invoke(s3stack, removed)) == []
        assert chunk_rows(s3stack, doc_id) == [] and not any("geysers" in k for k in store_keys(s3stack))
        assert all(h["doc_id"] != doc_id for h in search(c, "geyser", max_distance=2.0, top_k=50))
        assert failures(invoke(s3stack, removed)) == []  # again: nothing left to do, not a failure
    finally:
        c.close()


def test_s3_batch_with_bad_records(s3stack: Stack) -> None:
    template = event("s3_object_created.json")
    good_md = "inbox/batch/tides.md"
    good_pdf = "inbox/batch/moon phases.pdf"
    corrupt = "inbox/batch/broken.pdf"
    unsupported = "inbox/batch/slides.pptx"
    missing = "inbox/batch/never-written.md"
    write_object(s3stack, good_md, b"# Tides\n\nThe Moon's gravity pulls the oceans into two tidal bulges.")
    write_object(s3stack, good_pdf, make_pdf(["The Moon shows phases as it orbits: new, crescent, full."]))
    write_object(s3stack, corrupt, b"%PDF-1.4 not really")
    write_object(s3stack, unsupported, b"PK\x03\x04 zip bytes")
    records = [
        s3_record(template, "documents/" + good_md),
        s3_record(template, "documents/" + corrupt),
        s3_record(template, "documents/" + missing),
        s3_record(template, "documents/" + unsupported),
        s3_record(template, "documents/" + good_pdf),
        s3_record(template, "lancedb/chunks.lance/data/0001.lance"),  # our own writes: ignored, not failures
        s3_record(template, "documents/originals/x/y.md"),
        {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"object": {"key": "documents/inbox/z"}}},
    ]
    body = invoke(s3stack, {"Records": records})
    assert sorted(failures(body)) == sorted(["documents/" + k for k in (corrupt, missing, unsupported, "inbox/z")])
    assert len(chunk_rows(s3stack, "batch:tides.md")) == 1
    assert chunk_rows(s3stack, "batch:moon phases.pdf")[0]["metadata"]["page"] == 1
    for bad in ("batch:broken.pdf", "batch:never-written.md", "batch:slides.pptx"):
        assert chunk_rows(s3stack, bad) == [] and quote(bad, safe="") + ".json" not in store_keys(s3stack)
    assert corrupt in store_keys(s3stack)  # a file dropped in the inbox is the user's: kept even if bad
    c = WsClient(s3stack.ws_url, key=stack_keys(s3stack).default)
    try:
        assert search(c, "tidal bulges and the Moon's gravity")[0]["doc_id"] == "batch:tides.md"
        # Deleting the document through the API removes its inbox file too.
        r = c.request({"action": "delete_document", "request_id": "d", "doc_id": "batch:tides.md"})
        assert r["type"] == "document_deleted"
        keys = store_keys(s3stack)
        assert good_md not in keys and quote("batch:tides.md", safe="") + ".json" not in keys
    finally:
        c.close()


def test_s3_test_event_and_wrong_bucket(s3stack: Stack) -> None:
    assert invoke(s3stack, {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "rag-upload-s3"}) == {
        "batchItemFailures": []
    }
    rec = s3_record(event("s3_object_created.json"), "documents/inbox/a.md")
    rec["s3"]["bucket"]["name"] = "someone-elses-bucket"
    assert failures(invoke(s3stack, {"Records": [rec]})) == ["documents/inbox/a.md"]


# ---------------------------------------------------------------------- Kinesis


def kinesis_record(template: dict[str, Any], seq: str, payload: bytes | dict[str, Any]) -> dict[str, Any]:
    rec = copy.deepcopy(template["Records"][0])
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    rec["kinesis"]["data"] = base64.b64encode(data).decode()
    rec["kinesis"]["sequenceNumber"] = seq
    rec["kinesis"]["partitionKey"] = seq[-6:]
    rec["eventID"] = f"shardId-000000000001:{seq}"
    return rec


def test_kinesis_batch_with_one_bad_record(localstack: Stack) -> None:
    batch = event("kinesis_batch.json")
    bad_seq = "49658713298741306419357211580236999999999999999999999999"
    bad = kinesis_record(batch, bad_seq, b"{this is not json")
    batch["Records"].insert(1, bad)
    assert failures(invoke(localstack, batch)) == [bad_seq]
    c = WsClient(localstack.ws_url, key=stack_keys(localstack).default)
    try:
        assert search(c, "why are there two high tides a day")[0]["doc_id"] == "kinesis-tides"
        hits = search(c, "green and red lights in polar skies")
        assert hits[0]["doc_id"] == "kinesis-auroras" and hits[0]["date"] == "2026-01-15T10:21:08+00:00"
        assert hits[0]["source"] == "feed://sky/auroras"
        # A later record deletes one; more bad shapes fail alone.
        template = event("kinesis_batch.json")
        more = {
            "Records": [
                kinesis_record(template, "9001", {"doc_id": "kinesis-auroras", "op": "delete"}),
                kinesis_record(template, "9002", {"doc_id": "has/slash", "text": "x"}),
                kinesis_record(template, "9003", {"doc_id": "blank", "text": "   "}),
                kinesis_record(template, "9004", {"text": "no id"}),
                {"eventSource": "aws:kinesis", "kinesis": {"partitionKey": "p", "sequenceNumber": "9005"}},
                kinesis_record(template, "9006", {"doc_id": "kinesis-tides", "text": "Tides, shorter.", "ts": "x"}),
            ]
        }
        assert failures(invoke(localstack, more)) == ["9005", "9002", "9003", "9004"]  # unparsable ones first
        assert all(h["doc_id"] != "kinesis-auroras" for h in search(c, "auroras polar skies", max_distance=2.0))
        assert [r["text"] for r in chunk_rows(localstack, "kinesis-tides")] == ["Tides, shorter."]
    finally:
        c.close()


def test_kinesis_batch_keeps_record_order_across_deletes_and_repeats(localstack: Stack) -> None:
    """Runs of upserts are ingested together, but a delete or a repeated id still sees the records
    before it, as if they had been applied one by one."""
    t = event("kinesis_batch.json")

    def put(seq: str, doc_id: str, text: str) -> dict[str, Any]:
        return kinesis_record(t, seq, {"doc_id": doc_id, "text": text})

    batch = {
        "Records": [
            put("7001", "order-a", "Version one of a: glaciers carve valleys."),
            put("7002", "order-b", "Version one of b: comets have icy nuclei."),
            kinesis_record(t, "7003", {"doc_id": "order-a", "op": "delete"}),
            put("7004", "order-a", "Version two of a: fjords are drowned glacial valleys."),
            put("7005", "order-b", "Version two of b: a comet's tail points away from the sun."),
            put("7006", "order-c", "   "),  # empty: fails alone, in its place
            put("7007", "order-d", "Only version of d: meteor showers follow comet debris."),
            kinesis_record(t, "7008", {"doc_id": "order-d", "op": "delete"}),
        ]
    }
    assert failures(invoke(localstack, batch)) == ["7006"]
    assert [r["text"] for r in chunk_rows(localstack, "order-a")] == [
        "Version two of a: fjords are drowned glacial valleys."
    ]
    assert [r["text"] for r in chunk_rows(localstack, "order-b")] == [
        "Version two of b: a comet's tail points away from the sun."
    ]
    assert chunk_rows(localstack, "order-c") == [] and chunk_rows(localstack, "order-d") == []


def test_ingest_to_searchable_latency(localstack: Stack) -> None:
    """Kinesis-style record invoked -> a search finds it. Printed and saved, not asserted on time."""
    template = event("kinesis_batch.json")
    c = WsClient(localstack.ws_url, key=stack_keys(localstack).default)
    samples: list[dict[str, float]] = []
    try:
        for i in range(5):
            word = uuid.uuid4().hex[:8]
            doc_id = f"latency-{i}-{word}"
            text = f"Measurement note {word}: the comet {word} passes the inner solar system every {70 + i} years."
            payload = {"doc_id": doc_id, "text": text, "source": "bench", "ts": time.time()}
            t0 = time.perf_counter()
            assert failures(invoke(localstack, {"Records": [kinesis_record(template, str(10_000 + i), payload)]})) == []
            t_invoked = time.perf_counter()
            deadline = t0 + scaled(30)
            while True:
                hits = search(c, f"comet {word} inner solar system", top_k=3)
                if any(h["doc_id"] == doc_id for h in hits):
                    break
                assert time.perf_counter() < deadline, f"not searchable after {scaled(30):g} s"
                time.sleep(0.01)
            t_found = time.perf_counter()
            samples.append({"invoke_ms": (t_invoked - t0) * 1000, "searchable_ms": (t_found - t0) * 1000})
            delete = {"doc_id": doc_id, "op": "delete"}
            invoke(localstack, {"Records": [kinesis_record(template, str(20_000 + i), delete)]})
    finally:
        c.close()
    summary = {
        "samples": len(samples),
        "invoke_ms_median": round(statistics.median(s["invoke_ms"] for s in samples), 1),
        "searchable_ms_median": round(statistics.median(s["searchable_ms"] for s in samples), 1),
        "searchable_ms_max": round(max(s["searchable_ms"] for s in samples), 1),
    }
    print(f"\ningest-to-searchable (local folder, Kinesis-style record -> search hit): {summary}")
    out = ARTIFACTS / "ingest_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "raw": samples}, indent=2))
