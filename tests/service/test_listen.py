"""Every server can be given port 0 and says which port it got; or it serves a socket its parent bound.

Port 0 is for running a service by hand next to others; the harness (shared/stack.py, used by ``make up``
and the tests) binds every socket itself and passes it down (LOCALRAG_LISTEN_FD), so it knows each port
before any process starts and nothing can take a port in between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.serving import LISTEN_FD_ENV
from shared.stack import Process, wait_for_output
from tests.support.gguf_factory import write_tiny_llama_gguf
from tests.support.paths import ROOT
from tests.support.timeouts import scaled

LISTENING = r"{name}: listening on (http://127\.0\.0\.1:(\d+))\n"
FUNCTIONS = json.dumps({"chat": "http://127.0.0.1:1/x", "ingestion": "http://127.0.0.1:1/x"})

# start(name, argv, env) -> (url, port, log path), once the server said where it listens
Start = Callable[[str, list[str], dict[str, str]], tuple[str, int, Path]]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Start]:
    """Start ``python -m ...`` by hand (no harness, no inherited socket); stopped at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], env: dict[str, str]) -> tuple[str, int, Path]:
        log = tmp_path / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if k != LISTEN_FD_ENV}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=ROOT,
                env={**clean, **env, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        found = wait_for_output(log, LISTENING.format(name=name), proc, timeout=scaled(120))
        return found.group(1), int(found.group(2)), log

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(scaled(10))


def healthy(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/health", timeout=scaled(10)) as resp:
        assert resp.status == 200
        body: dict[str, object] = json.loads(resp.read())
        return body


def test_gateway_on_port_0_reports_its_port(run: Start) -> None:
    url, port, _ = run("gateway", ["gateway"], {"GATEWAY_PORT": "0", "GATEWAY_FUNCTIONS": FUNCTIONS})
    assert port > 0
    healthy(url)


def test_lambda_runtime_on_port_0_reports_its_port(run: Start) -> None:
    argv = ["shared.lambda_runtime", "tests.support.faulty_handlers.crash", "--port", "0"]
    url, _, _ = run("crash", argv, {})
    assert healthy(url)["function"] == "crash"


def test_llm_on_port_0_reports_its_port(run: Start, tmp_path: Path) -> None:
    model = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    url, _, _ = run("llm", ["llm"], {"LLM_PORT": "0", "LLM_MODEL_PATH": str(model)})
    healthy(url)


def test_harness_binds_before_start_and_the_child_serves_that_socket(tmp_path: Path) -> None:
    gateway = Process("gateway", "gateway", env={"GATEWAY_FUNCTIONS": FUNCTIONS}).bind()
    port = gateway.port
    assert port > 0  # known before the process exists
    # The child is told to use another port: it must serve the inherited socket regardless.
    gateway.env["GATEWAY_PORT"] = "1"
    gateway.start(tmp_path)
    try:
        assert gateway.proc is not None
        found = wait_for_output(tmp_path / "gateway.log", LISTENING.format(name="gateway"), gateway.proc, scaled(60))
        assert int(found.group(2)) == port
        healthy(gateway.url)
    finally:
        gateway.stop()
    # The harness kept no copy of the socket: with the child gone, nothing listens there.
    with pytest.raises(OSError):
        healthy(gateway.url)
