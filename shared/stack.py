"""Run the six services as local processes (``make up``), or on ephemeral ports for the tests.

    python -m shared.stack            # default ports, data in ./data, LLM model resolved (embedded default)

Starts everything at once, waits for every health check, prints the WebSocket URL, and stops all
of them (SIGTERM, then SIGKILL) on Ctrl-C. A service that exits (a crash, ``kill -9``) is started again
on the same address (:class:`Supervisor`; ``--no-restart``: stop everything instead). The six: gateway,
authorizer, ingestion, chat (the three Lambda functions behind the local Invoke API), embedding and llm.

Identity and the internal APIs, as on AWS:

- Each run generates an internal SigV4 key (``LOCALRAG_INTERNAL_ACCESS_KEY_ID``/``_SECRET_ACCESS_KEY``)
  that only the stack's own processes get: the gateway signs its Invoke calls with it, the functions'
  runtimes verify them, and the lambdas sign their @connections replies with it. @connections is served
  on the gateway's internal management listener (a second socket, 127.0.0.1 only), not the public port.
- On first run, ``make up`` creates an API key of the ``default`` tenant (shared/api_keys.py) and keeps
  it in ``{data}/local-api-key`` (mode 0600), where the CLI finds it; later runs reuse it while it still
  verifies. The web chat URL with the key in its fragment is printed to the terminal only (a fragment is
  never sent in a request line, so no access log sees it). ``RAG_AUTH=none`` switches identity off, with
  a warning.

This is the one process harness: the tests start services through :class:`Process` too. The harness
binds each service's listening socket itself (port 0: any free port) and hands it to the child
(``pass_fds`` + ``LOCALRAG_LISTEN_FD``, see shared/serving.py), so every port is known before any
process starts -- the gateway needs the lambdas' URLs and the lambdas need the gateway's -- and no
other process can take a port between "found free" and "bound". It imports no service package:
the LLM model is fetched by running ``python -m llm.model_fetch``.
"""

from __future__ import annotations

import argparse
import json
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from shared.serving import LISTEN_FD_ENV, MANAGEMENT_LISTEN_FD_ENV, listening_socket
from shared.sigv4 import SigningKey

if TYPE_CHECKING:
    from shared.api_keys import KeyStore

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
class Listener:
    """A further listening socket a process inherits, named to it by the environment variable ``fd_env``
    (the gateway's internal management listener)."""

    fd_env: str
    host: str = "127.0.0.1"
    port: int = 0
    _sock: socket.socket | None = field(default=None, repr=False)

    def bind(self, owner: str) -> None:
        if self._sock is None:
            try:
                self._sock = listening_socket(self.host, self.port)
            except OSError as exc:
                raise OSError(exc.errno, f"{owner}: cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
            self.port = int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.fd_env}: no port yet (bind() first)")
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
    listeners: list[Listener] = field(default_factory=list)
    log_dir: Path | None = None
    restarts: int = 0
    _sock: socket.socket | None = field(default=None, repr=False)

    def bind(self) -> Process:
        """Bind the listening sockets now (once); afterwards :attr:`port` is the port served."""
        if self._sock is None:
            try:
                self._sock = listening_socket(self.host, self.port)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"{self.name}: cannot listen on {self.host}:{self.port}: {exc.strerror}"
                ) from exc
            self.port = int(self._sock.getsockname()[1])
        for listener in self.listeners:
            listener.bind(self.name)
        return self

    def listen(self, fd_env: str, host: str = "127.0.0.1", port: int = 0) -> Listener:
        """Add a further socket the child inherits (its fd in ``fd_env``); bound by :meth:`bind`."""
        listener = Listener(fd_env, host, port)
        self.listeners.append(listener)
        if self._sock is not None:
            listener.bind(self.name)
        return listener

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self.name}: no port yet (bind() first)")
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def start(self, log_dir: Path | None) -> Process:
        """Start the child on the bound socket (binding it first if needed). Started again after it exited
        (:meth:`restart`), it serves the same port: the harness binds that port anew (SO_REUSEADDR), and its
        log is appended to."""
        again = self.proc is not None
        self.log_dir = log_dir
        sock = self._bind_again() if again else self.bind()._sock
        assert sock is not None
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", LISTEN_FD_ENV: str(sock.fileno())}
        fds = [sock.fileno()]
        for listener in self.listeners:
            assert listener._sock is not None
            env[listener.fd_env] = str(listener._sock.fileno())
            fds.append(listener._sock.fileno())
        log: IO[bytes] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"{self.name}.log"
            log = self.log_path.open("ab" if again else "wb")
            if again:
                log.write(f"\n--- {self.name} restarted (restart {self.restarts}) ---\n".encode())
                log.flush()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                pass_fds=tuple(fds),
            )
        finally:
            # The child has its own copies of both.
            if log is not None:
                log.close()
            self._close_socket()
        return self

    def _bind_again(self, timeout: float = 10.0) -> socket.socket:
        """Bind the same port(s) again for a restart; retried briefly while the old socket is released."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.bind()
                break
            except OSError:
                self._close_socket()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        assert self._sock is not None
        return self._sock

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def wait_healthy(self, timeout: float) -> None:
        wait_healthy(f"{self.url}{self.health_path}", self.proc, timeout)

    def kill(self) -> None:
        """``kill -9``: the child dies at once, holding whatever it was doing; its port refuses connections
        until :meth:`restart`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 180.0) -> None:
        """Start the process again on the same address(es), with the same environment, and wait until it is
        healthy (stopping it first if it still runs)."""
        self.stop()
        self.restarts += 1
        self.start(self.log_dir)
        self.wait_healthy(timeout)

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
        for listener in self.listeners:
            listener.close()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 4000) -> str:
        return self.log()[-n:]


