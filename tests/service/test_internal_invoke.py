"""The lambdas' Invoke API takes only SigV4-signed requests from the stack's internal key, and the functions
refuse events without the authorizer's identity -- on a real ingestion runtime process.

The issue's reproduction: a forged Kinesis record POSTed to the Invoke API deleted a document. Now an
unsigned, unknown-key or badly signed request answers 403 with AWS's error and the document stays; the
same record signed with the internal key (boto3's lambda client) is served (so the test can fail).
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.identity import DEFAULT_TENANT
from tests.support.embedder import InProcessEmbedder
from tests.support.paths import EVENTS
from tests.support.procs import Service, start_service, stop_service
from tests.support.timeouts import scaled

KEY_ID = "LRINTTEST" + secrets.token_hex(6).upper()
SECRET = secrets.token_urlsafe(30)
INTERNAL = {"LOCALRAG_INTERNAL_ACCESS_KEY_ID": KEY_ID, "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY": SECRET}
TEXT = "Basalt lava from the Kilauea caldera cooled into pahoehoe ropes."


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    """A real ``python -m ingestion`` runtime over an index holding a document of the default tenant and
    one of tenant acme."""
    from ingestion.handler import build_service
    from ingestion.settings import Settings
    from shared.protocol import Document

    root = tmp_path_factory.mktemp("invoke")
    env = {
        "RAG_LANCEDB_URI": str(root / "lancedb"),
        "RAG_DOCUMENTS_URI": str(root / "documents"),
        "RAG_CONNECTIONS_ENDPOINT_URL": "http://127.0.0.1:9/local",  # never reached by these tests
        **INTERNAL,
    }
    with pytest.MonkeyPatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        service = build_service(Settings(), embedder=InProcessEmbedder())
        for tenant in (DEFAULT_TENANT, "acme"):
            service.ingest(Document(id="victim", text=TEXT), tenant=tenant)
    svc = start_service("ingestion", "ingestion", env, root)
    try:
        yield svc, env
    finally:
        stop_service(svc)


def chunks(env: dict[str, str], tenant: str) -> int:
    from shared.vector_store import VectorStore

    store = VectorStore(env["RAG_LANCEDB_URI"], dimension=384, model_id="sentence-transformers/all-MiniLM-L6-v2")
    return store.count_chunks("victim", tenant=tenant)


def kinesis_delete(tenant: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"doc_id": "victim", "op": "delete"}
    if tenant is not None:
        data["tenant"] = tenant
    return {
        "Records": [
            {
                "eventSource": "aws:kinesis",
                "kinesis": {
                    "partitionKey": "p",
                    "sequenceNumber": str(uuid.uuid4().int),
                    "data": base64.b64encode(json.dumps(data).encode()).decode(),
                },
            }
        ]
    }


def lambda_client(url: str, key_id: str = KEY_ID, secret: str = SECRET) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=scaled(60)),
    )


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    request = urllib.request.Request(
        f"{url}/2015-03-31/functions/ingestion/invocations", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=scaled(30)) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), resp.headers.get("x-amzn-ErrorType", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers.get("x-amzn-ErrorType", "")


def test_a_forged_kinesis_record_cannot_reach_the_function(runtime: tuple[Service, dict[str, str]]) -> None:
    from shared.sigv4 import SigningKey, sign

    svc, env = runtime
    body = json.dumps(kinesis_delete()).encode()
    # Unsigned (the reproduction).
    status, answer, error_type = raw_post(svc.url, body, {"Content-Type": "application/json"})
    assert (status, answer["__type"]) == (403, "MissingAuthenticationToken") and error_type.startswith(
        "MissingAuthenticationToken"
    )
    # Signed, but by a key the runtime does not know; by the right key id with a wrong secret; and a valid
    # signature over another body (the payload is signed).
    url = f"{svc.url}/2015-03-31/functions/ingestion/invocations"
    for key, payload, code in (
        (SigningKey("AKIAFORGED0000000000", SECRET), body, "UnrecognizedClientException"),
        (SigningKey(KEY_ID, "not-the-secret-" + "x" * 20), body, "InvalidSignatureException"),
        (SigningKey(KEY_ID, SECRET), json.dumps(kinesis_delete("acme")).encode(), "InvalidSignatureException"),
    ):
        headers = sign(
            "POST", url, {"Content-Type": "application/json"}, payload, key=key, service="lambda", region="us-east-1"
        )
        status, answer, _ = raw_post(svc.url, body, headers)
        assert (status, answer["__type"]) == (403, code), answer
        assert SECRET not in json.dumps(answer)
    # boto3 with a wrong secret: the same refusal, as botocore sees it.
    with pytest.raises(ClientError) as caught:
        lambda_client(svc.url, secret="wrong-secret-" + "y" * 20).invoke(FunctionName="ingestion", Payload=body)
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert chunks(env, DEFAULT_TENANT) == 1 and chunks(env, "acme") == 1  # nothing was deleted

    # Signed with the internal key: served. The record names tenant acme: acme's document only.
    resp = lambda_client(svc.url).invoke(FunctionName="ingestion", Payload=json.dumps(kinesis_delete("acme")))
    assert resp["StatusCode"] == 200 and "FunctionError" not in resp
    assert json.loads(resp["Payload"].read()) == {"batchItemFailures": []}
    assert chunks(env, "acme") == 0 and chunks(env, DEFAULT_TENANT) == 1
    log = svc.log()
    assert SECRET not in log


def test_an_event_without_the_authorizers_identity_is_refused(runtime: tuple[Service, dict[str, str]]) -> None:
    svc, env = runtime
    client = lambda_client(svc.url)
    connect = json.loads((EVENTS / "websocket_connect.json").read_text())
    assert json.loads(client.invoke(FunctionName="ingestion", Payload=json.dumps(connect))["Payload"].read()) == {
        "statusCode": 200
    }
    for bad in (None, {}, {"principalId": "x"}, {"tenant": "../etc", "principal": "p", "auth": "api_key"}):
        event = json.loads(json.dumps(connect))
        if bad is None:
            del event["requestContext"]["authorizer"]
        else:
            event["requestContext"]["authorizer"] = bad
        answer = json.loads(client.invoke(FunctionName="ingestion", Payload=json.dumps(event))["Payload"].read())
        assert answer == {"statusCode": 403}, (bad, answer)
    # A message without it: refused, nothing done (the error goes to @connections: see tests/unit).
    message = json.loads((EVENTS / "websocket_message_ingest.json").read_text())
    del message["requestContext"]["authorizer"]
    message["body"] = json.dumps({"action": "delete_document", "request_id": "d", "doc_id": "victim"})
    answer = json.loads(client.invoke(FunctionName="ingestion", Payload=json.dumps(message))["Payload"].read())
    assert answer == {"statusCode": 403}
    assert chunks(env, DEFAULT_TENANT) == 1
