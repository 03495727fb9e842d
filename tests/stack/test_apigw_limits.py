"""API Gateway's integration timeout with AWS's semantics, against a real slow lambda.

A gateway (``python -m gateway``, integration timeout shortened to half a second) in front of the REQUEST
authorizer and a function run by the real lambda runtime (``tests.support.faulty_handlers.slow_poster``)
that answers after the timeout: it posts through @connections first, then returns a two-way reply. The
client must get API Gateway's ``{"message": "Endpoint request timed out", ...}``, then the function's post
(it ran on), and never its return value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.stack import MANAGEMENT_FD_ENV, Process
from tests.conftest import ARTIFACTS, WsClient
from tests.support import auth
from tests.support.http import request
from tests.support.timeouts import scaled


@pytest.fixture(scope="module")
def slow_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(WebSocket URL, HTTP base URL) of a gateway whose 'chat' function outlives the integration timeout."""
    log_dir = ARTIFACTS / "logs" / "apigw-limits"
    with auth.standalone_authorizer(tmp_path_factory.mktemp("apigw-limits"), log_dir) as authz:
        gateway = Process("gateway", "gateway", authz.env())
        management = gateway.listen(MANAGEMENT_FD_ENV, "127.0.0.1", 0)
        gateway.bind()
        slow = Process(
            "slow_poster",
            "shared.lambda_runtime",
            {
                **authz.env(),
                "RAG_CONNECTIONS_ENDPOINT_URL": f"{management.url}/local",
                "FAULTY_POST_AFTER_S": str(scaled(2.0)),
            },
            args=["tests.support.faulty_handlers.slow_poster", "--timeout", "60"],
        ).bind()
        functions = authz.functions(chat=f"{slow.url}/2015-03-31/functions/slow_poster/invocations", ingestion="x")
        gateway.env.update(
            {
                "GATEWAY_FUNCTIONS": json.dumps(functions),
                "GATEWAY_PORT": str(gateway.port),
                "GATEWAY_MANAGEMENT_HOST": management.host,
                "GATEWAY_MANAGEMENT_PORT": str(management.port),
                "GATEWAY_INTEGRATION_TIMEOUT_S": "0.5",
            }
        )
        authz.register(gateway.url)
        procs = [slow, gateway]
        try:
            for p in procs:
                p.start(log_dir)
            for p in procs:
                p.wait_healthy(scaled(60))
            yield f"ws://127.0.0.1:{gateway.port}/local", gateway.url
        finally:
            for p in reversed(procs):
                p.stop()


def health(base: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(request(base, "GET", "/health").body)
    return data


def test_the_function_runs_on_past_the_integration_timeout(slow_gateway: tuple[str, str]) -> None:
    ws_url, base = slow_gateway
    with WsClient(ws_url, timeout=30) as c:
        c.send({"action": "search", "request_id": "slow", "query": "q"})
        notice = c.recv()
        assert notice["message"] == "Endpoint request timed out", notice
        assert set(notice) == {"message", "connectionId", "requestId"}
        assert c.recv() == {"type": "late_post"}  # the function ran on; its post reached the client
        # Its return value is dropped: once the gateway has seen the invocation end, nothing else came.
        stats = health(base)
        deadline_polls = int(scaled(200))
        while stats["running_on"] and deadline_polls:
            deadline_polls -= 1
            time.sleep(0.05)
            stats = health(base)
        assert stats["timed_out"] == 1 and stats["running_on"] == 0, stats
        with pytest.raises(TimeoutError):
            c.ws.recv(timeout=0.5)
