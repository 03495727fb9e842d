"""The ``localrag`` command line, run as a real subprocess against the real five-service stack.

The stack's LLM is a tiny random-weight GGUF: its answers are gibberish, but they stream like real
ones. Retrieval is real (MiniLM), so which sources come back is meaningful.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest

from shared.client.cli import build_document, build_parser, decode_text, discover, fallback_title
from shared.formats import format_for
from shared.protocol import MAX_MESSAGE_BYTES, SERVER_MESSAGE, History, SearchResult, StreamEnd
from shared.stack import Stack
from tests.conftest import TIMEOUT_FACTOR, StackFactory, stack_keys
from tests.support.auth import default_key
from tests.support.paths import ROOT
from tests.support.procs import port_of, refusing_port

MAX_DISTANCE = "0.7"  # see test_e2e: related texts sit at ~0.3-0.4, unrelated ones at ~0.85+

VOLCANO_MD = """\
# Volcanoes

A volcano forms where molten rock called magma rises through the Earth's crust. When pressure from
dissolved gases builds up, the volcano erupts, sending lava, ash and volcanic gases into the air.
Most volcanoes sit along tectonic plate boundaries, such as the Pacific Ring of Fire.
"""
SOURDOUGH_TXT = """\
Sourdough bread is leavened with a starter culture of wild yeast and lactic acid bacteria. Mix flour,
water and salt with the starter, let the dough ferment slowly for many hours, shape it, and bake it
in a very hot oven until the crust is dark and crisp.
"""


# ---------------------------------------------------------------------- helpers


def run_cli(url: str, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAG_URL", "LOCALRAG_DEBUG", "RAG_API_KEY", "RAG_AUTH")}
    key = default_key(url)  # tenant alpha's first key of the stack at url, as RAG_API_KEY
    if key is not None:
        env["RAG_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "--url", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout * TIMEOUT_FACTOR,
        cwd=ROOT,
        env=env,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def json_lines(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    for line in lines:
        SERVER_MESSAGE.validate_python(line)  # every line is a documented protocol message
    return lines


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def failed(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(start_stack: StackFactory) -> Stack:
    return start_stack("cli", RAG_MAX_DISTANCE=MAX_DISTANCE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "notes").mkdir()
    (root / "volcanoes.md").write_text(VOLCANO_MD)
    (root / "notes" / "sourdough.txt").write_text(SOURDOUGH_TXT)
    (root / "photo.bin").write_bytes(bytes(range(256)) * 4)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.md").write_text("# Not ingested\n\nHidden folders are ignored.")
    return root


@pytest.fixture(scope="module")
def ingested(stack: Stack, corpus: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(stack.ws_url, "ingest", str(corpus))


# ---------------------------------------------------------------------- ingest


def test_ingest_folder(ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    assert re.search(r"^2 documents ingested \((\d+) chunks\), 1 skipped, 0 failed$", ingested.stdout, re.M), (
        ingested.stdout
    )
    assert "as volcanoes.md (" in ingested.stdout and "as notes:sourdough.txt (" in ingested.stdout
    assert "photo.bin: unsupported format .bin" in ingested.stderr
    assert "secret" not in ingested.stdout + ingested.stderr


def test_titles_and_ids_reach_the_index(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    out = ok(run_cli(stack.ws_url, "--json", "search", "volcano eruption and bread dough", "--max-distance", "2"))
    (line,) = json_lines(out.stdout)
    result = SearchResult.model_validate(line)
    titles = {s.doc_id: s.title for s in result.results}
    assert titles["volcanoes.md"] == "Volcanoes"  # the markdown heading
    assert titles["notes:sourdough.txt"] == "sourdough"  # the file stem
    assert all((s.source or "").endswith(s.doc_id.replace(":", "/")) for s in result.results)


def test_ingest_uploads_large_files_pdfs_and_html(stack: Stack, tmp_path: Path) -> None:
    from tests.stack.test_documents import make_image_only_pdf, make_pdf

    # Above the message limit as a file (> 2 x 128 KB): uploaded without trying a message.
    (tmp_path / "big.txt").write_text("understanding " * (2 * MAX_MESSAGE_BYTES // 14 + 10))
    # Just under the limit as a file, just over it as a JSON message: caught by the exact size check, uploaded.
    (tmp_path / "edge.txt").write_text("glacier " * ((MAX_MESSAGE_BYTES - 100) // 8))
    (tmp_path / "fits.md").write_text("Glaciers\n========\n\nGlaciers are slow rivers of ice carving valleys.\n")
    (tmp_path / "blank.txt").write_text("   \n")
    (tmp_path / "reef.pdf").write_bytes(make_pdf(["Coral reefs are built by tiny animals called polyps."]))
    (tmp_path / "page.html").write_text("<title>Moss</title><nav>menu</nav><p>Moss grows on the north side.</p>")
    (tmp_path / "scan.pdf").write_bytes(make_image_only_pdf())
    r = failed(run_cli(stack.ws_url, "ingest", str(tmp_path)))
    assert re.search(r"^error: no_text_layer: .*scan\.pdf: .*text layer", r.stderr, re.M), r.stderr
    assert "blank.txt: empty" in r.stderr
    assert re.search(r"^5 documents ingested \((\d+) chunks\), 1 skipped, 1 failed$", r.stdout, re.M), r.stdout
    found = ok(run_cli(stack.ws_url, "search", "coral polyps build reefs"))
    assert "(reef.pdf, chunk 0," in found.stdout, found.stdout
    found = ok(run_cli(stack.ws_url, "--json", "search", "glacier glacier", "--top-k", "50", "--max-distance", "2"))
    assert "edge.txt" in {s["doc_id"] for s in json_lines(found.stdout)[0]["results"]}, found.stdout
    found = ok(run_cli(stack.ws_url, "--json", "search", "understanding", "--top-k", "50", "--max-distance", "2"))
    assert "big.txt" in {s["doc_id"] for s in json_lines(found.stdout)[0]["results"]}, found.stdout


def test_markdown_is_split_by_headings_whether_batched_or_uploaded(stack: Stack, tmp_path: Path) -> None:
    """Regression: small .md files (sent in an ingest_batch message) were chunked as plain text, a large one
    (uploaded) by headings. Both now reach the server's Markdown parser: chunks carry their heading path."""
    head = "---\ntitle: Apiary field guide\n---\n# Beekeeping\n\n## Hives\n\n"
    for name in ("small-a.md", "small-b.md"):
        (tmp_path / name).write_text(head + "Honey bees store nectar in wax combs inside the hive.\n")
    (tmp_path / "large.md").write_text(head + "administration " * (2 * MAX_MESSAGE_BYTES // 15 + 10))
    r = ok(run_cli(stack.ws_url, "--json", "ingest", str(tmp_path)))
    replies = json_lines(r.stdout)
    assert sorted(m["type"] for m in replies) == ["ingest_batch_result", "ingest_result"], replies
    try:
        for query, doc_ids in (
            ("honey bees wax combs", {"small-a.md", "small-b.md"}),
            ("administration", {"large.md"}),
        ):
            found = ok(run_cli(stack.ws_url, "--json", "search", query, "--top-k", "50", "--max-distance", "2"))
            hits = [s for s in json_lines(found.stdout)[0]["results"] if s["doc_id"] in doc_ids]
            assert {s["doc_id"] for s in hits} == doc_ids, found.stdout
            assert all(s["heading"] == "Beekeeping > Hives" and s["title"] == "Apiary field guide" for s in hits), hits
    finally:  # the stack is the module's: leave its index as it was
        for doc_id in ("small-a.md", "small-b.md", "large.md"):
            ok(run_cli(stack.ws_url, "delete", doc_id))


def test_ingest_many_files_concurrently(stack: Stack, tmp_path: Path) -> None:
    # HTML files are uploaded (upload_url, PUT, ingest_object), one by one: with 8 in flight, more than the
    # gateway allows per connection (4), throttled requests are retried.
    for i in range(12):
        (tmp_path / f"bike-{i:02d}.html").write_text(
            f"<p>Bicycle maintenance note {i}: oil the chain and check tyre pressure.</p>"
        )
    r = ok(run_cli(stack.ws_url, "ingest", "-j", "8", str(tmp_path)))
    assert re.search(r"^12 documents ingested \(12 chunks\), 0 skipped, 0 failed$", r.stdout, re.M), r.stdout
    r = ok(run_cli(stack.ws_url, "--json", "ingest", str(tmp_path / "bike-00.html")))
    (line,) = json_lines(r.stdout)
    assert line["type"] == "ingest_result" and line["doc_id"] == "bike-00.html" and line["replaced_chunks"] == 1


def test_small_text_files_go_in_batches(stack: Stack, tmp_path: Path) -> None:
    for i in range(230):
        (tmp_path / f"note-{i:03d}.txt").write_text(f"Field note {i}: the heron {i} waded through the reeds at dawn.")
    (tmp_path / "blank.md").write_text("\n")
    r = ok(run_cli(stack.ws_url, "--json", "ingest", str(tmp_path)))
    replies = json_lines(r.stdout)
    # 230 documents in three messages (at most 100 each), each a batch reply listing every file.
    assert [m["type"] for m in replies] == ["ingest_batch_result"] * 3, replies
    assert sorted(len(m["results"]) for m in replies) == [30, 100, 100]
    ids = sorted(item["doc_id"] for m in replies for item in m["results"])
    assert ids == [f"note-{i:03d}.txt" for i in range(230)]
    assert all(item["status"] == "ingested" and item["chunks"] == 1 for m in replies for item in m["results"])
    assert "230 documents ingested (230 chunks), 1 skipped, 0 failed" in r.stderr
    found = ok(run_cli(stack.ws_url, "--json", "search", "heron 117 waded through the reeds", "--top-k", "1"))
    assert json_lines(found.stdout)[0]["results"][0]["doc_id"] == "note-117.txt"
    # Human output: a line per file, as for single messages.
    r = ok(run_cli(stack.ws_url, "ingest", str(tmp_path / "note-000.txt"), str(tmp_path / "note-001.txt")))
    assert "ingested " in r.stdout and "as note-001.txt (1 chunk, replacing 1)" in r.stdout, r.stdout


# ---------------------------------------------------------------------- ask, history, search, delete


def test_ask_streams_the_answer_then_sources(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    r = ok(run_cli(stack.ws_url, "ask", "How do volcanoes erupt?"))
    answer, sep, sources = r.stdout.partition("\nSources:\n")
    assert sep, r.stdout
    assert answer.strip()  # the (gibberish) streamed answer
    assert re.search(r"^  \[1\] Volcanoes \(volcanoes\.md, chunk 0, distance 0\.\d\d\)$", sources, re.M), sources
    assert "magma rises" in sources  # the excerpt
    assert "sourdough" not in sources
    assert re.search(r"^conversation: \S+ \(continue with --conversation \S+\)$", r.stderr, re.M), r.stderr


def test_ask_json_then_history_and_follow_up(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    r = ok(run_cli(stack.ws_url, "--json", "ask", "How do volcanoes erupt?", "--top-k", "3"))
    lines = json_lines(r.stdout)
    types = [m["type"] for m in lines]
    assert types[0] == "stream_start" and types[-1] == "stream_end" and set(types[1:-1]) == {"token"}, types
    assert len({m["request_id"] for m in lines}) == 1
    end = StreamEnd.model_validate(lines[-1])
    assert end.answer == "".join(m["text"] for m in lines[1:-1])
    assert "volcanoes.md" in {s.doc_id for s in end.sources}
    conversation = end.conversation_id

    h = ok(run_cli(stack.ws_url, "history", conversation))
    assert f"conversation {conversation}: 2 messages" in h.stdout
    assert "user:\n  How do volcanoes erupt?" in h.stdout and "assistant:" in h.stdout
    assert "sources: [1] volcanoes.md chunk 0" in h.stdout

    # Options may also follow the command.
    r2 = ok(run_cli(stack.ws_url, "ask", "Where are most of them?", "--conversation", conversation, "--json"))
    assert json_lines(r2.stdout)[-1]["conversation_id"] == conversation
    h = ok(run_cli(stack.ws_url, "--json", "history", conversation))
    (line,) = json_lines(h.stdout)
    history = History.model_validate(line)
    assert [m.role for m in history.messages] == ["user", "assistant", "user", "assistant"]
    assert history.messages[1].content == end.answer


def test_search(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    r = ok(run_cli(stack.ws_url, "search", "sourdough starter and wild yeast"))
    assert re.search(r"^1 result within distance 0\.70:$", r.stdout, re.M), r.stdout
    assert "[1] sourdough (notes:sourdough.txt, chunk 0, distance 0." in r.stdout
    assert "volcanoes.md" not in r.stdout
    r = ok(run_cli(stack.ws_url, "search", "sourdough", "--max-distance", "0"))
    assert "no results within distance 0.00" in r.stdout


def test_delete(stack: Stack, tmp_path: Path) -> None:
    doc = tmp_path / "lighthouses.txt"
    doc.write_text("Lighthouses guide ships with a rotating beam of light from a tall tower on the coast.")
    ok(run_cli(stack.ws_url, "ingest", str(doc)))
    r = ok(run_cli(stack.ws_url, "delete", "lighthouses.txt"))
    assert r.stdout.strip() == "deleted lighthouses.txt (1 chunk)"
    r = ok(run_cli(stack.ws_url, "search", "lighthouse beam", "--max-distance", "2", "--top-k", "100"))
    assert "lighthouses.txt" not in r.stdout
    r = failed(run_cli(stack.ws_url, "delete", "lighthouses.txt", "--json"))
    assert "error: document_not_found: " in r.stderr
    assert json_lines(r.stdout)[0]["code"] == "document_not_found"  # --json: the error message itself


# ---------------------------------------------------------------------- errors


def test_unreachable_gateway() -> None:
    with refusing_port() as dead:
        url = f"ws://127.0.0.1:{port_of(dead)}/local"
        for args in (["search", "anything"], ["ask", "anything"], ["--json", "history", "c"]):
            r = failed(run_cli(url, *args, timeout=60))
            assert f"error: connection_failed: cannot connect to {url}: is `make up` running?" in r.stderr, r.stderr
            assert r.stdout == ""


def test_unreachable_gateway_during_ingest(corpus: Path) -> None:
    with refusing_port() as dead:
        url = f"ws://127.0.0.1:{port_of(dead)}/local"
        r = failed(run_cli(url, "ingest", str(corpus), timeout=60))
    assert f"cannot connect to {url}" in r.stderr


def test_wrong_stage_and_bad_url(stack: Stack) -> None:
    r = failed(run_cli(stack.ws_url.replace("/local", "/nope"), "search", "x"))
    assert "error: connection_failed: " in r.stderr and "HTTP 404" in r.stderr
    r = failed(run_cli("http//nope", "search", "x"))
    assert "error: invalid_url: " in r.stderr


def test_history_of_an_unknown_conversation(stack: Stack) -> None:
    r = failed(run_cli(stack.ws_url, "history", "no-such-conversation"))
    assert re.match(r"^error: unknown_conversation: ", r.stderr), r.stderr


def test_invalid_arguments_are_reported_not_sent(stack: Stack) -> None:
    r = failed(run_cli(stack.ws_url, "ask", "q", "--top-k", "51"))
    assert "error: invalid_request: top_k" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "ask"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60 * TIMEOUT_FACTOR,
    )
    assert r.returncode == 2 and "usage:" in r.stderr  # argparse's own usage error


# ---------------------------------------------------------------------- interactive chat


def test_chat_repl(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    r = ok(run_cli(stack.ws_url, "chat", stdin="How do volcanoes erupt?\n/sources\n/quit\nnot asked\n"))
    answer, sep, sources = r.stdout.partition("Sources:\n")
    assert sep and answer.strip(), r.stdout
    assert "(volcanoes.md, chunk 0, distance 0." in sources
    assert "1 source: /sources to list" in r.stderr


def test_chat_repl_keeps_the_conversation_until_new(stack: Stack, ingested: subprocess.CompletedProcess[str]) -> None:
    ok(ingested)
    # No /quit: end of input ends the session too.
    stdin = "How do volcanoes erupt?\n\nWhat about lava?\n/new\nHow is sourdough made?\n"
    r = ok(run_cli(stack.ws_url, "--json", "chat", stdin=stdin))
    ends = [StreamEnd.model_validate(m) for m in json_lines(r.stdout) if m["type"] == "stream_end"]
    assert len(ends) == 3
    assert ends[0].conversation_id == ends[1].conversation_id != ends[2].conversation_id
    assert [s.doc_id for s in ends[2].sources] == ["notes:sourdough.txt"]


def test_ctrl_c_exits_130_quietly(stack: Stack) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.client.cli", "--url", stack.ws_url, "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "RAG_API_KEY": stack_keys(stack).alpha},
    )
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 60 * TIMEOUT_FACTOR
    while b"/quit" not in seen and time.monotonic() < deadline:  # the banner: connected, reading input
        if select.select([proc.stderr], [], [], 1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    assert b"/quit" in seen, seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30 * TIMEOUT_FACTOR)
    assert proc.returncode == 130, (out, seen + err)
    assert b"Traceback" not in err and b"Error" not in err


# ---------------------------------------------------------------------- pure helpers (no I/O)


def test_fallback_title_is_the_stem() -> None:
    assert fallback_title(PurePosixPath("x/sourdough.txt")) == "sourdough"
    assert fallback_title(PureWindowsPath(r"x\notes.md")) == "notes"
    assert fallback_title(PurePosixPath(".profile")) == ".profile"


def test_decode_text() -> None:
    assert decode_text(b"\xef\xbb\xbf# Caf\xc3\xa9\r\nbody\r") == "# Caf\u00e9\nbody\n"
    with pytest.raises(UnicodeDecodeError):
        decode_text(b"\xff\xfe not utf-8")


def test_build_document() -> None:
    doc = build_document(Path("docs/a/b.md"), Path("docs"), "# B\n\ntext", format_for("b.md"))
    assert (doc.id, doc.title, doc.format, doc.metadata) == ("a:b.md", "b", "markdown", {})
    assert doc.source is not None and doc.source.endswith("docs/a/b.md")


def test_discover(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "same.md").write_text("# One")
    (tmp_path / "two" / "same.md").write_text("# Two")
    (tmp_path / "one" / "x.pdf").write_bytes(b"%PDF")
    (tmp_path / "one" / "y.bin").write_bytes(b"\x00")
    (tmp_path / "one" / ".git").mkdir()
    (tmp_path / "one" / ".git" / "HEAD.txt").write_text("hidden")
    found, outcomes = discover([tmp_path / "one", tmp_path / "one" / "same.md", tmp_path / "two", tmp_path / "missing"])
    assert [(c.path.name, c.doc_id) for c in found] == [("same.md", "same.md"), ("x.pdf", "x.pdf")]
    by_status = {(o.path.name, o.status, o.code) for o in outcomes}
    assert by_status == {
        ("y.bin", "skipped", ""),  # unsupported
        ("missing", "failed", "not_found"),
        ("same.md", "failed", "duplicate_id"),  # two/same.md would overwrite one/same.md
    }


def test_options_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_URL", "ws://from-env:1/local")
    args = build_parser().parse_args(["ask", "q"])
    assert (args.url, args.json, args.question) == ("ws://from-env:1/local", False, "q")
    args = build_parser().parse_args(["--url", "ws://a:1/s", "--json", "search", "q", "--top-k", "3"])
    assert (args.url, args.json, args.top_k) == ("ws://a:1/s", True, 3)
    args = build_parser().parse_args(["search", "q", "--json", "--url", "ws://b:1/s", "--timeout", "5"])
    assert (args.url, args.json, args.timeout) == ("ws://b:1/s", True, 5.0)
    args = build_parser().parse_args(["ingest", "a", "b"])
    assert args.paths == [Path("a"), Path("b")] and args.concurrency == 4
