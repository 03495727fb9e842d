"""Every reply fits 128 KB, on the running stack: 10,000 documents list through ``localrag list`` and
through ``GET /v1/documents?limit=&after=``, and a 200-turn conversation's history pages over the
WebSocket. The documents and turns are written straight into the stack's stores (tests/support/seed.py):
the tests time the listing, not the embedding. The documents are tenant beta's, so the web chat's tests
on the same stack (tenant alpha) do not see them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any
from urllib.parse import urlencode

import pytest

from shared.protocol import MAX_MESSAGE_BYTES, SERVER_MESSAGE, DocumentList, History
from shared.stack import Stack
from tests.conftest import TIMEOUT_FACTOR, StackFactory, WsClient, stack_keys
from tests.support.auth import bearer, remember
from tests.support.paths import ROOT
from tests.support.seed import seed_conversation, seed_documents
from tests.support.timeouts import scaled

DOCUMENTS = 10_000


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("web", RAG_MAX_DISTANCE="0.7")  # the web chat's stack: one stack for both files


@pytest.fixture(scope="module")
def seeded_ids(stack: Stack) -> list[str]:
    ids = [f"bulk-{i:05d}" for i in range(DOCUMENTS)]
    seed_documents(stack, "beta", ids)
    return ids


def test_localrag_list_follows_every_page(stack: Stack, seeded_ids: list[str]) -> None:
    key = stack_keys(stack).beta
    remember(key)
    env = {k: v for k, v in os.environ.items() if k not in ("RAG_URL", "LOCALRAG_DEBUG", "RAG_AUTH")}
    env["RAG_API_KEY"] = key
    run = subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "--url", stack.ws_url, "--json", "list"],
        capture_output=True,
        text=True,
        timeout=180 * TIMEOUT_FACTOR,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    pages = [SERVER_MESSAGE.validate_json(line) for line in lines]
    assert all(isinstance(p, DocumentList) for p in pages)
    ids = [d.id for p in pages if isinstance(p, DocumentList) for d in p.documents]
    assert ids == seeded_ids
    largest = max(len(line.encode()) for line in lines)
    assert largest <= MAX_MESSAGE_BYTES and len(pages) >= DOCUMENTS // 1000
    print(f"localrag list: {len(pages)} pages, largest {largest} bytes")


def _get(stack: Stack, key: str, **query: Any) -> dict[str, Any]:
    url = f"{stack.http_url}/v1/documents" + (f"?{urlencode(query)}" if query else "")
    req = urllib.request.Request(url, headers=bearer(key))
    with urllib.request.urlopen(req, timeout=scaled(60)) as resp:
        assert resp.status == 200
        data: dict[str, Any] = json.loads(resp.read())
        return data


def test_get_v1_documents_pages(stack: Stack, seeded_ids: list[str]) -> None:
    key = stack_keys(stack).beta
    remember(key)
    first = _get(stack, key)  # no limit: the first page of the default size
    assert first["object"] == "list" and len(first["data"]) == 100 and first["has_more"] is True
    assert first["first_id"] == seeded_ids[0] and first["last_id"] == seeded_ids[99] == first["next"]
    ids: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = _get(stack, key, limit=1000, **({"after": after} if after else {}))
        pages += 1
        ids += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            assert page["next"] is None
            break
        after = page["last_id"]
        assert page["next"] == after
    assert ids == seeded_ids and pages >= DOCUMENTS // 1000
    bad = urllib.request.Request(f"{stack.http_url}/v1/documents?limit=0", headers=bearer(key))
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(bad, timeout=scaled(60))
    assert caught.value.code == 400 and json.loads(caught.value.read())["error"]["param"] == "limit"


def test_a_200_turn_history_pages_over_the_websocket(stack: Stack) -> None:
    keys = stack_keys(stack)
    conversation, rows = seed_conversation(stack, "alpha", keys.principal(keys.alpha), 200)
    seen: list[str] = []
    sizes: list[int] = []
    after: str | None = None
    with WsClient(stack.ws_url) as ws:
        while True:
            ws.send(
                {
                    "action": "history",
                    "request_id": "h",
                    "conversation_id": conversation,
                    "limit": 200,
                    **({"after": after} if after else {}),
                }
            )
            raw = ws.ws.recv(timeout=ws.timeout)
            data = raw.encode() if isinstance(raw, str) else raw
            sizes.append(len(data))
            page = SERVER_MESSAGE.validate_json(data)
            assert isinstance(page, History), page
            seen += [m.id for m in page.messages]
            if page.next is None:
                break
            after = page.next
    assert seen == [r.id for r in rows]
    assert max(sizes) <= MAX_MESSAGE_BYTES and len(sizes) > 1
    print(f"history over the WebSocket: {len(sizes)} pages, largest {max(sizes)} bytes")
