"""Run the five services as local processes (``make up``), or on ephemeral ports for the tests.

    python -m shared.stack            # default ports, data in ./data, LLM model fetched if needed

Starts everything at once, waits for every health check, prints the WebSocket URL, and stops all
of them (SIGTERM, then SIGKILL) on Ctrl-C or when any one exits.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 180.0) -> None:
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


@dataclass
class Process:
    name: str
    module: str
    port: int
    env: dict[str, str]
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, log_dir: Path | None) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        out: int | IO[bytes] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"{self.name}.log"
            self._log = self.log_path.open("wb")
            out = self._log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
        )

    def wait_healthy(self, timeout: float) -> None:
        wait_healthy(f"{self.url}/health", self.proc, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-n:]


@dataclass
class StackConfig:
    llm_model_path: Path
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
    """The five processes and the environment that wires them together."""
    h = cfg.host
    stage = "local"
    shared_env = {
        "RAG_LANCEDB_URI": str(cfg.lancedb_uri),
        "RAG_DOCUMENTS_URI": str(cfg.documents_uri),
        "RAG_EMBEDDING_ENDPOINT_URL": f"http://{h}:{cfg.embedding_port}",
        "RAG_LLM_ENDPOINT_URL": f"http://{h}:{cfg.llm_port}",
        "RAG_CONNECTIONS_ENDPOINT_URL": f"http://{h}:{cfg.gateway_port}/{stage}",
    }
    if cfg.s3_endpoint_url:
        shared_env["RAG_S3_ENDPOINT_URL"] = cfg.s3_endpoint_url
    extra = dict(cfg.extra_env)
    # Uploads: with a local documents folder the gateway serves the presigned PUTs the ingestion lambda
    # signs, so both get the secret; the gateway writes into the same folder, with the same size limit.
    upload_env = {
        "RAG_UPLOAD_SECRET": cfg.upload_secret,
        "RAG_UPLOAD_BASE_URL": f"http://{h}:{cfg.gateway_port}/{stage}",
    }
    gateway_upload_env = {"GATEWAY_UPLOAD_SECRET": cfg.upload_secret}
    if not str(cfg.documents_uri).startswith("s3://"):
        gateway_upload_env["GATEWAY_DOCUMENTS_DIR"] = str(cfg.documents_uri).removeprefix("file://")
    if "RAG_MAX_UPLOAD_BYTES" in extra:
        gateway_upload_env["GATEWAY_MAX_UPLOAD_BYTES"] = extra["RAG_MAX_UPLOAD_BYTES"]
    functions = (
        f'{{"ingestion": "http://{h}:{cfg.ingestion_port}/2015-03-31/functions/ingestion/invocations", '
        f'"chat": "http://{h}:{cfg.chat_port}/2015-03-31/functions/chat/invocations"}}'
    )
    return [
        Process(
            "embedding",
            "embedding",
            cfg.embedding_port,
            {"EMBEDDING_HOST": h, "EMBEDDING_PORT": str(cfg.embedding_port), **extra},
            h,
        ),
        Process(
            "llm",
            "llm",
            cfg.llm_port,
            {"LLM_HOST": h, "LLM_PORT": str(cfg.llm_port), "LLM_MODEL_PATH": str(cfg.llm_model_path), **extra},
            h,
        ),
        Process(
            "ingestion",
            "ingestion",
            cfg.ingestion_port,
            {**shared_env, **upload_env, "INGESTION_HOST": h, "INGESTION_PORT": str(cfg.ingestion_port), **extra},
            h,
        ),
        Process(
            "chat", "chat", cfg.chat_port, {**shared_env, "CHAT_HOST": h, "CHAT_PORT": str(cfg.chat_port), **extra}, h
        ),
        Process(
            "gateway",
            "gateway",
            cfg.gateway_port,
            {
                "GATEWAY_HOST": h,
                "GATEWAY_PORT": str(cfg.gateway_port),
                "GATEWAY_STAGE": stage,
                "GATEWAY_FUNCTIONS": functions,
                **gateway_upload_env,
                **extra,
            },
            h,
        ),
    ]


class Stack:
    def __init__(self, processes: list[Process], config: StackConfig | None = None) -> None:
        self.processes = processes
        self.config = config
        self.by_name = {p.name: p for p in processes}

    @property
    def ws_url(self) -> str:
        gw = self.by_name["gateway"]
        return f"ws://{gw.host}:{gw.port}/local"

    def start(self, log_dir: Path | None, timeout: float = 300.0) -> None:
        for p in self.processes:
            p.start(log_dir)
        try:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.stack", description="Run the five services locally.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RAG_DATA_DIR", "data")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument("--log-dir", type=Path, default=None, help="write each service's log here (default: terminal)")
    args = parser.parse_args(argv)

    from llm.model_fetch import ModelFetchError, ensure_model
    from llm.settings import Settings as LlmSettings

    try:
        model_path = ensure_model(LlmSettings())
    except ModelFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = StackConfig(llm_model_path=model_path, data_dir=args.data_dir, host=args.host, gateway_port=args.gateway_port)
    stack = Stack(plan(cfg), cfg)
    print("starting gateway, ingestion, chat, embedding and llm ...", flush=True)
    try:
        stack.start(args.log_dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nready: {stack.ws_url}\n  try: localrag ask 'What is in my documents?' --url {stack.ws_url}\n", flush=True)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
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
