"""``make rehearse``: template.yaml deployed into MiniStack, then the end-to-end client against its outputs.

1. MiniStack (CloudFormation + the SAM transform, Lambda, API Gateway v2, S3, Kinesis on one port) and the
   product's Bedrock stand-ins (the embedding and LLM services) start on free loopback ports.
2. The rehearsal template (tests/rehearse/template.py) is generated from template.yaml; the function zips
   are uploaded to an artifacts bucket (what ``sam package`` does), and the stack is created with
   CreateStack and waited for.
3. From the stack's outputs: a connect without a key is refused by the REQUEST authorizer; an API key is
   created in the stack's bucket (as ``localrag keys create`` does); the authenticated client ingests a
   document and asks a question over the WebSocket, and the streamed answer must arrive token by token
   with citations of that document; the LanceDB index must be in MiniStack's S3. Pieces the template has
   (a Kinesis stream and its event source mapping, an HTTP endpoint) are rehearsed too.

Every step is reported as passed, failed or not run (with the reason); nothing is counted as passing that
did not run. Exit status 0 only when no step failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.stack import Process
from tests.rehearse.ministack import MiniStack
from tests.rehearse.template import ROOT, Endpoints, load_template, rehearsal_template

STACK_NAME = "localrag-rehearsal"
ARTIFACTS_BUCKET = "localrag-rehearsal-artifacts"
REGION = "us-east-1"
DOC_ID = "rehearsal-volcanoes"
DOC_TEXT = (
    "Stratovolcanoes are tall, conical volcanoes built up by many layers of hardened lava and volcanic ash. "
    "Mount Fuji in Japan is a well known stratovolcano; its last eruption was in 1707, the Hoei eruption. "
    "Shield volcanoes, like Mauna Loa in Hawaii, are broad and gently sloping because their lava is fluid."
)
QUESTION = "When was the last eruption of Mount Fuji?"


@dataclass
class Step:
    name: str
    status: str = "not run"  # passed | failed | not run
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    unrunnable: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def step(self, name: str) -> Step:
        s = Step(name)
        self.steps.append(s)
        return s

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps) and any(s.status == "passed" for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "steps": [s.__dict__ for s in self.steps],
            "not_runnable_in_ministack": self.unrunnable,
            "left_out_of_the_rehearsal_template": self.left_out,
        }


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": REGION}


def client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, **_creds())


def wait_for(check: Callable[[], Any], what: str, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:g}s (last: {last!r})")


def deploy(cfn: Any, body: str, parameters: dict[str, str], timeout: float) -> dict[str, str]:
    """CreateStack and wait; the outputs, or RuntimeError with the failed resources' reasons."""
    cfn.create_stack(
        StackName=STACK_NAME,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )

    def done() -> dict[str, Any] | None:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        return stack if not stack["StackStatus"].endswith("IN_PROGRESS") else None

    stack = wait_for(done, "stack creation", timeout)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=STACK_NAME)["StackEvents"]
        failed = [
            f"{e['LogicalResourceId']} ({e['ResourceType']}): {e.get('ResourceStatusReason', '')}"
            for e in events
            if e.get("ResourceStatus", "").endswith("FAILED")
        ]
        raise RuntimeError(f"{stack['StackStatus']}: {stack.get('StackStatusReason', '')}; " + "; ".join(failed))
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def local_ws_url(ministack: MiniStack, ws_output: str) -> str:
    """wss://{api}.execute-api.{region}.amazonaws.com/{stage} -> MiniStack's address of that API and stage
    (its path form: the name is not resolvable here, as DNS would make it on AWS)."""
    parts = urlsplit(ws_output)
    api_id = (parts.hostname or "").split(".", 1)[0]
    stage = parts.path.strip("/")
    return f"ws://127.0.0.1:{ministack.port}/_aws/execute-api/{api_id}/{stage}"


def create_api_key(ministack: MiniStack, documents_uri: str) -> str:
    from shared.api_keys import KeyStore
    from shared.identity import DEFAULT_TENANT

    store = KeyStore.open(documents_uri, s3_endpoint_url=ministack.url, region=REGION)
    _record, key = store.create(DEFAULT_TENANT, "rehearsal")
    return key


