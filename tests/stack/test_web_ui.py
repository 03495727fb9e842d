"""The web chat (api/static, served by the api function at /ui/, reached through the gateway) in headless Chromium.

- End to end against the five real services: upload a Markdown file through the file input
  (upload_url -> presigned PUT -> ingest_object), see it in the document list, ask about it and watch the
  answer stream in, see its source in the sources panel, reload and get the conversation back, delete
  the document. A screenshot goes to test-artifacts/web-chat.png.
  The page is opened as ``make up`` prints it, with the key in the fragment (``/ui/#key=...``); without
  it the page says how to sign in.
- Against a fake gateway (a small WebSocket server in this process): the "can't reach the gateway"
  banner, reconnecting with backoff, error replies shown inline, server text rendered as text; the key
  taken from the fragment into sessionStorage and sent as the ``localrag.bearer.<key>`` subprotocol;
  ``?ws=`` honoured only for a gateway the page's config allows.
- The static routes themselves (add_web_routes on a bare aiohttp app).

Browser: Debian's chromium (``make system-deps`` installs it) driven by the playwright pip package;
``playwright install`` is never needed.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.sync_api import Browser, Page, expect, sync_playwright
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from api.web import CSP, add_web_routes
from shared.serving import listening_socket
from shared.stack import Stack
from tests.conftest import ARTIFACTS, TIMEOUT_FACTOR, StackFactory, stack_keys
from tests.support.auth import remember
from tests.support.procs import port_of, reserve_port
from tests.support.seed import seed_conversation
from tests.support.timeouts import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Playwright timeouts are in milliseconds.
SHORT_MS = 15_000 * TIMEOUT_FACTOR
LONG_MS = 120_000 * TIMEOUT_FACTOR

TOPIC_TITLE = "Axolotl limb regeneration"
TOPIC_MD = f"""# {TOPIC_TITLE}

