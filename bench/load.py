"""The stack under load, on real processes, measured in one run: connections held (memory per connection), a
burst of connects while answers generate, many chats at once, ingestion during chats, and what the gateway
adds to a request's latency.

    python -m bench.load             # make bench-load; writes bench/results/load.json (about 10 min)
    python -m bench.load --quick     # small numbers: checks the bench runs end to end (not a measurement)

One stack is started with the launcher ``make up`` uses (shared/stack.py): all six services, identity on, an
API key of tenant ``bench`` made with shared/api_keys.py (sent as ``Authorization: Bearer``: every connection
is authenticated through the authorizer, whose answer the gateway caches). The LLM is what ``make up``
serves when it is on this machine without a download (the embedded model); otherwise the tests' tiny GGUF,
and the output says which. Answers are capped at ``--max-tokens`` (RAG_MAX_TOKENS).

What is measured, in this order:

1. **Latency added by the gateway**: ``list_documents`` sent on a WebSocket and answered on it, against the
   same Invoke made directly to the ingestion runtime (the event the gateway builds, SigV4-signed with the
   stack's internal key as the gateway signs it; its reply goes to the same connection through
   @connections), alternating, on an idle stack. Difference and ratio of p50/p99.
2. **Connections held**: 1,000 then 10,000 authenticated WebSocket connections opened and held at once from
   several client processes (each an asyncio loop; at most ``--handshakes`` handshakes in flight per
   process): time to open them all, failures, the gateway's VmRSS (/proc/PID/status) before and after ->
   memory per connection, the gateway's CPU while they are held idle, and its /health count.
3. **Burst**: 4 chats are started (every slot of the chat function busy), then 500 connects at once:
   opened / refused (an HTTP status) / failed otherwise, connect latency p50/p99, and whether the chats were
   still generating when the burst had opened.
4. **Concurrent chats**: 50 chats sent at once, one per connection: answered, throttled (the typed
   ``throttled`` error), other errors; time to first token p50/p99 of the answered; the gateway's throttled
   invokes (429s from the chat function) and how many of them it retried (``queued``).
5. **Ingestion during chats**: N documents ingested (``ingest_batch``, two clients) alone, chats (two clients,
   back to back) alone, then both at once: documents/s and answers/min, each against its own run alone.

Every figure is one run on this machine; a shared machine makes them noisy (the JSON records the load
average at the start).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from shared.client.frames import text_fragments

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "load.json"
TENANT = "bench"
PHASES = ("latency", "held", "burst", "chats", "ingestion")
BURST_CHATS = 4  # CHAT_MAX_CONCURRENCY's default: every slot of the chat function


@dataclass(frozen=True)
class Sizes:
    latency_pairs: int = 300
    held: tuple[int, ...] = (1_000, 10_000)
    client_processes: int = 4
    burst: int = 500
    chats: int = 50
    documents: int = 100
    batch: int = 10
    throughput_chats: int = 6
    max_tokens: int = 128
    hold_s: float = 10.0


QUICK = Sizes(latency_pairs=20, held=(50, 200), client_processes=2, burst=50, chats=8, documents=20,
              batch=5, throughput_chats=2, max_tokens=16, hold_s=1.0)  # fmt: skip


# ----------------------------------------------------------------------------------------- small helpers


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/mean/max of durations in seconds, in milliseconds."""
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` in kB (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-files soft limit to the hard limit (the stack's processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def failure_kind(exc: BaseException) -> str:
    """``refused NNN`` for a handshake answered with an HTTP status, else the exception's type."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        return f"refused {exc.response.status_code}"
    return type(exc).__name__


def open_ws(url: str, key: str, timeout: float = 60.0) -> Awaitable[Any]:
    from websockets.asyncio.client import connect

    return connect(  # type: ignore[return-value]
        url,
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=timeout,
        close_timeout=5,
        ping_interval=None,  # the gateway pings (heartbeat); the client only answers
        max_size=2**22,
    )


async def open_timed(url: str, key: str, latencies: list[float], failures: dict[str, int]) -> Any:
    """Open one authenticated connection, adding its handshake time to ``latencies`` or its failure's kind
    to ``failures``; the connection, or None."""
    t0 = time.perf_counter()
    try:
        ws = await open_ws(url, key)
    except Exception as exc:
        kind = failure_kind(exc)
        failures[kind] = failures.get(kind, 0) + 1
        return None
    latencies.append(time.perf_counter() - t0)
    return ws


# ----------------------------------------------------------------------------------------- the LLM


def choose_model(tmp: Path) -> tuple[Path, str]:
    """What ``make up`` serves if it is here without a download; else the tests' tiny GGUF."""
    try:
        from llm.model_fetch import ModelFetchError, ensure_model
        from llm.settings import Settings as LlmSettings

        try:
            path = ensure_model(LlmSettings(), allow_download=False)
            return path, f"{path.name} (what make up serves)"
        except ModelFetchError as exc:
            reason = str(exc)
    except ImportError as exc:  # the llm extra is not installed
        reason = str(exc)
    from tests.support.gguf_factory import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp / "tiny-llama.gguf")
    return path, f"the tests' tiny GGUF (make up's model is not on this machine: {reason[:160]})"


# ----------------------------------------------------------------------------------------- held connections


def _hold_worker(url: str, key: str, count: int, handshakes: int, pipe: Pipe) -> None:
    """A client process: open ``count`` connections (``handshakes`` at a time), report, hold them until told
    to close, close them, report."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    asyncio.run(_hold(url, key, count, handshakes, pipe))


async def _hold(url: str, key: str, count: int, handshakes: int, pipe: Pipe) -> None:
    gate = asyncio.Semaphore(handshakes)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    pipe.recv()  # "go": every worker starts at once

    async def one() -> Any:
        async with gate:
            return await open_timed(url, key, latencies, failures)

    t0 = time.perf_counter()
    opened = [ws for ws in await asyncio.gather(*(one() for _ in range(count))) if ws is not None]
    took = time.perf_counter() - t0
    pipe.send({"opened": len(opened), "failures": failures, "latencies": latencies, "took_s": took})
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "close"
    alive = sum(1 for ws in opened if ws.state.name == "OPEN")
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    pipe.send({"alive_at_close": alive})


def held_connections(stack: Any, key: str, n: int, sizes: Sizes, handshakes: int) -> dict[str, Any]:
    gw = stack.by_name["gateway"].proc.pid
    health = f"{stack.http_url}/health"
    before_rss = rss_kb(gw)
    before_count = get_json(health)["connections"]
    procs = min(sizes.client_processes, max(1, n // 50))
    share = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Pipe] = []
    workers = []
    for count in share:
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_hold_worker, args=(stack.ws_url, key, count, handshakes, theirs), daemon=True)
        p.start()
        pipes.append(mine)
        workers.append(p)
    try:
        time.sleep(2.0)  # the workers import websockets
        t0 = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        reports = [pipe.recv() for pipe in pipes]
        took = time.perf_counter() - t0
        time.sleep(1.0)
        held = get_json(health)["connections"] - before_count
        after_rss = rss_kb(gw)
        cpu0, w0 = cpu_s(gw), time.perf_counter()
        time.sleep(sizes.hold_s)
        idle_cpu = (cpu_s(gw) - cpu0) / (time.perf_counter() - w0)
        for pipe in pipes:
            pipe.send("close")
        closes = [pipe.recv() for pipe in pipes]
    finally:
        for p in workers:
            p.join(30)
            if p.is_alive():
                p.kill()
    deadline = time.monotonic() + 60
    while get_json(health)["connections"] > before_count and time.monotonic() < deadline:
        time.sleep(0.5)
    failures: dict[str, int] = {}
    for r in reports:
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
    opened = sum(r["opened"] for r in reports)
    latencies = [x for r in reports for x in r["latencies"]]
    grown = after_rss - before_rss
    return {
        "connections": n,
        "client_processes": procs,
        "handshakes_in_flight_per_process": handshakes,
        "opened": opened,
        "failed": n - opened,
        "failures": failures,
        "open_all_s": round(took, 2),
        "connects_per_s": round(opened / took, 1) if took else None,
        "connect_latency": summary_ms(latencies),
        "held_per_gateway_health": held,
        "alive_when_closed": sum(c["alive_at_close"] for c in closes),
        "gateway_rss_before_mb": round(before_rss / 1024, 1),
        "gateway_rss_after_mb": round(after_rss / 1024, 1),
        "gateway_rss_after_close_mb": round(rss_kb(gw) / 1024, 1),
        "kb_per_connection": round(grown / opened, 1) if opened else None,
        "gateway_cpu_while_idle_held_pct": round(idle_cpu * 100, 1),
    }


# ----------------------------------------------------------------------------------------- chats


@dataclass
class ChatOutcome:
    kind: str  # answered | throttled | error:<code> | failed:<exception>
    ttft_s: float | None = None
    total_s: float = 0.0
    tokens: int = 0


async def chat_on(ws: Any, question: str, request_id: str, started: asyncio.Event | None = None) -> ChatOutcome:
    """Send one chat on ``ws`` and read its replies to the end."""
    t0 = time.perf_counter()
    await ws.send(json.dumps({"action": "chat", "request_id": request_id, "question": question}))
    out = ChatOutcome("failed:no_end")
    try:
        async for frame in ws:
            msg = json.loads(frame)
            kind = msg.get("type")
            if kind == "token":
                if out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - t0
                    if started is not None:
                        started.set()
                out.tokens += 1
            elif kind == "stream_end":
                out.kind = "answered"
                break
            elif kind == "error":
                code = msg.get("code")
                out.kind = "throttled" if code == "throttled" else f"error:{code}"
                break
    except Exception as exc:
        out.kind = f"failed:{type(exc).__name__}"
    out.total_s = time.perf_counter() - t0
    return out


QUESTIONS = [
    "Tell me everything the documents say about glaciers and the rivers they feed, in detail.",
    "Write a long explanation of how the lighthouse keepers in the documents spent their winters.",
    "Describe at length what the documents say about copper mining and its history.",
    "Summarize every document about tide pools, one paragraph each, with all the details.",
]


def concurrent_chats(stack: Any, key: str, n: int) -> dict[str, Any]:
    gw_before = get_json(f"{stack.http_url}/health")
    chat_before = get_json(f"{stack.by_name['chat'].url}/health")

    async def run() -> tuple[list[ChatOutcome], float]:
        sockets = await asyncio.gather(*(open_ws(stack.ws_url, key) for _ in range(n)))
        try:
            t0 = time.perf_counter()
            outcomes = await asyncio.gather(
                *(chat_on(ws, QUESTIONS[i % len(QUESTIONS)], f"c{i}") for i, ws in enumerate(sockets))
            )
            return list(outcomes), time.perf_counter() - t0
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    outcomes, took = asyncio.run(run())
    gw_after = get_json(f"{stack.http_url}/health")
    chat_after = get_json(f"{stack.by_name['chat'].url}/health")
    kinds: dict[str, int] = {}
    for o in outcomes:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    answered = [o for o in outcomes if o.kind == "answered"]
    throttled = kinds.get("throttled", 0)
    refusals = gw_after["throttled"] - gw_before["throttled"]  # 429s the gateway got from the chat function
    return {
        "chats": n,
        "answered": len(answered),
        "throttled": throttled,
        "other": {k: v for k, v in kinds.items() if k not in ("answered", "throttled")},
        # An invoke refused with 429 and not given up on was retried: the chat waited for a slot.
        "queued": max(0, refusals - throttled),
        "gateway_throttled_invokes": refusals,
        "chat_runtime_throttles": chat_after["throttles"] - chat_before["throttles"],
        "time_to_first_token": summary_ms([o.ttft_s for o in answered if o.ttft_s is not None]),
        "answer_time": summary_ms([o.total_s for o in answered]),
        "all_done_s": round(took, 2),
    }


# ----------------------------------------------------------------------------------------- burst


def burst_while_chats(stack: Any, key: str, n: int) -> dict[str, Any]:
    chat_health = f"{stack.by_name['chat'].url}/health"

    async def run() -> dict[str, Any]:
        chats = [await open_ws(stack.ws_url, key) for _ in range(BURST_CHATS)]
        tasks = [asyncio.create_task(chat_on(ws, QUESTIONS[i % len(QUESTIONS)], f"b{i}")) for i, ws in enumerate(chats)]
        deadline = time.monotonic() + 120
        while get_json(chat_health)["busy"] < BURST_CHATS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        busy_at_start = get_json(chat_health)["busy"]
        latencies: list[float] = []
        failures: dict[str, int] = {}

        async def one() -> Any:
            return await open_timed(stack.ws_url, key, latencies, failures)

        t0 = time.perf_counter()
        opened = [ws for ws in await asyncio.gather(*(one() for _ in range(n))) if ws is not None]
        took = time.perf_counter() - t0
        busy_at_end = get_json(chat_health)["busy"]
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        outcomes = await asyncio.gather(*tasks)
        await asyncio.gather(*(ws.close() for ws in chats), return_exceptions=True)
        refused = sum(v for k, v in failures.items() if k.startswith("refused"))
        return {
            "connects": n,
            "chats_generating": BURST_CHATS,
            "chat_slots_busy_at_start": busy_at_start,
            "chat_slots_busy_when_opened": busy_at_end,
            "succeeded": len(opened),
            "refused": refused,
            "failed_otherwise": n - len(opened) - refused,
            "failures": failures,
            "all_opened_in_s": round(took, 3),
            "connect_latency": summary_ms(latencies),
            "chats_answered": sum(1 for o in outcomes if o.kind == "answered"),
        }

    return asyncio.run(run())


# ----------------------------------------------------------------------------------------- ingestion + chats


def documents(n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` distinct small documents (about 1.5 KB each)."""
    topics = ["glaciers", "lighthouses", "copper mines", "tide pools", "orchards", "railways", "bees", "volcanoes"]
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        words = " ".join(f"{topic[:4]}{(i * 7 + j) % 997}" for j in range(60))
        text = (
            f"Document {i} is about {topic}. " * 3
            + f"It records observation number {i} in a long series kept by the survey. {words}. " * 3
        )
        out.append({"id": f"{prefix}-{i:05d}", "title": f"{topic} {i}", "text": text})
    return out


async def ingest_all(url: str, key: str, docs: list[dict[str, Any]], batch: int, clients: int = 2) -> dict[str, Any]:
    """``docs`` in ``ingest_batch`` messages from ``clients`` connections; a throttled batch is sent again after a
    pause, as a client would (counted in ``throttled_retries``). Documents/s counts the ingested ones."""
    batches = [docs[i : i + batch] for i in range(0, len(docs), batch)]
    failed = retried = 0
    errors: dict[str, int] = {}

    def record(msg: dict[str, Any], size: int) -> None:
        nonlocal failed
        if msg.get("type") == "ingest_batch_result":
            failed += int(msg.get("failed", 0))
            for item in msg.get("results", []):
                if item.get("error"):
                    code = str(item["error"].get("code"))
                    errors[code] = errors.get(code, 0) + 1
        else:
            failed += size
            errors[str(msg.get("code"))] = errors.get(str(msg.get("code")), 0) + size

    async def send_batch(ws: Any, j: int, b: list[dict[str, Any]]) -> None:
        nonlocal retried
        for attempt in range(60):
            # In fragments of at most 32 KB (API Gateway's frame quota).
            await ws.send(text_fragments(json.dumps({"action": "ingest_batch", "request_id": f"i{j}", "documents": b})))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "error" and msg.get("code") == "throttled" and attempt < 59:
                    retried += 1
                    await asyncio.sleep(0.5)
                    break
                if msg.get("type") in ("ingest_batch_result", "error"):
                    record(msg, len(b))
                    return

    async def client(mine: list[list[dict[str, Any]]]) -> None:
        async with open_ws(url, key) as ws:  # type: ignore[attr-defined]
            for j, b in enumerate(mine):
                await send_batch(ws, j, b)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(batches[c::clients]) for c in range(clients)))
    took = time.perf_counter() - t0
    return {
        "documents": len(docs),
        "failed": failed,
        "errors": errors,
        "throttled_retries": retried,
        "seconds": round(took, 2),
        "docs_per_s": round((len(docs) - failed) / took, 2),
    }


async def chats_back_to_back(
    url: str, key: str, *, count: int | None = None, until: asyncio.Event | None = None, clients: int = 2
) -> dict[str, Any]:
    """Chats from ``clients`` connections, one after another on each: ``count`` in all, or until ``until``."""
    outcomes: list[ChatOutcome] = []
    issued = 0

    async def client(c: int) -> None:
        nonlocal issued
        async with open_ws(url, key) as ws:  # type: ignore[attr-defined]
            while True:
                if count is not None and issued >= count:
                    return
                if until is not None and until.is_set():
                    return
                issued += 1
                outcome = await chat_on(ws, QUESTIONS[issued % len(QUESTIONS)], f"t{c}-{issued}")
                outcomes.append(outcome)
                if outcome.kind == "throttled":
                    await asyncio.sleep(0.2)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    took = time.perf_counter() - t0
    answered = [o for o in outcomes if o.kind == "answered"]
    return {
        "answered": len(answered),
        "not_answered": len(outcomes) - len(answered),
        "seconds": round(took, 2),
        "answers_per_min": round(len(answered) * 60 / took, 2) if took else None,
        "tokens_per_s": round(sum(o.tokens for o in answered) / took, 2) if took else None,
        "time_to_first_token": summary_ms([o.ttft_s for o in answered if o.ttft_s is not None]),
    }


def ingestion_during_chats(stack: Any, key: str, sizes: Sizes) -> dict[str, Any]:
    url = stack.ws_url

    async def together() -> tuple[dict[str, Any], dict[str, Any]]:
        done = asyncio.Event()

        async def ingest() -> dict[str, Any]:
            try:
                return await ingest_all(url, key, documents(sizes.documents, "during"), sizes.batch)
            finally:
                done.set()

        chats = asyncio.create_task(chats_back_to_back(url, key, until=done))
        ingested = await ingest()
        return ingested, await chats

    ingest_alone = asyncio.run(ingest_all(url, key, documents(sizes.documents, "alone"), sizes.batch))
    chats_alone = asyncio.run(chats_back_to_back(url, key, count=sizes.throughput_chats))
    ingest_both, chats_both = together_result = asyncio.run(together())
    del together_result

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "ingestion_alone": ingest_alone,
        "chats_alone": chats_alone,
        "ingestion_with_chats": ingest_both,
        "chats_with_ingestion": chats_both,
        "ingestion_throughput_ratio": ratio(ingest_both["docs_per_s"], ingest_alone["docs_per_s"]),
        "chat_throughput_ratio": ratio(chats_both["answers_per_min"], chats_alone["answers_per_min"]),
    }


# ----------------------------------------------------------------------------------------- gateway latency


_CONNECTED = re.compile(r"connected (\S+) from ")


def gateway_latency(stack: Any, key: str, record: Any, pairs: int) -> dict[str, Any]:
    """``list_documents`` through the WebSocket vs the same signed Invoke straight to the ingestion runtime."""
    import aiohttp

    from shared.events import build_event
    from shared.sigv4 import sign

    cfg = stack.config
    gateway = stack.by_name["gateway"]
    invoke_url = f"{stack.by_name['ingestion'].url}/2015-03-31/functions/ingestion/invocations"
    body = json.dumps({"action": "list_documents", "request_id": "lat", "limit": 10})
    principal = record.principal()
    authorizer = {"principalId": principal.principal, **principal.context()}

    async def run() -> tuple[list[float], list[float], bool]:
        known = set(_CONNECTED.findall(gateway.log()))
        async with open_ws(stack.ws_url, key) as ws, aiohttp.ClientSession() as http:  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)  # the gateway's "connected" log line
            new = [c for c in _CONNECTED.findall(gateway.log()) if c not in known]
            connection_id = new[-1] if new else "bench-no-such-connection"
            connected_at = int(time.time() * 1000)

            async def through_gateway() -> float:
                t0 = time.perf_counter()
                await ws.send(body)
                msg = json.loads(await ws.recv())
                assert msg.get("type") == "document_list", msg
                return time.perf_counter() - t0

            async def recv_at() -> tuple[str, float]:
                frame = await ws.recv()
                return str(frame), time.perf_counter()

            async def direct() -> float:
                """Until the reply frame is here (as through the gateway), or the Invoke returned when
                there is no real connection to reply to."""
                t0 = time.perf_counter()
                event = build_event(
                    route_key="list_documents",
                    event_type="MESSAGE",
                    connection_id=connection_id,
                    connected_at=connected_at,
                    domain_name=f"{gateway.host}:{gateway.port}",
                    stage="local",
                    body=body,
                    authorizer=authorizer,
                ).to_aws()
                raw = json.dumps(event).encode()
                headers = sign(
                    "POST",
                    invoke_url,
                    {"Content-Type": "application/json"},
                    raw,
                    key=cfg.internal_key,
                    service="lambda",
                    region="us-east-1",
                )
                reply = asyncio.create_task(recv_at()) if new else None
                async with http.post(invoke_url, data=raw, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                if reply is None:
                    return time.perf_counter() - t0
                frame, arrived = await reply
                assert json.loads(frame).get("type") == "document_list", frame[:300]
                return arrived - t0

            for _ in range(10):  # warm-up: pooled connections, caches
                await through_gateway()
                await direct()
            via: list[float] = []
            straight: list[float] = []
            for i in range(pairs):
                if i % 2:
                    via.append(await through_gateway())
                    straight.append(await direct())
                else:
                    straight.append(await direct())
                    via.append(await through_gateway())
            return via, straight, bool(new)

    via, straight, real_connection = asyncio.run(run())
    v, d = summary_ms(via), summary_ms(straight)
    return {
        "action": "list_documents (limit 10)",
        "pairs": pairs,
        "through_gateway": v,
        "direct_invoke": d,
        "direct_replies_to_a_real_connection": real_connection,
        "added_p50_ms": round(float(v["p50_ms"]) - float(d["p50_ms"]), 2),
        "added_p99_ms": round(float(v["p99_ms"]) - float(d["p99_ms"]), 2),
        "ratio_p50": round(float(v["p50_ms"]) / float(d["p50_ms"]), 2),
        "ratio_p99": round(float(v["p99_ms"]) / float(d["p99_ms"]), 2),
    }


# ----------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    sizes: Sizes
    model: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def start_stack(root: Path, model: Path, max_tokens: int) -> Any:
    from shared.stack import Stack, StackConfig, plan

    cfg = StackConfig.any_ports(
        llm_model_path=model,
        data_dir=root / "data",
        # API Gateway's 500 new connections/s (GATEWAY_CONNECT_RATE_LIMIT) would cap the connection steps,
        # which measure what the gateway itself can hold and accept.
        extra_env={"RAG_MAX_TOKENS": str(max_tokens), "GATEWAY_CONNECT_RATE_LIMIT": "1000000"},
    )
    stack = Stack(plan(cfg), cfg)
    stack.start(root / "logs", timeout=300)
    return stack


def step(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    print(f"-- {name} ...", flush=True)
    t0 = time.perf_counter()
    results[name] = fn()
    print(f"   done in {time.perf_counter() - t0:.0f}s: {json.dumps(results[name])[:600]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers: checks that the bench runs end to end")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT}; --quick: none)")
    parser.add_argument("--handshakes", type=int, default=64, help="handshakes in flight per client process")
    parser.add_argument("--max-tokens", type=int, default=None, help="RAG_MAX_TOKENS of the chats")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)} (default all; --out then gets only those)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    max_tokens = args.max_tokens or sizes.max_tokens
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    given = argv if argv is not None else sys.argv[1:]
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases <= set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(phases - set(PHASES)))}")
    nofile = raise_nofile()
    if max(sizes.held) * 1.2 + 200 > nofile[0]:
        print(f"warning: RLIMIT_NOFILE is {nofile[0]}: too low for {max(sizes.held)} connections", file=sys.stderr)
    load_avg = os.getloadavg()
    results: dict[str, Any] = {}
    from shared.stack import key_store

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        model, model_note = choose_model(root)
        print(f"LLM: {model_note}\nstarting the stack ...", flush=True)
        stack = start_stack(root, model, max_tokens)
        try:
            record, key = key_store(stack.config).create(TENANT, "bench: load")
            seed = asyncio.run(ingest_all(stack.ws_url, key, documents(40, "seed"), 10))
            print(f"seeded {seed['documents']} documents ({seed['failed']} failed {seed['errors']})", flush=True)
            if "latency" in phases:
                step("gateway_latency", lambda: gateway_latency(stack, key, record, sizes.latency_pairs), results)
            for n in sizes.held if "held" in phases else ():
                step(f"held_{n}", functools.partial(held_connections, stack, key, n, sizes, args.handshakes), results)
            if "burst" in phases:
                step("burst", lambda: burst_while_chats(stack, key, sizes.burst), results)
            if "chats" in phases:
                step("concurrent_chats", lambda: concurrent_chats(stack, key, sizes.chats), results)
            if "ingestion" in phases:
                step("ingestion_during_chats", lambda: ingestion_during_chats(stack, key, sizes), results)
            dead = stack.poll()
            if dead is not None:
                raise RuntimeError(f"{dead.name} exited during the bench:\n{dead.log_tail()}")
        finally:
            stack.stop()

    report: dict[str, Any] = {
        "benchmark": "load: connections held, connect burst, concurrent chats, ingestion during chats, "
        "gateway-added latency (one stack, identity on)",
        "command": f"make bench-load  ({' '.join(['python -m bench.load', *given])})",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load_avg],
            "rlimit_nofile": nofile[0],
        },
        "llm": model_note,
        "rag_max_tokens": max_tokens,
        "quick": args.quick,
        **results,
    }
    print(table(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"-> {out}")
    return 0


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    lat = r.get("gateway_latency")
    if lat:
        rows.append(
            (
                "gateway-added latency (list_documents)",
                f"p50 {lat['through_gateway']['p50_ms']} vs {lat['direct_invoke']['p50_ms']} ms direct "
                f"({lat['added_p50_ms']:+} ms, x{lat['ratio_p50']}); p99 {lat['through_gateway']['p99_ms']} vs "
                f"{lat['direct_invoke']['p99_ms']} ms ({lat['added_p99_ms']:+} ms, x{lat['ratio_p99']})",
            )
        )
    for key, h in r.items():
        if key.startswith("held_"):
            rows.append(
                (
                    f"{h['connections']:,} connections held",
                    f"opened {h['opened']:,} in {h['open_all_s']} s ({h['failed']} failed); connect p50/p99 "
                    f"{h['connect_latency'].get('p50_ms')}/{h['connect_latency'].get('p99_ms')} ms; gateway RSS "
                    f"{h['gateway_rss_before_mb']} -> {h['gateway_rss_after_mb']} MB = {h['kb_per_connection']} "
                    f"KB/connection; idle CPU {h['gateway_cpu_while_idle_held_pct']}%",
                )
            )
    b = r.get("burst")
    if b:
        rows.append(
            (
                f"burst of {b['connects']} connects, {b['chats_generating']} chats generating",
                f"{b['succeeded']} opened, {b['refused']} refused, {b['failed_otherwise']} failed, all in "
                f"{b['all_opened_in_s']} s; p50/p99 {b['connect_latency'].get('p50_ms')}/"
                f"{b['connect_latency'].get('p99_ms')} ms; chat slots busy at the end: "
                f"{b['chat_slots_busy_when_opened']}/{b['chats_generating']}",
            )
        )
    c = r.get("concurrent_chats")
    if c:
        rows.append(
            (
                f"{c['chats']} chats at once",
                f"{c['answered']} answered, {c['queued']} queued, {c['throttled']} throttled, other {c['other'] or 0}; "
                f"first token p50/p99 {c['time_to_first_token'].get('p50_ms')}/"
                f"{c['time_to_first_token'].get('p99_ms')} ms",
            )
        )
    i = r.get("ingestion_during_chats")
    if i:
        rows.append(
            (
                "ingestion during chats",
                f"{i['ingestion_with_chats']['docs_per_s']} docs/s vs {i['ingestion_alone']['docs_per_s']} alone "
                f"(x{i['ingestion_throughput_ratio']}); {i['chats_with_ingestion']['answers_per_min']} answers/min vs "
                f"{i['chats_alone']['answers_per_min']} alone (x{i['chat_throughput_ratio']})",
            )
        )
    width = max([len(a) for a, _ in rows] + [7])
    lines = [f"\nLLM: {r['llm']}; answers capped at {r['rag_max_tokens']} tokens", ""]
    lines += [f"| {'measure'.ljust(width)} | figures |", f"|{'-' * (width + 2)}|---------|"]
    lines += [f"| {a.ljust(width)} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