async def handshake_status(url: str, api_key: str | None) -> int:
    """The HTTP status of a WebSocket handshake (101 when it was accepted)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5)):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


async def ingest_and_ask(url: str, key: str, timeout: float) -> dict[str, Any]:
    from shared.client.ws_client import RagClient
    from shared.protocol import Document, StreamEnd, Token

    async with RagClient(url, api_key=key, timeout=timeout, connect_timeout=60) as rag:
        ingested = await rag.ingest(Document(id=DOC_ID, title="Volcanoes", text=DOC_TEXT))
        tokens = 0
        end: StreamEnd | None = None
        async for event in rag.chat(QUESTION):
            if isinstance(event, Token):
                tokens += 1
            elif isinstance(event, StreamEnd):
                end = event
        assert end is not None
        return {
            "chunks": ingested.chunks,
            "token_messages": tokens,
            "answer": end.answer,
            "sources": [s.doc_id for s in end.sources],
        }


async def search_hits(url: str, key: str, query: str, timeout: float) -> list[str]:
    from shared.client.ws_client import RagClient

    async with RagClient(url, api_key=key, timeout=timeout, connect_timeout=60) as rag:
        result = await rag.search(query, top_k=20)
        return [r.doc_id for r in result.results]


def start_bedrock_stand_ins(log_dir: Path, timeout: float) -> list[Process]:
    embedding = Process("embedding", "embedding")
    llm = Process("llm", "llm")
    for p, prefix in ((embedding, "EMBEDDING"), (llm, "LLM")):
        p.bind()
        p.env = {f"{prefix}_HOST": p.host, f"{prefix}_PORT": str(p.port)}
    for p in (embedding, llm):
        p.start(log_dir)
    for p in (embedding, llm):
        p.wait_healthy(timeout)
    return [embedding, llm]


def rehearse(log_dir: Path, timeout: float = 600.0) -> Report:
    report = Report()
    started = time.monotonic()
    ministack = MiniStack(log_dir / "ministack.log")
    services: list[Process] = []
    try:
        up = report.step("start MiniStack and the Bedrock stand-ins (embedding, LLM)")
        ministack.start(timeout=120)
        services = start_bedrock_stand_ins(log_dir, timeout=300)
        up.status = "passed"
        up.detail = f"MiniStack {ministack.url}, embedding {services[0].url}, llm {services[1].url}"

        dep = report.step("deploy template.yaml (rehearsal variant) with CloudFormation + SAM transform")
        source = load_template(ROOT / "template.yaml")
        reh = rehearsal_template(source, Endpoints(ministack.url, services[0].url, services[1].url), ARTIFACTS_BUCKET)
        report.unrunnable.update(reh.unrunnable)
        report.left_out.update(reh.left_out)
        (log_dir / "rehearsal-template.json").write_text(reh.body(), encoding="utf-8")
        s3 = client("s3", ministack.url)
        s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
        for key, data in reh.zips.items():
            s3.put_object(Bucket=ARTIFACTS_BUCKET, Key=key, Body=data)
        outputs = deploy(client("cloudformation", ministack.url), reh.body(), reh.parameters, timeout=300)
        dep.status = "passed"
        dep.detail = f"outputs: {sorted(outputs)}; functions as zips: {reh.handlers}"

        url = local_ws_url(ministack, outputs["WebSocketUrl"])
        key = create_api_key(ministack, outputs["DocumentsUri"])
        statuses = {
            "none": asyncio.run(handshake_status(url, None)),
            "wrong secret": asyncio.run(handshake_status(url, key[:-4] + ("AAAA" if key[-4:] != "AAAA" else "BBBB"))),
            "valid key": asyncio.run(handshake_status(url, key)),
        }
        ws = report.step("$connect: the REQUEST authorizer refuses no key and a wrong secret, admits a valid one")
        refused = statuses["none"] != 101 and statuses["wrong secret"] != 101
        ws.status = "passed" if refused and statuses["valid key"] == 101 else "failed"
        ws.detail = f"{url}: handshake status per credential {statuses}"
        code = report.step("$connect refusal answered 401 Unauthorized, as API Gateway answers it")
        if statuses["none"] == 401:
            code.status, code.detail = "passed", "401"
        elif statuses["none"] == 500 and ws.status == "passed":
            code.detail = (
                "not rehearsable: MiniStack answers 500. Its WebSocket $connect path treats any authorizer "
                "error as a failure (services/apigateway.py _invoke_request_authorizer_lambda: "
                "'if not result or result.get(\"error\"): return None', then _authorize_ws_connect: "
                "'return (500, \"\"), None'); AWS maps the error message 'Unauthorized' to 401, which "
                "MiniStack does only for REST APIs (services/apigateway_v1.py)"
            )
        else:
            code.status, code.detail = "failed", f"no key: HTTP {statuses['none']}"

        chat = report.step("authenticated client: ingest, then a streamed grounded answer with citations")
        result = asyncio.run(ingest_and_ask(url, key, timeout=timeout))
        problems = []
        if result["chunks"] < 1:
            problems.append("no chunks ingested")
        if result["token_messages"] < 1:
            problems.append("no token message before stream_end (not streamed)")
        if not result["answer"].strip():
            problems.append("empty answer")
        if DOC_ID not in result["sources"]:
            problems.append(f"the document is not cited (sources {result['sources']})")
        chat.status = "failed" if problems else "passed"
        chat.detail = "; ".join(problems) or json.dumps(result)[:600]

        vec = report.step("vectors in MiniStack's S3 (the LanceDB index under the stack's bucket)")
        bucket, _, prefix = outputs["LanceDbUri"].removeprefix("s3://").partition("/")
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("KeyCount", 0)
        vec.status, vec.detail = (
            ("passed", f"{listed} objects under {outputs['LanceDbUri']}")
            if listed
            else (
                "failed",
                f"nothing under {outputs['LanceDbUri']}",
            )
        )

        rehearse_kinesis(report, source, ministack, url, key, timeout)
        rehearse_http(report, source, outputs)
    except Exception as exc:  # the failing step says what and why
        current = next((s for s in reversed(report.steps) if s.status == "not run"), None) or report.step("setup")
        current.status = "failed"
        current.detail = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        print("--- MiniStack log (tail) ---\n" + ministack.log_tail(6000), file=sys.stderr)
    finally:
        ministack.stop()
        for p in services:
            p.stop()
        report.seconds = time.monotonic() - started
    return report


def rehearse_kinesis(report: Report, source: dict[str, Any], ms: MiniStack, url: str, key: str, timeout: float) -> None:
    resources = source.get("Resources", {})
    streams = [k for k, r in resources.items() if r.get("Type") == "AWS::Kinesis::Stream"]
    step = report.step("Kinesis: put_record on the stack's stream -> ingested through the event source mapping")
    if not streams:
        step.detail = "template.yaml has no AWS::Kinesis::Stream yet"
        return
    cfn = client("cloudformation", ms.url)
    physical = cfn.describe_stack_resource(StackName=STACK_NAME, LogicalResourceId=streams[0])
    stream_name = physical["StackResourceDetail"]["PhysicalResourceId"]
    doc_id = "rehearsal-kinesis"
    data = json.dumps({"doc_id": doc_id, "text": "Basalt columns form when thick lava cools and cracks."}).encode()
    client("kinesis", ms.url).put_record(StreamName=stream_name, Data=data, PartitionKey=doc_id)

    def found() -> bool:
        return doc_id in asyncio.run(search_hits(url, key, "basalt columns cooling lava", timeout))

    wait_for(found, "the Kinesis record searchable", 120, every=2)
    step.status, step.detail = "passed", f"stream {stream_name}"


def rehearse_http(report: Report, source: dict[str, Any], outputs: dict[str, str]) -> None:
    step = report.step("HTTP API (/v1) from the stack outputs")
    http_outputs = {k: v for k, v in outputs.items() if k.lower().startswith("http") and v.startswith("http")}
    urls = [k for k, r in source.get("Resources", {}).items() if r.get("Type") in ("AWS::Lambda::Url",)] + [
        k
        for k, r in source.get("Resources", {}).items()
        if r.get("Type") == "AWS::Serverless::Function" and "FunctionUrlConfig" in (r.get("Properties") or {})
    ]
    if not http_outputs and not urls:
        step.detail = "template.yaml has no HTTP endpoint yet"
        return
    unrunnable = {k: v for k, v in report.unrunnable.items()}
    if unrunnable:
        step.detail = "not run: " + "; ".join(f"{k}: {v}" for k, v in unrunnable.items())
        return
    target = next(iter(http_outputs.values()), "")
    try:
        with urllib.request.urlopen(f"{target.rstrip('/')}/health", timeout=30) as resp:
            step.status, step.detail = ("passed" if resp.status == 200 else "failed"), f"{target}: {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        step.status, step.detail = "failed", f"{target}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.rehearse", description=__doc__.split("\n")[0])
    parser.add_argument("--log-dir", type=Path, default=ROOT / "test-artifacts" / "rehearse")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-reply wait of the client (s)")
    args = parser.parse_args(argv)
    report = rehearse(args.log_dir, args.timeout)
    text = json.dumps(report.as_dict(), indent=2)
    (args.log_dir / "report.json").write_text(text, encoding="utf-8")
    print(text)
    return 0 if report.ok else 1
