"""Credentials for the tests: the API keys each stack's fixture creates, the stack's internal SigV4 key,
and a record of every secret a test sent (the log test greps the run's logs for each of them).

Every stack the session starts gets three API keys, made with shared/api_keys.py's KeyStore on the
stack's own documents store (where its authorizer reads them):

- ``alpha``: tenant ``alpha``, first principal: what :class:`tests.conftest.WsClient` and the CLI helpers
  send by default (``Authorization: Bearer ...``);
- ``alpha2``: tenant ``alpha``, a second principal (same documents, own conversations);
- ``beta``: tenant ``beta``;
- ``default``: tenant ``default`` (where identity-less sources, S3 notifications and Kinesis records, write).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from shared.api_keys import ApiKey, KeyStore
from shared.object_store import LocalObjectStore
from shared.sigv4 import SigningKey
from shared.stack import Process, Stack, internal_key_env, key_store, new_internal_key
from tests.support.timeouts import scaled

TENANT_A = "alpha"
TENANT_B = "beta"
TENANT_DEFAULT = "default"
REGION = "us-east-1"


@dataclass(frozen=True)
class TenantKeys:
    alpha: str
    alpha2: str
    beta: str
    default: str
    records: dict[str, ApiKey] = field(default_factory=dict)  # plaintext -> record

    def principal(self, key: str) -> str:
        return f"key:{self.records[key].key_id}"


_BY_GATEWAY: dict[str, TenantKeys] = {}
# Every credential the tests used (API keys, tokens, internal secrets): none may appear in any log.
USED_SECRETS: set[str] = set()


def remember(*secrets: str) -> None:
    USED_SECRETS.update(s for s in secrets if s)


def _gateway_of(url: str) -> str:
    return urlsplit(url).netloc


def create_keys(store: KeyStore) -> TenantKeys:
    records: dict[str, ApiKey] = {}
    plain: dict[str, str] = {}
    for name, tenant in (("alpha", TENANT_A), ("alpha2", TENANT_A), ("beta", TENANT_B), ("default", TENANT_DEFAULT)):
        record, key = store.create(tenant, f"tests: {name}")
        records[key] = record
        plain[name] = key
        remember(key)
    return TenantKeys(plain["alpha"], plain["alpha2"], plain["beta"], plain["default"], records)


def register(url: str, keys: TenantKeys) -> None:
    """The keys of the gateway at ``url`` (ws:// or http://; only host:port counts)."""
    _BY_GATEWAY[_gateway_of(url)] = keys


def keys_for(url: str) -> TenantKeys:
    try:
        return _BY_GATEWAY[_gateway_of(url)]
    except KeyError:
        raise LookupError(f"no API keys were created for the gateway at {url}") from None


def default_key(url: str) -> str | None:
    """Tenant alpha's first key for the gateway at ``url``; None for a gateway the fixtures did not key."""
    found = _BY_GATEWAY.get(_gateway_of(url))
    return found.alpha if found else None


def setup_stack_keys(stack: Stack) -> TenantKeys:
    """Create the test keys on the stack's documents store and register them for its gateway."""
    assert stack.config is not None
    keys = create_keys(key_store(stack.config))
    register(stack.http_url, keys)
    remember(stack.config.internal_key.secret_access_key, stack.config.upload_secret)
    return keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def internal_key(stack: Stack) -> SigningKey:
    assert stack.config is not None
    return stack.config.internal_key


def internal_client(stack: Stack, service: str, endpoint_url: str, *, read_timeout: float = 120) -> Any:
    """A boto3 client signing with the stack's internal key (what the stack's own processes hold)."""
    key = internal_key(stack)
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=key.access_key_id,
        aws_secret_access_key=key.secret_access_key,
        config=Config(read_timeout=scaled(read_timeout)),
    )


def lambda_client(stack: Stack, function: str, *, read_timeout: float = 120) -> Any:
    """boto3's ``lambda`` client for one of the stack's functions, signed with the internal key."""
    return internal_client(stack, "lambda", stack.by_name[function].url, read_timeout=read_timeout)


def management_client(stack: Stack) -> Any:
    """boto3's ``apigatewaymanagementapi`` client on the gateway's internal listener, signed."""
    return internal_client(stack, "apigatewaymanagementapi", f"{stack.management_url}/local")


_CONNECTED = re.compile(r"connected (\S+) from ")


def logged_connection_ids(stack: Stack) -> list[str]:
    """Connection ids the gateway logged as connected, oldest first (``/health`` tells counts only)."""
    return _CONNECTED.findall(stack.by_name["gateway"].log())


@dataclass
class StandaloneAuth:
    """An authorizer process and an internal key, for tests that run a gateway without the whole stack."""

    authorizer: Process
    internal: SigningKey
    keys: TenantKeys

    def env(self) -> dict[str, str]:
        """For the gateway and the functions: the internal key (the Invoke API and @connections want it)."""
        return internal_key_env(self.internal)

    def functions(self, **functions: str) -> dict[str, str]:
        """GATEWAY_FUNCTIONS: ``functions`` plus this authorizer."""
        url = f"{self.authorizer.url}/2015-03-31/functions/authorizer/invocations"
        return {**functions, "authorizer": url}

    def register(self, gateway_url: str) -> None:
        register(gateway_url, self.keys)


@contextlib.contextmanager
def standalone_authorizer(data_dir: Path, log_dir: Path, *, timeout: float = 60) -> Iterator[StandaloneAuth]:
    """Run ``python -m authorizer`` on a key store in ``data_dir``, with the test keys in it."""
    internal = new_internal_key()
    remember(internal.secret_access_key)
    documents = data_dir / "documents"
    proc = Process("authorizer", "authorizer", env={**internal_key_env(internal), "RAG_DOCUMENTS_URI": str(documents)})
    proc.bind()
    proc.env.update({"AUTHORIZER_HOST": proc.host, "AUTHORIZER_PORT": str(proc.port)})
    try:
        keys = create_keys(KeyStore(LocalObjectStore(documents)))
        proc.start(log_dir)
        proc.wait_healthy(scaled(timeout))
        yield StandaloneAuth(proc, internal, keys)
    finally:
        proc.stop()
