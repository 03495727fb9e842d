"""Serve a service's aiohttp app on an inherited listening socket, or on host:port, and say where.

Every server (gateway, embedding, llm, and the local Lambda runtime hosting ingestion and chat) starts
through :func:`run_app`:

- if ``LOCALRAG_LISTEN_FD`` names a listening socket inherited from the parent (shared/stack.py binds
  every socket itself and passes them with ``pass_fds``), it serves on that socket: the parent knew the
  port before the child started, so there is no window in which another process can take it;
- otherwise it binds ``host:port`` itself; port 0 lets the kernel pick a free port.

Either way it prints ``{name}: listening on http://HOST:PORT`` once the app has started (after the cold
start), which is the port actually served, also for port 0.

A process may serve a second, internal application (the gateway's @connections Management API) on a
listener of its own: the socket named by ``LOCALRAG_MANAGEMENT_LISTEN_FD`` if inherited, else its own
host:port. It starts with the main application and stops with it, and is announced as
``{name}: internal listener on http://HOST:PORT``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass

from aiohttp import web

LISTEN_FD_ENV = "LOCALRAG_LISTEN_FD"
MANAGEMENT_LISTEN_FD_ENV = "LOCALRAG_MANAGEMENT_LISTEN_FD"


# Pending connections the kernel queues before accept(): 128 (Python's default cap) overflowed in a burst of
# 500 WebSocket connects (bench/load.py: ListenOverflows, SYNs retried after 1 s and 3 s); Linux caps it
# at net.core.somaxconn (4096 on current kernels).
LISTEN_BACKLOG = 1024


def listening_socket(host: str, port: int, *, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A TCP socket bound to host:port (0: any free port) and listening; not inheritable until passed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def inherited_socket(
    environ: MutableMapping[str, str] = os.environ, variable: str = LISTEN_FD_ENV
) -> socket.socket | None:
    """The listening socket named by ``variable`` (``LOCALRAG_LISTEN_FD``), if any; the variable is removed
    so that a process this one starts does not take the descriptor for its own."""
    fd = environ.pop(variable, "")
    if not fd:
        return None
    sock = socket.socket(fileno=int(fd))
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass(frozen=True)
class InternalListener:
    """A second application to serve on its own listener (inherited via ``LOCALRAG_MANAGEMENT_LISTEN_FD``,
    else bound to host:port)."""

    app: web.Application
    host: str
    port: int


def serve_internal(app: web.Application, internal: InternalListener, *, name: str) -> None:
    """Start ``internal.app`` on its listener when ``app`` starts, and stop it when ``app`` stops."""
    sock = inherited_socket(variable=MANAGEMENT_LISTEN_FD_ENV) or listening_socket(internal.host, internal.port)

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(internal.app, access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            print(f"{name}: internal listener on {url_of(sock)}", file=sys.stdout, flush=True)
            yield
        finally:
            await runner.cleanup()
            sock.close()

    app.cleanup_ctx.append(ctx)


def run_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str,
    shutdown_timeout: float = 60.0,
    internal: InternalListener | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM on the inherited socket, else on host:port (0 = any free port);
    and ``internal``'s application on its own listener, if given."""
    sock = inherited_socket() or listening_socket(host, port)
    url = url_of(sock)
    if internal is not None:
        serve_internal(app, internal, name=name)

    async def announce(_: web.Application) -> None:
        # on_startup handlers run after the cleanup contexts (the cold start), so this line means "ready
        # to accept"; printed, like aiohttp's own banner, so that no log level can hide it.
        print(f"{name}: listening on {url}", file=sys.stdout, flush=True)

    app.on_startup.append(announce)
    web.run_app(app, sock=sock, print=None, shutdown_timeout=shutdown_timeout)