The axolotl is a salamander from the lakes around Mexico City that can regrow a lost limb completely.
After an amputation, cells near the wound form a blastema, a bud of dedifferentiated cells that
rebuilds bone, muscle, nerves and skin in the right pattern. Axolotls can also regenerate parts of
their spinal cord, heart and eyes, which makes them a model organism for regeneration research.
"""
QUESTION = "How does an axolotl regrow a lost limb?"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {scaled(timeout):.0f}s")
        time.sleep(0.05)


def has_class(name: str) -> re.Pattern[str]:
    """For expect(...).to_have_class: the class attribute contains `name` (a regex alternative) as a word."""
    return re.compile(rf"(^|\s)({name})(\s|$)")


# ---------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (apt-get install chromium)")
    expect.set_options(timeout=SHORT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000 * TIMEOUT_FACTOR)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(SHORT_MS)
    pg.set_default_navigation_timeout(SHORT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


# ---------------------------------------------------------------------- a static server for the UI alone


class StaticServer:
    """The web routes on a bare aiohttp app, in a thread (no gateway, no lambdas)."""

    def __init__(self, stage: str = "local") -> None:
        self._sock = listening_socket("127.0.0.1", 0)
        self.port = port_of(self._sock)
        self.stage = stage
        self.gateways: list[str] = []  # what config.json allows ?ws= to name (read per request)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        add_web_routes(app, self.stage, gateways=self.gateways)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> StaticServer:
        self._thread.start()
        assert self._ready.wait(scaled(10)), "static server did not start"
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(scaled(10))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(scaled(10))


@pytest.fixture(scope="module")
def static_server() -> Iterator[StaticServer]:
    server = StaticServer().start()
    yield server
    server.stop()


def test_static_routes(static_server: StaticServer) -> None:
    import urllib.error
    import urllib.request

    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(static_server.url + path, timeout=scaled(10)) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    status, headers, body = get("/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == CSP
    assert b'<script type="module" src="app.js">' in body
    status, headers, body = get("/ui")  # redirected to /ui/
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    status, headers, body = get("/ui/config.json")
    assert status == 200 and json.loads(body) == {"websocket_path": "/local", "gateways": static_server.gateways}
    status, headers, _ = get("/ui/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")  # ES modules need a JS type
    status, headers, _ = get("/ui/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    for bad in ("/ui/nope.js", "/ui/..%2Fweb.py", "/ui/%2e%2e/web.py", "/ui/.gitignore"):
        assert get(bad)[0] == 404, bad


# ---------------------------------------------------------------------- a fake gateway


class FakeGateway:
    """A WebSocket server speaking just enough of the protocol; `answer` decides the replies.

    It serves on `sock`, a bound socket: until start() nothing listens there (connections are refused)."""

    def __init__(self, sock: socket.socket, answer: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> None:
        self._sock = sock
        self.port = port_of(sock)
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.offered: list[str | None] = []  # each connection's Sec-WebSocket-Protocol header
        self.chosen: list[str | None] = []

    @property
    def origin(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def url(self, static: StaticServer) -> str:
        """The web chat on ``static``, pointed at this gateway with ?ws= (which the page's config allows)."""
        if self.origin not in static.gateways:
            static.gateways.append(self.origin)
        return f"{static.url}/ui/?ws={self.origin}/local"
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        self.offered.append(conn.request.headers.get("Sec-WebSocket-Protocol"))
        self.chosen.append(conn.subprotocol)
        try:
            for raw in conn:
                msg = json.loads(raw)
                self.received.append(msg)
                for reply in self.answer(msg):
                    conn.send(json.dumps({"request_id": msg.get("request_id"), **reply}))
        except ConnectionClosed:
            pass

    def start(self) -> FakeGateway:
        self._sock.listen()
        # Like the gateway: the page offers localrag.v1 (and its key); the handshake answers localrag.v1.
        self._server = serve(self._handle, sock=self._sock, subprotocols=["localrag.v1"])  # type: ignore[list-item]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(scaled(10))
        self._sock.close()


XSS = '<img src=x onerror="window.__xss=1">'


def fake_answers(msg: dict[str, Any]) -> list[dict[str, Any]]:
    action = msg.get("action")
    if action == "list_documents":
        doc = {"id": "evil", "title": XSS, "status": "indexed", "chunks": 1, "name": "evil.md", "size": 10}
        return [{"type": "document_list", "documents": [doc]}]
    if action == "chat":
        return [{"type": "error", "code": "upstream_unavailable", "message": "the chat service is unavailable"}]
    return [{"type": "error", "code": "unknown_action", "message": f"not faked: {action}"}]


def test_banner_when_gateway_unreachable_then_reconnects(page: Page, static_server: StaticServer) -> None:
    fake = FakeGateway(reserve_port(), fake_answers)  # nothing listens here yet
    page.goto(fake.url(static_server))
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Can't reach the gateway — is make up running? Retrying…")
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "closed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-chat-offline.png"))

    # A question while disconnected gets an inline error, not silence.
    page.get_by_role("textbox", name="Your question").fill("anyone there?")
    page.get_by_role("textbox", name="Your question").press("Enter")
    expect(page.locator(".msg-assistant .msg-error")).to_contain_text("not_connected")

    # The gateway comes up: the page reconnects by itself and the banner goes away.
    fake.start()
    try:
        expect(page.locator("#connection-status")).to_have_attribute(
            "data-state", "open", timeout=30_000 * TIMEOUT_FACTOR
        )
        expect(banner).to_be_hidden()
        # Server text is rendered as text, never as HTML.
        expect(page.locator("#document-list .document-title")).to_have_text(XSS)
        assert page.locator("#document-list img").count() == 0
        assert page.evaluate("window.__xss") is None
        # An error reply is shown inline, matched to its question by request_id.
        page.get_by_role("textbox", name="Your question").fill("what about now?")
        page.get_by_role("button", name="Send question").click()
        expect(page.locator(".msg-assistant .msg-error").last).to_contain_text(
            "upstream_unavailable: the chat service is unavailable"
        )
        chats = [m for m in fake.received if m.get("action") == "chat"]
        assert chats and chats[-1]["question"] == "what about now?" and chats[-1]["request_id"]
    finally:
        fake.stop()
    # ... and goes down again: the banner is back.
    expect(banner).to_be_visible(timeout=30_000 * TIMEOUT_FACTOR)


