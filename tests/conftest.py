"""Shared fixtures: the tiny real GGUF, a moto S3 server, and the whole six-service stack.

Every stack runs with identity on (the authorizer behind ``$connect`` and /v1): its fixture creates API
keys for two tenants (tests/support/auth.py) and :class:`WsClient` authenticates with tenant alpha's
first key unless told otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from websockets.sync.client import ClientConnection, connect

from shared.stack import Stack, StackConfig, plan, wait_for_output, wait_healthy
from tests.support.auth import TenantKeys, default_key, keys_for, remember, setup_stack_keys
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.paths import ARTIFACTS
from tests.support.timeouts import TIMEOUT_FACTOR, scaled

__all__ = ["ARTIFACTS", "DEFAULT", "S3_ENV", "TIMEOUT_FACTOR", "StackFactory", "TenantKeys", "WsClient", "s3_client"]

RUNS_LAST = "runs_last"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{RUNS_LAST}: run after every other test of the session (log checks)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``runs_last`` go to the end, so that they see every log line of the run."""
    items.sort(key=lambda item: item.get_closest_marker(RUNS_LAST) is not None)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1 (compose runs real MinIO instead).

    Started on port 0: the port is the one its startup line reports (``* Running on http://...``)."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        found = wait_for_output(log_path, r"Running on (http://127\.0\.0\.1:\d+)", proc, timeout=scaled(60))
        url = found.group(1)
        wait_healthy(f"{url}/moto-api/", proc, timeout=scaled(60))
        yield url
    finally:
        proc.terminate()
        proc.wait(scaled(10))
        log.close()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}

StackFactory = Callable[..., Stack]


@pytest.fixture(scope="session")
def start_stack(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Start the five services as real processes on ephemeral ports; all are stopped at session end."""
    stacks: dict[str, Stack] = {}

    def start(name: str, *, s3_endpoint: str | None = None, **env: str) -> Stack:
        """Start (or reuse: one per name per session) a stack, and create its tenants' API keys."""
        if name in stacks:
            return stacks[name]
        data = tmp_path_factory.mktemp(f"stack-{name}")
        cfg = StackConfig.any_ports(
            llm_model_path=tiny_gguf,
            data_dir=data,
            s3_endpoint_url=s3_endpoint,
            # Short answers keep the suite fast: the tiny test model never stops on its own.
            extra_env={"RAG_MAX_TOKENS": "64", **(S3_ENV if s3_endpoint else {}), **env},
        )
        if s3_endpoint:
            bucket = f"rag-{name}".lower().replace("_", "-")
            s3_client(s3_endpoint).create_bucket(Bucket=bucket)
            cfg.lancedb_uri = f"s3://{bucket}/lancedb"
            cfg.documents_uri = f"s3://{bucket}/documents"
        stack = Stack(plan(cfg), cfg)
        stack.start(ARTIFACTS / "logs" / name, timeout=scaled(240))
        stacks[name] = stack
        try:
            setup_stack_keys(stack)
        except BaseException:
            stack.stop()
            del stacks[name]
            raise
        return stack

    yield start
    for s in stacks.values():
        s.stop()


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


class WsClient:
    """A test client over a real WebSocket: send requests, collect replies by request id.

    ``key``: the API key sent as ``Authorization: Bearer`` (default: tenant alpha's first key of the stack
    at ``url``; None: no credential). ``headers`` are added to the handshake (e.g. ``Origin``)."""

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        *,
        key: str | None = DEFAULT,
        headers: dict[str, str] | None = None,
        subprotocols: list[str] | None = None,
    ) -> None:
        if key is DEFAULT:
            key = default_key(url)
        extra = dict(headers or {})
        if key is not None:
            remember(key)
            extra["Authorization"] = f"Bearer {key}"
        self._cm = connect(
            url,
            open_timeout=scaled(10),
            max_size=2**22,
            additional_headers=extra or None,
            subprotocols=subprotocols,  # type: ignore[arg-type]
        )
        self.ws: ClientConnection = self._cm.__enter__()
        self.timeout = scaled(timeout)

    def send(self, message: dict[str, Any] | str | bytes) -> None:
        self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    def recv(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ws.recv(timeout=self.timeout))
        return data

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send and return the first reply (for request/response actions)."""
        self.send(message)
        return self.recv()

    def chat(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Send a chat request; return every reply up to stream_end or error."""
        self.send(message)
        replies = []
        while True:
            reply = self.recv()
            replies.append(reply)
            if reply["type"] in ("stream_end", "error"):
                return replies

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stack_keys(stack: Stack) -> TenantKeys:
    """The API keys the fixture created for ``stack``."""
    return keys_for(stack.http_url)
