"""Run the five services as local processes (``make up``), or on ephemeral ports for the tests.

    python -m shared.stack            # default ports, data in ./data, LLM model fetched if needed

Starts everything at once, waits for every health check, prints the WebSocket URL, and stops all
of them (SIGTERM, then SIGKILL) on Ctrl-C or when any one exits.

This is the one process harness: the tests start services through :class:`Process` too. The harness
binds each service's listening socket itself (port 0: any free port) and hands it to the child
(``pass_fds`` + ``LOCALRAG_LISTEN_FD``, see shared/serving.py), so every port is known before any
process starts -- the gateway needs the lambdas' URLs and the lambdas need the gateway's -- and no
other process can take a port between "found free" and "bound". It imports no service package:
the LLM model is fetched by running ``python -m llm.model_fetch``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared.serving import LISTEN_FD_ENV, listening_socket

ROOT = Path(__file__).resolve().parent.parent


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s ({last})")


def wait_for_output(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> re.Match[str]:
    """Wait until the log file ``path`` of ``proc`` has a line matching ``pattern`` (e.g. the address a
    server bound to port 0 reports); fail at once if ``proc`` exits first."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = regex.search(text)
        if match is not None:
            return match
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} before printing {pattern!r}:\n{text[-4000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no line matching {pattern!r} after {timeout:.0f}s")


@dataclass
class Process:
    """``python -m module *args`` serving on a socket this harness binds (port 0: any free port).

    :meth:`bind` (called by :meth:`start` if not done before) fixes :attr:`port`, so URLs can be handed
    to other processes before any of them starts. The child inherits the socket; the harness then closes
    its own copy, so once the child is gone nothing listens and connections are refused, not queued.
    """

    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)
    args: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 0
    health_path: str = "/health"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _sock: socket.socket | None = field(default=None, repr=False)

    def bind(self) -> Process:
        """Bind the listening socket now (once); afterwards :attr:`port` is the port served."""
        if self._sock is None:
            try:
                self._sock = listening_socket(self.host, self.port)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"{self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror}"
                ) from exc
            self.port = int(self._sock.getsockname()[1])
        return self

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name}: no port yet (bind() first)")
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def start(self, log_dir: Path | None) -> Process:
        sock = self.bind()._sock
        assert sock is not None
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", LISTEN_FD_ENV: str(sock.fileno())}
        log: IO[bytes] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"{self.name}.log"
            log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                pass_fds=(sock.fileno(),),
            )
        finally:
            # The child has its own copies of both.
            if log is not None:
                log.close()
            self._close_socket()
        return self

    def wait_healthy(self, timeout: float) -> None:
        wait_healthy(f"{self.url}{self.health_path}", self.proc, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 4000) -> str:
        return self.log()[-n:]


@dataclass
class StackConfig:
    """Where the five services listen and keep data. A port of 0 means any free port (the tests)."""

    llm_model_path: Path | None = None  # None: the llm service's own LLM_* settings decide
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    embedding_port: int = 8001
    llm_port: int = 8002
    ingestion_port: int = 9001
    chat_port: int = 9002
    lancedb_uri: str | None = None  # default: {data_dir}/lancedb
    documents_uri: str | None = None  # default: {data_dir}/documents
    s3_endpoint_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Signs the gateway's stand-in for presigned S3 PUTs (local documents folder); random per run.
    upload_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    def __post_init__(self) -> None:
        self.lancedb_uri = self.lancedb_uri or str(self.data_dir / "lancedb")
        self.documents_uri = self.documents_uri or str(self.data_dir / "documents")