def test_history_sources_documents_against_fake_gateway(page: Page, static_server: StaticServer) -> None:
    source = {
        "n": 1,
        "doc_id": "alpha",
        "title": "Alpha notes",
        "chunk": 2,
        "distance": 0.31415,
        "excerpt": "Alpha is where it starts.",
        "date": None,
        "source": None,
        "page": 4,
        "heading": "Intro > Details",
    }
    history = [
        {"id": "m1", "role": "user", "content": "What is alpha?", "created_at": "2025-01-01T10:00:00Z"},
        {
            "id": "m2",
            "role": "assistant",
            "content": "Alpha is the first letter [1].",
            "created_at": "2025-01-01T10:00:02Z",
            "sources": [source],
            "max_distance": 0.7,
            "prompt": "context",
        },
    ]
    docs = [
        {"id": "alpha", "title": "Alpha notes", "name": "alpha.md", "size": 2048, "status": "indexed", "chunks": 3},
        {"id": "beta.pdf", "title": "", "name": "beta.pdf", "size": 10, "status": "failed", "chunks": 0},
    ]

    def answers(msg: dict[str, Any]) -> list[dict[str, Any]]:
        action = msg.get("action")
        if action == "history":
            if msg["conversation_id"] == "conv-1":
                return [{"type": "history", "conversation_id": "conv-1", "messages": history}]
            return [{"type": "error", "code": "unknown_conversation", "message": "no such conversation"}]
        if action == "list_documents":
            return [{"type": "document_list", "documents": list(docs)}]
        if action == "delete_document":
            docs[:] = [d for d in docs if d["id"] != msg["doc_id"]]
            return [{"type": "document_deleted", "doc_id": msg["doc_id"], "chunks_deleted": 3}]
        if action == "chat":  # tokens out of order: the page puts them back in index order
            end = {"usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}, "stop_reason": "end_turn"}
            return [
                {"type": "stream_start", "conversation_id": "conv-1", "sources": [source]},
                {"type": "token", "index": 1, "text": "world"},
                {"type": "token", "index": 0, "text": "hello "},
                {
                    "type": "stream_end",
                    "conversation_id": "conv-1",
                    "answer": "hello world",
                    "sources": [source],
                    "prompt": "context",
                    "timings_ms": {"total": 1200.0},
                    **end,
                },
            ]
        return [{"type": "error", "code": "unknown_action", "message": f"not faked: {action}"}]

    fake = FakeGateway(reserve_port(), answers).start()
    try:
        page.goto(fake.url(static_server))
        page.evaluate("localStorage.setItem('localrag.conversation_id', 'conv-1')")
        page.reload()
        # the stored conversation is restored, sources with page and heading
        expect(page.locator(".msg-user .msg-text")).to_have_text(["What is alpha?"])
        expect(page.locator(".msg-assistant .answer-text")).to_have_text(["Alpha is the first letter [1]."])
        item = page.locator("#sources-list .source")
        expect(item.locator(".source-title")).to_have_text("Alpha notes")
        expect(item.locator(".source-location")).to_have_text("page 4 · Intro > Details")
        expect(item.locator(".source-meta")).to_contain_text("distance 0.314 · chunk 2")
        # documents: a title, or the file name when there is none; a status badge each
        titles = page.locator("#document-list .document-title")
        expect(titles).to_have_text(["Alpha notes", "beta.pdf"])
        expect(page.locator("#document-list .badge")).to_have_text(["indexed", "failed"])
        page.get_by_role("button", name="Delete Alpha notes").focus()
        page.keyboard.press("Enter")  # keyboard-usable
        expect(titles).to_have_text(["beta.pdf"])
        expect(page.locator("#documents-notice")).to_have_text("Deleted “Alpha notes” (3 chunks).")
        # a new question continues the conversation; out-of-order tokens are reassembled in order
        page.get_by_role("textbox", name="Your question").fill("and then?")
        page.keyboard.press("Enter")
        expect(page.locator(".msg-assistant .answer-text").last).to_have_text("hello world")
        chat = [m for m in fake.received if m.get("action") == "chat"][-1]
        assert chat["conversation_id"] == "conv-1"
        # a stored conversation that no longer exists is forgotten
        page.evaluate("localStorage.setItem('localrag.conversation_id', 'gone')")
        page.reload()
        expect(page.locator(".notice")).to_contain_text("no longer exists")
        assert page.evaluate("localStorage.getItem('localrag.conversation_id')") is None
    finally:
        fake.stop()


def test_key_moves_from_the_fragment_to_session_storage_and_the_subprotocol(
    page: Page, static_server: StaticServer
) -> None:
    key = "lrk_testkeyid_s3cr3t-Value_0123"
    fake = FakeGateway(reserve_port(), fake_answers).start()
    try:
        page.goto(f"{fake.url(static_server)}#key={key}")
        expect(page.locator("#connection-status")).to_have_attribute("data-state", "open")
        # Out of the address bar (and so out of history and bookmarks), into this tab's session storage.
        assert "#" not in page.url and key not in page.url
        assert page.evaluate("sessionStorage.getItem('localrag.key')") == key
        assert page.evaluate("localStorage.getItem('localrag.key')") is None
        assert fake.offered[-1] == f"localrag.v1, localrag.bearer.{key}" and fake.chosen[-1] == "localrag.v1"
        # A reload keeps it (sessionStorage).
        page.reload()
        expect(page.locator("#connection-status")).to_have_attribute("data-state", "open")
        assert fake.offered[-1] == f"localrag.v1, localrag.bearer.{key}"
        # A new key in the fragment replaces it and reconnects with it.
        page.goto(f"{fake.url(static_server)}#key=lrk_other_key")
        wait_until(lambda: fake.offered[-1] == "localrag.v1, localrag.bearer.lrk_other_key", "a reconnect")
        assert page.evaluate("sessionStorage.getItem('localrag.key')") == "lrk_other_key"
        assert "#" not in page.url
    finally:
        fake.stop()


def test_ws_override_only_for_allowed_gateways(page: Page, static_server: StaticServer) -> None:
    """?ws= naming a gateway the page's config does not allow is ignored: the page uses its own origin
    (and never sends its key elsewhere)."""
    fake = FakeGateway(reserve_port(), fake_answers).start()
    try:
        assert fake.origin not in static_server.gateways
        with page.expect_websocket() as opened:
            page.goto(f"{static_server.url}/ui/?ws={fake.origin}/local#key=lrk_not_for_you")
        assert opened.value.url == f"ws://127.0.0.1:{static_server.port}/local"
        assert fake.offered == []
    finally:
        fake.stop()


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("web", RAG_MAX_DISTANCE="0.7")


def _ui_url(stack: Stack) -> str:
    gw = stack.by_name["gateway"]
    return f"http://{gw.host}:{gw.port}/ui/"


# Records the length of the newest answer's text at every DOM change, to see it grow token by token.
WATCH_ANSWER = """() => {
  window.__answerLengths = [];
  const log = document.getElementById("chat-log");
  new MutationObserver(() => {
    const answers = log.querySelectorAll(".msg-assistant .answer-text");
    if (answers.length) window.__answerLengths.push(answers[answers.length - 1].textContent.length);
  }).observe(log, { childList: true, subtree: true, characterData: true });
}"""


def test_web_chat_end_to_end(page: Page, stack: Stack, tmp_path: Path) -> None:
    url = _ui_url(stack)
    response = page.goto(url)
    assert response is not None and response.status == 200, (
        f"GET {url} -> {response.status if response else None}: is add_web_routes wired into create_app?"
    )
    # -- without a key: the gateway refuses the WebSocket, and the page says how to sign in
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#signin")).to_contain_text("Sign in")
    expect(page.locator("#signin")).to_contain_text("make up")
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "refused")
    # -- a wrong key: the same
    page.goto(f"{url}#key=lrk_nosuchkey_0000000000000000000000000000")
    # The page takes the key out of the address bar once it has read it; wait for that before the next
    # navigation, or its replaceState could erase the next fragment before that hashchange is handled.
    page.wait_for_function("() => !location.hash.includes('key=')")
    expect(page.locator("#signin")).to_contain_text("Sign in")
    # -- opened as `make up` prints it: the key in the fragment
    key = stack_keys(stack).alpha
    remember(key)
    page.goto(f"{url}#key={key}")
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "open")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#signin")).to_be_hidden()
    assert key not in page.url

    # -- upload a Markdown file through the labelled file input
    doc_file = tmp_path / "axolotl-notes.md"
    doc_file.write_text(TOPIC_MD, encoding="utf-8")
    page.get_by_label("File to upload").set_input_files(str(doc_file))
    page.get_by_role("button", name="Upload and index the chosen files").click()
    upload = page.locator(".upload").first
    expect(upload).to_have_class(has_class("done|failed"), timeout=LONG_MS)
    upload_status = upload.locator(".upload-status").inner_text()
    if "failed" in (upload.get_attribute("class") or ""):
        pytest.fail(f"upload flow (upload_url -> PUT -> ingest_object) failed in the page: {upload_status}")
    assert "Indexed" in upload_status and "chunk" in upload_status, upload_status

    # -- a file the service refuses: its error code and message are shown with the upload
    bad_file = tmp_path / "diagram.xyz"
    bad_file.write_bytes(b"not a document")
    page.get_by_label("File to upload").set_input_files(str(bad_file))
    page.get_by_role("button", name="Upload and index the chosen files").click()
    bad = page.locator(".upload", has_text="diagram.xyz")
    expect(bad).to_have_class(has_class("failed"), timeout=LONG_MS)
    expect(bad.locator(".upload-status")).to_contain_text("unsupported_type: unsupported file type '.xyz'")

    # -- the document list shows it (list_documents may not be served yet: then the test goes on with the
    # rest and fails at the end, naming what was blocked)
    blocked: list[str] = []
    doc_item = page.locator("#document-list .document", has_text=TOPIC_TITLE)
    list_error = page.locator("#documents-status.error")
    expect(doc_item.or_(list_error)).to_be_visible(timeout=LONG_MS)
    if list_error.count():
        blocked.append(f"document list (list_documents): the page shows {list_error.inner_text()!r}")
    else:
        expect(doc_item).to_have_count(1)
        expect(doc_item.locator(".badge")).to_have_text("indexed")

    # -- ask about it: the answer streams in
    page.evaluate(WATCH_ANSWER)
    question = page.get_by_role("textbox", name="Your question")
    question.fill(QUESTION)
    question.press("Enter")
    answer = page.locator(".msg-assistant").last
    expect(answer).to_have_class(has_class("streaming"))
    expect(answer).not_to_have_class(has_class("streaming"), timeout=LONG_MS)
    expect(answer.locator(".msg-error")).to_be_hidden()
    lengths: list[int] = page.evaluate("window.__answerLengths")
    growing = sorted({n for n in lengths if n > 0})
    # The chat function posts the first token at once and coalesces the rest (RAG_TOKEN_FLUSH_MS), so a short
    # answer from the fast test model arrives in as few as two frames: it must still grow, not appear whole.
    assert len(growing) >= 2, f"the answer did not stream (it appeared in one piece): {lengths[:20]}"
    assert lengths == sorted(lengths), "the answer text shrank while streaming"
    answer_text = answer.locator(".answer-text").inner_text()
    assert answer_text.strip(), "empty answer"

    # -- its source, with the document's title, in the sources panel
    source = page.locator("#sources-list .source").first
    expect(source.locator(".source-title")).to_have_text(TOPIC_TITLE, timeout=SHORT_MS)
    expect(source.locator(".source-n")).to_have_text("[1]")
    expect(source.locator(".source-excerpt")).to_contain_text("blastema")
    expect(source.locator(".source-meta")).to_contain_text("distance 0.")
    expect(answer.locator("button.citation").first).to_contain_text(TOPIC_TITLE)
    conversation_id = page.evaluate("localStorage.getItem('localrag.conversation_id')")
    assert conversation_id, "the conversation id was not kept in localStorage"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-chat.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000, "the screenshot looks empty"

    # -- reload: the conversation comes back (history), sources included
    page.reload()
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "open")
    expect(page.locator(".msg-user .msg-text")).to_have_text([QUESTION], timeout=LONG_MS)
    restored = page.locator(".msg-assistant").last
    expect(restored.locator(".answer-text")).to_have_text(answer_text)
    expect(page.locator("#sources-list .source-title").first).to_have_text(TOPIC_TITLE)
    assert page.evaluate("localStorage.getItem('localrag.conversation_id')") == conversation_id

    # -- delete the document: it leaves the list
    if not blocked:
        doc_item = page.locator("#document-list .document", has_text=TOPIC_TITLE)
        expect(doc_item).to_have_count(1, timeout=LONG_MS)
        page.get_by_role("button", name=f"Delete {TOPIC_TITLE}").click()
        expect(doc_item).to_have_count(0, timeout=LONG_MS)
        expect(page.locator("#documents-status")).not_to_contain_text("Couldn't")
        expect(page.locator("#documents-notice")).to_contain_text(f"Deleted “{TOPIC_TITLE}”")
    else:
        blocked.append("delete from the document list (needs the list)")

    # -- "New conversation" forgets it
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator(".msg-user")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('localrag.conversation_id')") is None
    assert not blocked, "blocked: " + "; ".join(blocked)


def test_a_200_turn_conversation_restores(page: Page, stack: Stack) -> None:
    """Its history comes in several pages (each under 128 KB): the page follows them all, in order."""
    keys = stack_keys(stack)
    conversation, _ = seed_conversation(stack, "alpha", keys.principal(keys.alpha), 200)
    remember(keys.alpha)
    page.goto(f"{_ui_url(stack)}#key={keys.alpha}")
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "open")
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))))
    page.evaluate(f"localStorage.setItem('localrag.conversation_id', {json.dumps(conversation)})")
    page.reload()
    users = page.locator(".msg-user .msg-text")
    expect(users).to_have_count(200, timeout=LONG_MS)
    expect(page.locator(".msg-assistant .answer-text")).to_have_count(200)
    expect(users.first).to_have_text("Question number 0?")
    expect(users.last).to_have_text("Question number 199?")
    expect(page.locator(".msg-assistant .answer-text").last).to_contain_text("Answer number 199.")
    histories = [f for f in frames if '"type": "history"' in f or '"type":"history"' in f]
    assert len(histories) > 1, "the conversation came in one page: it does not test paging"
    assert max(len(f.encode()) for f in histories) <= 128 * 1024
