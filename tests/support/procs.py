"""Start one service for a test, through the harness ``make up`` uses (shared/stack.py's Process).

The harness binds the listening socket and passes it to the child, so the port is known before the
process starts and nothing can take it in between. For "nothing listens there" tests,
:func:`refusing_port` holds a port that refuses connections for as long as the test needs it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from shared.stack import Process
from tests.support.paths import ROOT
from tests.support.timeouts import TIMEOUT_FACTOR, scaled

__all__ = [
    "ROOT",
    "TIMEOUT_FACTOR",
    "Service",
    "log_with",
    "port_of",
    "refusing_port",
    "reserve_port",
    "start_service",
    "stop_service",
]

# A started service is the harness's Process: .url, .port, .proc, .log().
Service = Process


def start_service(
    name: str,
    module: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    settings_prefix: str | None = None,
    args: tuple[str, ...] = (),
    health_path: str = "/health",
    timeout: float = 180.0,
) -> Process:
    """Run ``python -m module *args`` with env (over os.environ) on a fresh port and wait for its health
    check (``timeout`` is scaled by TEST_TIMEOUT_FACTOR). ``{settings_prefix}_HOST/_PORT`` (default: the
    module's name in capitals) are set to the socket's address, so the service's settings stay true."""
    svc = Process(name, module, env=dict(env), args=args, health_path=health_path).bind()
    prefix = settings_prefix or module.upper()
    svc.env.setdefault(f"{prefix}_HOST", svc.host)
    svc.env[f"{prefix}_PORT"] = str(svc.port)
    svc.start(log_dir)
    try:
        svc.wait_healthy(scaled(timeout))
    except Exception as exc:
        svc.stop()
        raise RuntimeError(f"{name} failed to start: {exc}\n--- log ---\n{svc.log_tail()}") from exc
    return svc


def stop_service(svc: Process) -> None:
    svc.stop()


def log_with(svc: Process, text: str, timeout: float = 30.0) -> str:
    """The service's log once it contains ``text``. A request's access line is written when its handler
    returns, which for a streamed response is after the client has read it: a test that reads the log right
    after the response waits for the line rather than racing it."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        log = svc.log()
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the {svc.name} log after {scaled(timeout):.0f} s")
        time.sleep(0.05)


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to a free port but not listening: connecting to it is refused, at once and every
    time, and no other process can take the port until it is closed. ``.listen()`` it to start serving."""
    sock = socket.socket()
    try:
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """:func:`reserve_port` for the duration of a with block."""
    with reserve_port(host) as sock:
        yield sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
