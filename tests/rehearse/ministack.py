"""MiniStack (PyPI ``ministack``, MIT) as a process of the rehearsal.

It is installed into a folder of its own (``.cache/ministack/<version>``, ``pip install --target``), not into
the project's environment: it pins ``botocore==1.43.106`` exactly, which would downgrade the botocore that
boto3 and the product use. The server runs on this interpreter with that folder first on its ``sys.path``
(not ``PYTHONPATH``), so the Lambda functions it starts (``sys.executable`` in a subprocess, with the server's
environment) import the product's dependencies, as an image would hold them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.rehearse.template import ROOT

VERSION = "1.5.33"
INSTALL_DIR = ROOT / ".cache" / "ministack" / VERSION

_BOOT = (
    "import runpy, sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]; "
    "runpy.run_module('ministack', run_name='__main__', alter_sys=True)"
)


def ensure_installed() -> Path:
    """Install the pinned MiniStack into its own folder once."""
    if not (INSTALL_DIR / "ministack" / "__init__.py").is_file():
        INSTALL_DIR.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(INSTALL_DIR), f"ministack=={VERSION}"],
            check=True,
        )
    return INSTALL_DIR


def free_port() -> int:
    """A free loopback port (MiniStack binds its own socket: it cannot inherit one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MiniStack:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        path = ensure_installed()
        self.port = free_port()
        # The functions inherit this environment: no RAG_* of the caller, no real AWS credentials.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAG_", "AWS_", "LOCALRAG_", "GATEWAY_", "EMBEDDING_", "LLM_"))
        }
        env.update(
            {
                "GATEWAY_PORT": str(self.port),
                "BIND_HOST": "127.0.0.1",
                "IOT_MTLS_ENABLED": "0",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(path)],
                cwd=self.log_path.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MiniStack exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_ministack/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"MiniStack not healthy within {timeout:g}s: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and the function subprocesses it started (its own process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