INTERNAL_KEY_ID_ENV = "LOCALRAG_INTERNAL_ACCESS_KEY_ID"
INTERNAL_SECRET_ENV = "LOCALRAG_INTERNAL_SECRET_ACCESS_KEY"
# The gateway's internal listener (@connections), inherited like LOCALRAG_LISTEN_FD.
MANAGEMENT_FD_ENV = MANAGEMENT_LISTEN_FD_ENV
# The API key `make up` creates, relative to the data folder (the CLI reads it from there).
LOCAL_KEY_FILE = "local-api-key"
LOCAL_KEY_NAME = "local (make up)"


def new_internal_key() -> SigningKey:
    """A random SigV4 key for one run of the stack: only its own processes ever get it."""
    return SigningKey(f"LRINT{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30))


def internal_key_env(key: SigningKey) -> dict[str, str]:
    return {INTERNAL_KEY_ID_ENV: key.access_key_id, INTERNAL_SECRET_ENV: key.secret_access_key}


@dataclass
class StackConfig:
    """Where the six services listen and keep data. A port of 0 means any free port (the tests)."""

    llm_model_path: Path | None = None  # None: the llm service's own LLM_* settings decide
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    embedding_port: int = 8001
    llm_port: int = 8002
    management_port: int = 8003  # the gateway's internal @connections listener (always 127.0.0.1)
    ingestion_port: int = 9001
    chat_port: int = 9002
    authorizer_port: int = 9003
    api_port: int = 8004  # the HTTP API function (/v1, the web chat), which the gateway forwards to
    # The local Kinesis endpoint (moto's server; also the on-failure SQS queue) and the event source
    # mapping's poller (shared/event_source.py). An existing endpoint (RAG_KINESIS_ENDPOINT_URL): none started.
    kinesis_port: int = 8005
    event_source_port: int = 9005
    kinesis_endpoint_url: str | None = field(default_factory=lambda: os.environ.get("RAG_KINESIS_ENDPOINT_URL") or None)
    lancedb_uri: str | None = None  # default: {data_dir}/lancedb
    documents_uri: str | None = None  # default: {data_dir}/documents
    s3_endpoint_url: str | None = None
    # RAG_AUTH for the gateway: None = as in this environment (default: identity on); "none" = off.
    auth: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Signs the gateway's stand-in for presigned S3 PUTs (local documents folder); random per run.
    upload_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    # Signs (SigV4) every call on the internal APIs: Invoke (gateway -> functions), @connections
    # (lambdas -> gateway); random per run.
    internal_key: SigningKey = field(default_factory=new_internal_key)

    def __post_init__(self) -> None:
        self.lancedb_uri = self.lancedb_uri or str(self.data_dir / "lancedb")
        self.documents_uri = self.documents_uri or str(self.data_dir / "documents")

    @property
    def local_key_file(self) -> Path:
        return self.data_dir / LOCAL_KEY_FILE

    @classmethod
    def any_ports(cls, **fields: Any) -> StackConfig:
        """A config whose every port is 0 (any free port: plan() binds them all before any process starts,
        so every port is known up front) -- the tests' and the benches' stacks."""
        ports = {f: 0 for f in cls.__dataclass_fields__ if f.endswith("_port")}
        return cls(**{**ports, **fields})


def plan(cfg: StackConfig) -> list[Process]:
    """The six processes and the environment that wires them together.

    Binds the listening sockets first (so ports of 0 become real ones), then writes each process's
    environment with the others' addresses."""
    h = cfg.host
    stage = "local"
    embedding = Process("embedding", "embedding", host=h, port=cfg.embedding_port)
    llm = Process("llm", "llm", host=h, port=cfg.llm_port)
    ingestion = Process("ingestion", "ingestion", host=h, port=cfg.ingestion_port)
    chat = Process("chat", "chat", host=h, port=cfg.chat_port)
    authorizer = Process("authorizer", "authorizer", host=h, port=cfg.authorizer_port)
    gateway = Process("gateway", "gateway", host=h, port=cfg.gateway_port)
    api = Process("api", "api", host=h, port=cfg.api_port)
    # @connections: on an internal listener of its own, loopback only whatever the public host is.
    management = gateway.listen(MANAGEMENT_FD_ENV, "127.0.0.1", cfg.management_port)
    kinesis = (
        None
        if cfg.kinesis_endpoint_url
        else Process("kinesis", "shared.kinesis_local", host=h, port=cfg.kinesis_port, health_path="/moto-api/")
    )
    event_source = Process("event_source", "shared.event_source", host=h, port=cfg.event_source_port)
    stream = [*([kinesis] if kinesis else []), event_source]
    processes = [embedding, llm, ingestion, chat, authorizer, api, gateway, *stream]
    try:
        for p in processes:
            p.bind()
    except OSError:
        for p in processes:
            p.stop()
        raise

    internal = internal_key_env(cfg.internal_key)
    store_env = {"RAG_DOCUMENTS_URI": str(cfg.documents_uri)}
    if cfg.s3_endpoint_url:
        store_env["RAG_S3_ENDPOINT_URL"] = cfg.s3_endpoint_url
    shared_env = {
        **store_env,
        **internal,
        "RAG_LANCEDB_URI": str(cfg.lancedb_uri),
        "RAG_EMBEDDING_ENDPOINT_URL": embedding.url,
        "RAG_LLM_ENDPOINT_URL": llm.url,
        "RAG_CONNECTIONS_ENDPOINT_URL": f"{management.url}/{stage}",
    }
    extra = dict(cfg.extra_env)
    # Uploads: with a local documents folder the gateway serves the presigned PUTs the ingestion lambda
    # signs, so both get the secret; the gateway writes into the same folder, with the same size limit.
    # (the upload URL's address is the gateway's, taken from each event's domainName and stage). The
    # RAG_* names are the documents settings the gateway shares with the ingestion lambda.
    upload_env = {"RAG_UPLOAD_SECRET": cfg.upload_secret}
    functions = {
        "ingestion": f"{ingestion.url}/2015-03-31/functions/ingestion/invocations",
        "chat": f"{chat.url}/2015-03-31/functions/chat/invocations",
        "authorizer": f"{authorizer.url}/2015-03-31/functions/authorizer/invocations",
    }
    auth_env = {"RAG_AUTH": cfg.auth} if cfg.auth is not None else {}
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
    # The authorizer reads the API keys from the documents store (auth/keys/, hashed).
    authorizer.env = {
        **store_env,
        **internal,
        "AUTHORIZER_HOST": h,
        "AUTHORIZER_PORT": str(authorizer.port),
        **extra,
    }
    gateway.env = {
        **internal,
        **auth_env,
        "GATEWAY_HOST": h,
        "GATEWAY_PORT": str(gateway.port),
        "GATEWAY_MANAGEMENT_HOST": management.host,
        "GATEWAY_MANAGEMENT_PORT": str(management.port),
        "GATEWAY_STAGE": stage,
        "GATEWAY_FUNCTIONS": json.dumps(functions),
        "GATEWAY_API_URL": api.url,
        **store_env,
        **upload_env,
        **extra,
    }
    # The Kinesis event source mapping invokes ingestion as Lambda's would (signed with the internal key).
    event_source.env = {
        **internal,
        "RAG_KINESIS_ENDPOINT_URL": cfg.kinesis_endpoint_url or (kinesis.url if kinesis else ""),
        "RAG_KINESIS_FUNCTION_URL": functions["ingestion"],
        "RAG_KINESIS_CHECKPOINT_DIR": str(cfg.data_dir / "event-source"),
        "RAG_KINESIS_HOST": h,
        "RAG_KINESIS_PORT": str(event_source.port),
        **extra,
    }
    # The HTTP API function runs the chat and ingestion logic as libraries (their settings, the same
    # store) and identifies callers as the authorizer does; local uploads go to the gateway's PUT route.
    api.env = {
        **shared_env,
        **upload_env,
        **auth_env,
        "API_HOST": h,
        "API_PORT": str(api.port),
        "API_UPLOADS_URL": f"{gateway.url}/{stage}",
        "API_STAGE": stage,
        # /v1/kb/sync jobs run in the ingestion function (asynchronous invokes, signed with the internal key).
        "API_SYNC_FUNCTION": "ingestion",
        "API_LAMBDA_ENDPOINT_URL": ingestion.url,
        **extra,
    }
    # Start order: the gateway last (it is the one clients reach); all of them start at once anyway.
    return [embedding, llm, ingestion, chat, authorizer, api, gateway, *stream]


class Stack:
    def __init__(self, processes: list[Process], config: StackConfig | None = None) -> None:
        self.processes = processes
        self.config = config
        self.by_name = {p.name: p for p in processes}

    @property
    def ws_url(self) -> str:
        gw = self.by_name["gateway"]
        return f"{gw.url.replace('http://', 'ws://', 1)}/local"

    @property
    def http_url(self) -> str:
        """The gateway's public address (the WebSocket API, /v1, /ui/, /health)."""
        return self.by_name["gateway"].url

    @property
    def api_url(self) -> str:
        """The HTTP API function's own address (/v1, /ui/, /health), which the gateway forwards to."""
        return self.by_name["api"].url

    @property
    def kinesis_url(self) -> str:
        """The Kinesis endpoint producers put records to (moto's server, or RAG_KINESIS_ENDPOINT_URL)."""
        return self.by_name["event_source"].env["RAG_KINESIS_ENDPOINT_URL"]

    @property
    def stream_name(self) -> str:
        """The documents stream the event source mapping polls."""
        from shared.event_source import EventSourceSettings

        env = {**os.environ, **self.by_name["event_source"].env}
        return env.get("RAG_KINESIS_STREAM_NAME") or str(EventSourceSettings.model_fields["stream_name"].default)

    @property
    def management_url(self) -> str:
        """The gateway's internal listener: ``{this}/local/@connections/{id}`` (SigV4, execute-api)."""
        gw = self.by_name["gateway"]
        listener = next(x for x in gw.listeners if x.fd_env == MANAGEMENT_FD_ENV)
        return listener.url

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

    def kill(self, name: str) -> Process:
        """``kill -9`` one service (by name: gateway, authorizer, ingestion, chat, embedding, llm)."""
        process = self.by_name[name]
        process.kill()
        return process

    def restart(self, name: str, timeout: float = 180.0) -> Process:
        """Start one service again on the same address (the others keep their URLs of it)."""
        process = self.by_name[name]
        process.restart(timeout)
        return process

    def poll(self) -> Process | None:
        """The first process that has exited, if any."""
        for p in self.processes:
            if p.proc is not None and p.proc.poll() is not None:
                return p
        return None


# `make up` restarts a service that exits, on the same address; one that exits this often within the
# window is broken, not unlucky: the stack stops.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0


class Supervisor:
    """What ``make up`` does when a service exits: restart it on the same address (the others keep its URL,
    clients see refused connections meanwhile), or, with ``restart=False`` or when it keeps exiting, stop.

    A client whose request the service was handling gets a typed error or a closed connection; what the
    service was writing is left as the fault left it (``localrag doctor`` finds and repairs any drift)."""

    def __init__(
        self,
        stack: Stack,
        *,
        restart: bool = True,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
        timeout: float = 300.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.stack = stack
        self.restart = restart
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.timeout = timeout
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.exits: dict[str, list[float]] = {}

    def check(self) -> bool:
        """Restart every service that has exited; False when the stack should stop."""
        while (dead := self.stack.poll()) is not None:
            code = dead.proc.returncode if dead.proc is not None else "?"
            if not self.restart:
                self.say(f"error: {dead.name} exited with code {code}")
                return False
            now = time.monotonic()
            recent = [t for t in self.exits.get(dead.name, []) if now - t < self.window_s] + [now]
            self.exits[dead.name] = recent
            if len(recent) > self.max_restarts:
                self.say(
                    f"error: {dead.name} exited with code {code}, {len(recent)} times within "
                    f"{self.window_s:.0f} s; stopping (see its log)"
                )
                return False
            self.say(f"warning: {dead.name} exited with code {code}; restarting it on {dead.url}")
            try:
                dead.restart(self.timeout)
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.say(f"warning: {dead.name} did not come back: {exc}")
                continue  # polled again: counted as another exit
            self.say(f"{dead.name} is back on {dead.url}")
        return True


def auth_off(environ: Mapping[str, str] = os.environ, cfg: StackConfig | None = None) -> bool:
    """``RAG_AUTH=none``: identity switched off (the config's value wins over the environment's)."""
    value = cfg.auth if cfg is not None and cfg.auth is not None else environ.get("RAG_AUTH", "")
    return value.strip().lower() == "none"


def key_store(cfg: StackConfig) -> KeyStore:
    """The API keys of this stack: under auth/keys/ in its documents store (as the authorizer reads them)."""
    from shared.api_keys import KeyStore
    from shared.aws_clients import make_client
    from shared.object_store import open_object_store

    env = {**os.environ, **cfg.extra_env}
    region = env.get("RAG_AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def s3() -> Any:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
        )
        return make_client("s3", endpoint_url=cfg.s3_endpoint_url, region=region, session=session)

    return KeyStore(open_object_store(str(cfg.documents_uri), s3))


def ensure_local_key(cfg: StackConfig, store: KeyStore | None = None) -> tuple[str, bool]:
    """The API key in ``{data}/local-api-key`` if it still verifies, else a new key of the default tenant
    written there (mode 0600). Returns ``(key, created)``."""
    from shared.identity import DEFAULT_TENANT

    store = store or key_store(cfg)
    path = cfg.local_key_file
    if path.is_file():
        existing = path.read_text(encoding="utf-8").strip()
        if existing and store.verify(existing) is not None:
            os.chmod(path, 0o600)
            return existing, False
    _record, key = store.create(DEFAULT_TENANT, LOCAL_KEY_NAME)
    write_private(path, key + "\n")
    return key, True


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte; atomic replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def web_chat_url(stack: Stack, key: str | None) -> str:
    """The web chat's address; with the key in the fragment (browsers never send a fragment)."""
    base = stack.http_url.replace("://0.0.0.0:", "://127.0.0.1:", 1)
    return f"{base}/ui/" + (f"#key={quote(key, safe='')}" if key else "")


def fetch_model() -> Path:
    """``python -m llm.model_fetch`` (the LLM_* settings of this environment): the GGUF file's path --
    LLM_MODEL_PATH, else the bigger model ``make model`` fetched, else the embedded SmolLM2 (no network).

    A subprocess, so that this launcher imports no service; its progress and errors go to the terminal."""
    result = subprocess.run(
        [sys.executable, "-m", "llm.model_fetch"], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"no LLM model: python -m llm.model_fetch exited with code {result.returncode}")
    return Path(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.stack", description="Run the six services locally.")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RAG_DATA_DIR", "data")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument(
        "--any-ports", action="store_true", help="every service on any free port (the gateway's is printed)"
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="write each service's log here (default: terminal)")
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="stop everything when a service exits (default: restart it on the same address, "
        f"giving up after {MAX_RESTARTS} exits within {RESTART_WINDOW_S:.0f} s)",
    )
    args = parser.parse_args(argv)

    try:
        model_path = fetch_model()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg = StackConfig(llm_model_path=model_path, data_dir=args.data_dir, host=args.host, gateway_port=args.gateway_port)
    if args.any_ports:
        cfg.gateway_port = cfg.embedding_port = cfg.llm_port = cfg.management_port = 0
        cfg.ingestion_port = cfg.chat_port = cfg.authorizer_port = cfg.api_port = 0
        cfg.kinesis_port = cfg.event_source_port = 0
    key: str | None = None
    if auth_off(cfg=cfg):
        print(
            "WARNING: RAG_AUTH=none: identity is off. Anyone who can reach the gateway can read, change and "
            "delete every document, as the 'anonymous' principal of the 'default' tenant. Origin, Host and "
            "the internal APIs' signatures are still checked.",
            file=sys.stderr,
            flush=True,
        )
    else:
        try:
            key, created = ensure_local_key(cfg)
        except (OSError, ValueError) as exc:
            print(f"error: cannot set up the local API key in {cfg.local_key_file}: {exc}", file=sys.stderr)
            return 1
        what = "created" if created else "using"
        print(f"{what} the local API key in {cfg.local_key_file} (tenant 'default'; the CLI reads it)", flush=True)
    try:
        stack = Stack(plan(cfg), cfg)
    except OSError as exc:
        print(f"error: {exc.strerror} (is the stack already running?)", file=sys.stderr)
        return 1

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # While starting, SIGTERM as Ctrl-C is: an exception, so that start() stops what it has started (by
    # default SIGTERM would end this process at once and leave the services running).
    signal.signal(signal.SIGTERM, interrupted)
    print("starting gateway, api, authorizer, ingestion, chat, embedding and llm ...", flush=True)
    try:
        stack.start(args.log_dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # (start() stopped the services it had started)
    try:
        return _serve(stack, cfg, key, no_restart=args.no_restart)
    except KeyboardInterrupt:  # a signal in the moment before _serve's handlers were in place
        return 130
    finally:
        # A second Ctrl-C must not cut the stop short and leave services running: they are stopped (each
        # within 10 s, then killed) whatever comes now.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping ...", flush=True)
        stack.stop()


def _serve(stack: Stack, cfg: StackConfig, key: str | None, *, no_restart: bool) -> int:
    """Say where the started stack is, then supervise it until SIGINT or SIGTERM (the caller stops it)."""
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Before anything is printed: a client that acts on "ready" (a test, a script) may signal at once.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"\nready: {stack.ws_url}\n  try: localrag ask 'What is in my documents?' --url {stack.ws_url}", flush=True)
    print(
        f"  kinesis: put records to stream {stack.stream_name} at {stack.kinesis_url} "
        f"(AWS_ENDPOINT_URL_KINESIS={stack.kinesis_url} STREAM_NAME={stack.stream_name})",
        flush=True,
    )
    if key is None:
        print(f"  web chat: {web_chat_url(stack, None)}\n", flush=True)
    elif sys.stdout.isatty():
        # The key goes to the terminal only: never into a log file (stdout redirected) or a request line.
        print(f"  web chat: {web_chat_url(stack, key)}\n", flush=True)
    else:
        print(
            f"  web chat: {web_chat_url(stack, None)}#key=<the key in {cfg.local_key_file}> "
            "(not printed: stdout is not a terminal)\n",
            flush=True,
        )
    supervisor = Supervisor(stack, restart=not no_restart)
    while not stopping:
        if not supervisor.check():
            return 1
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
