"""API keys (shared/api_keys.py), ``localrag keys``, and how the client finds and sends its key.

The key store runs on a real local folder and on a real S3 API (moto's server); the client's header is
checked against a real aiohttp WebSocket server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from shared.api_keys import (
    KEYS_PREFIX,
    ApiKey,
    KeyFileError,
    KeyRefused,
    KeyStore,
    UnknownKeyId,
    key_id_of,
    parse_key,
    read_key_file,
    write_key_file,
)
from shared.client import cli
from shared.client.ws_client import RagClient, RagClientError, find_api_key
from shared.object_store import LocalObjectStore, S3ObjectStore
from tests.conftest import s3_client
from tests.support.http import served
from tests.support.timeouts import scaled

KEY_SHAPE = re.compile(r"\Alrk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\Z")


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    if request.param == "folder":
        return KeyStore(LocalObjectStore(tmp_path / "documents"))
    endpoint: str = request.getfixturevalue("moto_s3")
    client = s3_client(endpoint)
    bucket = f"keys-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return KeyStore(S3ObjectStore(client, f"s3://{bucket}/documents"))


def stored_objects(store: KeyStore) -> dict[str, bytes]:
    return {k: store.objects.read(k) for k in store.objects.keys(KEYS_PREFIX)}


# -- the store -------------------------------------------------------------------------------------------------


def test_create_shows_the_key_once_and_stores_only_a_hash(store: KeyStore) -> None:
    record, key = store.create("acme", "ci runner")
    assert KEY_SHAPE.match(key)
    key_id, secret = parse_key(key) or ("", "")
    assert record.key_id == key_id and record.tenant == "acme" and record.name == "ci runner"
    assert record.revoked_at is None and record.created_at.tzinfo is not None
    objects = stored_objects(store)
    assert list(objects) == [f"{KEYS_PREFIX}{key_id}.json"]
    raw = objects[f"{KEYS_PREFIX}{key_id}.json"]
    assert secret.encode() not in raw and key.encode() not in raw
    assert set(json.loads(raw)) == {"key_id", "tenant", "name", "created_at", "revoked_at", "secret_sha256"}
    # what anyone may see of a key has no hash
    assert "secret_sha256" not in record.model_dump()
    assert all("secret_sha256" not in r.model_dump() for r in store.list())


def test_a_valid_key_authenticates_as_its_tenant(store: KeyStore) -> None:
    record, key = store.create("acme", "laptop")
    got = store.authenticate(key)
    assert got == record
    principal = got.principal()
    assert (principal.tenant, principal.principal, principal.auth) == ("acme", f"key:{record.key_id}", "api_key")
    assert store.verify(key) == record


def test_unknown_wrong_secret_malformed_and_revoked_keys_are_refused(store: KeyStore) -> None:
    record, key = store.create("acme", "")
    key_id, secret = parse_key(key) or ("", "")
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    cases = {
        f"lrk_{'0' * 16}_{secret}": "unknown_key",  # well-formed, no such id
        f"lrk_{key_id}_{other_secret}": "unknown_key",  # the id exists, the secret is not its
        key[:-1]: "malformed_credential",
        key + "x": "malformed_credential",
        key.upper(): "malformed_credential",
        f"lrk_{key_id}": "malformed_credential",
        "lrk_../../etc/passwd_" + secret: "malformed_credential",
        "": "malformed_credential",
    }
    for candidate, reason in cases.items():
        with pytest.raises(KeyRefused) as refused:
            store.authenticate(candidate)
        assert refused.value.reason == reason, candidate
        assert store.verify(candidate) is None
        assert secret not in str(refused.value)
    revoked = store.revoke(record.key_id)
    assert revoked.revoked_at is not None
    with pytest.raises(KeyRefused) as refused:
        store.authenticate(key)
    assert refused.value.reason == "revoked_key" and refused.value.key_id == record.key_id
    assert store.verify(key) is None


def test_revoke_is_recorded_once_and_unknown_ids_are_errors(store: KeyStore) -> None:
    record, _ = store.create("acme", "")
    first = store.revoke(record.key_id)
    again = store.revoke(record.key_id)
    assert again.revoked_at == first.revoked_at
    assert store.get(record.key_id) == first
    for bad in ("0" * 16, "not-an-id", "../x"):
        with pytest.raises(UnknownKeyId):
            store.revoke(bad)
        assert store.get(bad) is None


def test_list_has_every_key_of_every_tenant(store: KeyStore) -> None:
    a, _ = store.create("acme", "one")
    b, _ = store.create("globex", "two")
    c, _ = store.create("acme", "three")
    store.revoke(b.key_id)
    listed = store.list()
    assert {k.key_id for k in listed} == {a.key_id, b.key_id, c.key_id}
    assert [k.revoked for k in listed if k.key_id == b.key_id] == [True]
    assert listed == sorted(listed, key=lambda k: (k.created_at, k.key_id))


def test_tenant_and_name_are_validated(store: KeyStore) -> None:
    for tenant in ("", "Acme", "acme\n", "-x", "a" * 64, "a/b"):
        with pytest.raises(ValueError):
            store.create(tenant, "")
    with pytest.raises(ValueError):
        store.create("acme", "line\nbreak")
    assert store.list() == []


def test_key_ids_are_safe_to_log() -> None:
    key = "lrk_0123456789abcdef_" + "x" * 43
    assert key_id_of(key) == "0123456789abcdef"
    assert key_id_of("lrk_short_secret") is None
    assert key_id_of(key + "y") is None


# -- the key file ----------------------------------------------------------------------------------------------


def test_key_file_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "local-api-key"
    write_key_file(path, "lrk_0123456789abcdef_" + "k" * 43)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == "lrk_0123456789abcdef_" + "k" * 43


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "local-api-key"
    write_key_file(path, "lrk_0123456789abcdef_" + "k" * 43)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as refused:
        read_key_file(path)
    message = str(refused.value)
    assert "group or others" in message and f"chmod 600 {path}" in message and "k" * 43 not in message


def test_empty_or_missing_key_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    write_key_file(empty, "")
    with pytest.raises(KeyFileError, match="empty"):
        read_key_file(empty)
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_find_api_key_order(tmp_path: Path) -> None:
    write_key_file(tmp_path / "data" / "local-api-key", "from-default-file")
    write_key_file(tmp_path / "named", "from-named-file")
    assert find_api_key("explicit", {"RAG_API_KEY": "env"}, tmp_path) == "explicit"
    assert find_api_key(None, {"RAG_API_KEY": "env"}, tmp_path) == "env"
    assert find_api_key(None, {}, tmp_path) == "from-default-file"
    assert find_api_key(None, {"RAG_API_KEY_FILE": str(tmp_path / "named")}, tmp_path) == "from-named-file"
    assert find_api_key(None, {"RAG_API_KEY_FILE": "named"}, tmp_path) == "from-named-file"  # relative to cwd
    assert find_api_key(None, {"RAG_AUTH": "none"}, tmp_path) is None
    assert find_api_key(None, {}, tmp_path / "elsewhere") is None  # no default file: no key
    with pytest.raises(KeyFileError):  # a named file must exist
        find_api_key(None, {"RAG_API_KEY_FILE": str(tmp_path / "missing")}, tmp_path)
    (tmp_path / "data" / "local-api-key").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        find_api_key(None, {}, tmp_path)


# -- localrag keys ---------------------------------------------------------------------------------------------


def test_cli_keys_create_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = str(tmp_path / "documents")
    assert cli.main(["keys", "create", "--tenant", "acme", "--name", "ci", "--documents-uri", docs]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert KEY_SHAPE.match(key) and "shown once" in err and key not in err
    key_id = key_id_of(key)
    assert key_id is not None

    assert cli.main(["keys", "list", "--json", "--documents-uri", docs]) == 0
    out, _ = capsys.readouterr()
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["key_id"] == key_id and row["tenant"] == "acme" and row["name"] == "ci" and row["revoked_at"] is None
    assert "secret_sha256" not in row and (parse_key(key) or ("", ""))[1] not in out

    assert cli.main(["keys", "revoke", str(key_id), "--documents-uri", docs]) == 0
    assert "revoked API key" in capsys.readouterr().out
    store = KeyStore(LocalObjectStore(docs))
    with pytest.raises(KeyRefused):
        store.authenticate(key)

    assert cli.main(["keys", "list", "--documents-uri", docs]) == 0
    out, _ = capsys.readouterr()
    assert key_id in out and "revoked" in out and key not in out

    assert cli.main(["keys", "revoke", "0" * 16, "--documents-uri", docs]) == 1
    assert "unknown_key" in capsys.readouterr().err
    assert cli.main(["keys", "create", "--tenant", "Not Valid", "--documents-uri", docs]) == 1
    assert "invalid_request" in capsys.readouterr().err


def test_cli_refuses_a_world_readable_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key"
    write_key_file(path, "lrk_0123456789abcdef_" + "s" * 43)
    path.chmod(0o644)
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    monkeypatch.delenv("RAG_AUTH", raising=False)
    monkeypatch.setenv("RAG_API_KEY_FILE", str(path))
    assert cli.main(["search", "anything", "--url", "ws://127.0.0.1:9/local"]) == 1
    err = capsys.readouterr().err
    assert "api_key_file" in err and "chmod 600" in err and "s" * 43 not in err


# -- the client sends it ---------------------------------------------------------------------------------------


@pytest.fixture
def gate() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real WebSocket server that lets in only ``Bearer good`` (401 without a credential, 403 otherwise)
    and records each handshake's Authorization header and query."""
    seen: list[dict[str, Any]] = []

    async def ws(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        seen.append({"authorization": auth, "query": dict(request.query)})
        if auth is None:
            raise web.HTTPUnauthorized()
        if auth != "Bearer good":
            raise web.HTTPForbidden()
        resp = web.WebSocketResponse()
        await resp.prepare(request)
        async for _ in resp:
            pass
        return resp

    app = web.Application()
    app.router.add_get("/local", ws)
    with served(app) as url:
        yield f"{url.replace('http://', 'ws://')}/local", seen


def test_client_sends_the_key_on_the_upgrade(gate: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = gate

    async def connect(key: str | None) -> str | None:
        try:
            async with RagClient(url, api_key=key, connect_timeout=scaled(10)):
                return None
        except RagClientError as exc:
            assert exc.message.count("secret-value") == 0
            return exc.code

    assert asyncio.run(connect("good")) is None
    assert asyncio.run(connect(None)) == RagClientError.UNAUTHORIZED
    assert asyncio.run(connect("secret-value")) == RagClientError.FORBIDDEN
    assert [s["authorization"] for s in seen] == ["Bearer good", None, "Bearer secret-value"]
    assert all(s["query"] == {} for s in seen)  # never in the URL


def test_api_key_model_has_no_secret_fields() -> None:
    assert set(ApiKey.model_fields) == {"key_id", "tenant", "name", "created_at", "revoked_at"}