def plan(cfg: StackConfig) -> list[Process]:
    """The five processes and the environment that wires them together.

    Binds the five listening sockets first (so ports of 0 become real ones), then writes each
    process's environment with the others' addresses."""
    h = cfg.host
    stage = "local"
    embedding = Process("embedding", "embedding", host=h, port=cfg.embedding_port)
    llm = Process("llm", "llm", host=h, port=cfg.llm_port)
    ingestion = Process("ingestion", "ingestion", host=h, port=cfg.ingestion_port)
    chat = Process("chat", "chat", host=h, port=cfg.chat_port)
    gateway = Process("gateway", "gateway", host=h, port=cfg.gateway_port)
    processes = [embedding, llm, ingestion, chat, gateway]
    try:
        for p in processes:
            p.bind()
    except OSError:
        for p in processes:
            p.stop()
        raise

    shared_env = {
        "RAG_LANCEDB_URI": str(cfg.lancedb_uri),
        "RAG_DOCUMENTS_URI": str(cfg.documents_uri),
        "RAG_EMBEDDING_ENDPOINT_URL": embedding.url,
        "RAG_LLM_ENDPOINT_URL": llm.url,
        "RAG_CONNECTIONS_ENDPOINT_URL": f"{gateway.url}/{stage}",
    }
    if cfg.s3_endpoint_url:
        shared_env["RAG_S3_ENDPOINT_URL"] = cfg.s3_endpoint_url
    extra = dict(cfg.extra_env)
    # Uploads: with a local documents folder the gateway serves the presigned PUTs the ingestion lambda
    # signs, so both get the secret; the gateway writes into the same folder, with the same size limit.
    # (the upload URL's address is the gateway's, taken from each event's domainName and stage). The
    # RAG_* names are the documents settings the gateway shares with the ingestion lambda.
    upload_env = {"RAG_UPLOAD_SECRET": cfg.upload_secret}
    gateway_upload_env = {"RAG_DOCUMENTS_URI": str(cfg.documents_uri), **upload_env}
    functions = (
        f'{{"ingestion": "{ingestion.url}/2015-03-31/functions/ingestion/invocations", '
        f'"chat": "{chat.url}/2015-03-31/functions/chat/invocations"}}'
    )
    # {PREFIX}_HOST/_PORT: the services serve on the inherited socket, but keep their settings true
    # (the gateway, for one, puts host:port into each event's requestContext.domainName).
    embedding.env = {"EMBEDDING_HOST": h, "EMBEDDING_PORT": str(embedding.port), **extra}
    llm.env = {"LLM_HOST": h, "LLM_PORT": str(llm.port), **extra}
    if cfg.llm_model_path is not None:
        llm.env["LLM_MODEL_PATH"] = str(cfg.llm_model_path)
    ingestion.env = {
        **shared_env,
        **upload_env,
        "INGESTION_HOST": h,
        "INGESTION_PORT": str(ingestion.port),
        **extra,
    }
    chat.env = {**shared_env, "CHAT_HOST": h, "CHAT_PORT": str(chat.port), **extra}
    gateway.env = {
        "GATEWAY_HOST": h,
        "GATEWAY_PORT": str(gateway.port),
        "GATEWAY_STAGE": stage,
        "GATEWAY_FUNCTIONS": functions,
        **gateway_upload_env,
        **extra,
    }
    # Start order: the gateway last (it is the one clients reach); all of them start at once anyway.
    return [embedding, llm, ingestion, chat, gateway]


class Stack:
    def __init__(self, processes: list[Process], config: StackConfig | None = None) -> None:
        self.processes = processes
        self.config = config
        self.by_name = {p.name: p for p in processes}

    @property
    def ws_url(self) -> str:
        gw = self.by_name["gateway"]
        return f"{gw.url.replace('http://', 'ws://', 1)}/local"

    def start(self, log_dir: Path | None, timeout: float = 300.0) -> None:
        try:
            for p in self.processes:
                p.start(log_dir)
            for p in self.processes:
                try:
                    p.wait_healthy(timeout)
                except Exception as exc:
                    raise RuntimeError(f"{p.name} did not start: {exc}\n{p.log_tail()}") from exc
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def poll(self) -> Process | None:
        """The first process that has exited, if any."""
        for p in self.processes:
            if p.proc is not None and p.proc.poll() is not None:
                return p
        return None


def fetch_model() -> Path:
    """``python -m llm.model_fetch`` (the LLM_* settings of this environment): the GGUF file's path.

    A subprocess, so that this launcher imports no service; its progress and errors go to the terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "llm.model_fetch"], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"no LLM model: python -m llm.model_fetch exited with code {result.returncode}")
    return Path(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.stack", description="Run the five services locally.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RAG_DATA_DIR", "data")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument("--log-dir", type=Path, default=None, help="write each service's log here (default: terminal)")
    args = parser.parse_args(argv)

    try:
        model_path = fetch_model()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = StackConfig(llm_model_path=model_path, data_dir=args.data_dir, host=args.host, gateway_port=args.gateway_port)
    try:
        stack = Stack(plan(cfg), cfg)
    except OSError as exc:
        print(f"error: {exc.strerror} (is the stack already running?)", file=sys.stderr)
        return 1
    print("starting gateway, ingestion, chat, embedding and llm ...", flush=True)
    try:
        stack.start(args.log_dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nready: {stack.ws_url}\n  try: localrag ask 'What is in my documents?' --url {stack.ws_url}\n", flush=True)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            dead = stack.poll()
            if dead is not None:
                print(
                    f"error: {dead.name} exited with code {dead.proc.returncode if dead.proc else '?'}", file=sys.stderr
                )
                return 1
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
