"""Start project services as real processes on ephemeral ports, for tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One knob scales every wait in the suite (slow CI machines): TEST_TIMEOUT_FACTOR=2.
TIMEOUT_FACTOR = float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s: {last}")


def start_service(
    name: str,
    module: str,
    env: dict[str, str],
    log_dir: Path,
    port: int | None = None,
    port_env: str | None = None,
    health_path: str = "/health",
    timeout: float = 180.0,
) -> Service:
    """Run `python -m module` with env (merged over os.environ), on `port`, and wait for its health check."""
    port = port or free_port()
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    full_env[port_env or f"{module.upper()}_PORT"] = str(port)
    full_env.setdefault(f"{module.upper()}_HOST", "127.0.0.1")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    svc = Service(name, port, proc, log_path)
    try:
        wait_healthy(f"{svc.url}{health_path}", proc, timeout)
    except Exception as exc:
        stop_service(svc)
        raise RuntimeError(f"{name} failed to start: {exc}\n--- log ---\n{svc.log()[-4000:]}") from exc
    return svc


def stop_service(svc: Service, timeout: float = 10.0) -> None:
    if svc.proc.poll() is None:
        svc.proc.terminate()
        try:
            svc.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()


@contextlib.contextmanager
def running(*services: Service) -> Iterator[tuple[Service, ...]]:
    try:
        yield services
    finally:
        for svc in reversed(services):
            stop_service(svc)
