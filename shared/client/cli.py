"""``localrag``: the command-line client of the gateway.

    localrag ingest notes/ README.md        # .txt, .md, .pdf, .html files; folders recursively
    localrag ask "How do volcanoes erupt?"  # streams the answer, then its sources
    localrag chat                           # interactive: /sources, /new, /quit
    localrag search "volcano"
    localrag list                           # every document: id, status, chunks, title
    localrag history CONVERSATION_ID
    localrag delete DOC_ID
    localrag keys create --tenant acme --name ci  # prints the new API key, once
    localrag keys list
    localrag keys revoke KEY_ID
    localrag doctor [--repair] [--json]     # raw documents vs index: drift found (and repaired)
    localrag calibrate [--probes 100]       # a RAG_MAX_DISTANCE for your corpus, and what it costs

What a file is comes from the one format table (``shared.formats``). Small .txt/.md files are packed
into ``ingest_batch`` messages (up to 100 documents within the 128 KB message limit; the server embeds
and indexes each batch in one pass); a larger text file goes in its own ``ingest`` message; each is sent
with its format, so the server parses a Markdown file the same way in a message as uploaded (sections by
heading, its title). PDFs, HTML pages and files too large for a WebSocket message are uploaded:
``upload_url``, an HTTP PUT of the bytes, then ``ingest_object`` (the server parses them: PDF pages,
Markdown/HTML headings). A file's document id is its path under the folder given, ``/`` -> ``:``
(``shared.doc_ids``).

The gateway URL is --url, else $RAG_URL, else ws://127.0.0.1:8000/local. The API key is --api-key, else
$RAG_API_KEY, else the key file $RAG_API_KEY_FILE (default data/local-api-key, written by ``make up``; refused
if group or others may read it). ``keys`` manages the API keys in the documents store itself
($RAG_DOCUMENTS_URI, a folder or s3://...), not through the gateway. With --json every protocol
message received is printed as one JSON line instead of the human-readable output (for scripts).
Errors are printed to stderr as ``error: <code>: <message>`` with exit code 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal, cast

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from shared.api_keys import ApiKey, KeyFileError, KeyStore, UnknownKeyId
from shared.client.ws_client import DEFAULT_TIMEOUT, DEFAULT_URL, RagClient, RagClientError, find_api_key
from shared.doc_ids import doc_id_for
from shared.formats import FileFormat, find_format
from shared.protocol import (
    MAX_BATCH_DOCUMENTS,
    MAX_MESSAGE_BYTES,
    Document,
    ErrorCode,
    HistoryMessage,
    Source,
    StreamEnd,
    TextFormat,
    Token,
    describe_validation_error,
)

DEFAULT_CONCURRENCY = 4
# JSON bytes of the documents packed into one ingest_batch message (the rest of 128 KB is headroom).
BATCH_BYTES = MAX_MESSAGE_BYTES - 8 * 1024
EXCERPT_CHARS = 240
# Errors after which going on is pointless: every later request would fail the same way.
FATAL_CODES = frozenset(
    {
        RagClientError.CONNECTION_FAILED,
        RagClientError.INVALID_URL,
        RagClientError.UNAUTHORIZED,
        RagClientError.FORBIDDEN,
    }
)


# ====================================================================== documents from files

# Larger files of an inline format are uploaded rather than sent in a message. For plain text the JSON
# message is at least as large as the file, so anything much above the message limit cannot fit.
MAX_INLINE_FILE_BYTES = 2 * MAX_MESSAGE_BYTES


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped), newlines normalized to \\n. Raises UnicodeDecodeError."""
    return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


def fallback_title(path: PurePath) -> str:
    """The title of a file whose format gives none (or that has none): its stem."""
    return (path.stem or path.name)[:1024]


def build_document(path: Path, root: Path, text: str, fmt: FileFormat) -> Document:
    """A protocol Document for a file of an inline format: its text, sent with its format so that the
    server parses it as it would the uploaded file (raises pydantic.ValidationError for an invalid id,
    say). ``title`` is the fallback; a title the format finds in the text (Markdown) comes first."""
    if not fmt.inline:
        raise ValueError(f"{fmt.name} files are uploaded, not sent as text")
    source = path.resolve().as_posix()
    return Document(
        id=doc_id_for(path.relative_to(root)),
        title=fallback_title(path),
        text=text,
        format=cast(TextFormat, fmt.name),
        source=source if len(source) <= 1024 else None,
    )


@dataclass(frozen=True)
class Candidate:
    path: Path
    root: Path  # document ids are relative to this folder
    fmt: FileFormat

    @property
    def doc_id(self) -> str:
        return doc_id_for(self.path.relative_to(self.root))


Status = Literal["ingested", "skipped", "failed"]


@dataclass
class Outcome:
    path: Path
    status: Status
    code: str = ""
    message: str = ""
    doc_id: str | None = None
    chunks: int = 0
    replaced_chunks: int = 0
    reply: BaseModel | None = None  # the server's ingest_result or error message


def discover(paths: Iterable[Path]) -> tuple[list[Candidate], list[Outcome]]:
    """Files to ingest under ``paths`` (folders recursively, hidden entries ignored), plus the
    outcomes already known: unsupported formats skipped, missing paths and id clashes failed."""
    candidates: list[Candidate] = []
    outcomes: list[Outcome] = []

    def consider(path: Path, root: Path) -> None:
        fmt = find_format(path.name)
        if fmt is None:
            outcomes.append(Outcome(path, "skipped", message=f"unsupported format {path.suffix or '(no extension)'}"))
        else:
            candidates.append(Candidate(path, root, fmt))

    for given in paths:
        if given.is_dir():
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        consider(Path(dirpath) / name, given)
        elif given.is_file():
            consider(given, given.parent)
        else:
            what = "no such file or directory" if not given.exists() else "not a regular file or folder"
            outcomes.append(Outcome(given, "failed", code="not_found", message=what))

    unique: list[Candidate] = []
    seen_paths: set[Path] = set()
    seen_ids: dict[str, Path] = {}
    for c in candidates:
        real = c.path.resolve()
        if real in seen_paths:
            continue  # the same file named twice
        seen_paths.add(real)
        first = seen_ids.setdefault(c.doc_id, c.path)
        if first != c.path:
            outcomes.append(
                Outcome(c.path, "failed", code="duplicate_id", message=f"document id {c.doc_id!r} is also {first}")
            )
            continue
        unique.append(c)
    return unique, outcomes


async def ingest_file(client: RagClient, c: Candidate) -> Outcome:
    """Load one file and ingest it: in an ingest message when it is text that fits, else uploaded
    (upload_url, PUT, ingest_object). Only errors in FATAL_CODES propagate."""
    try:
        size = c.path.stat().st_size
        if size == 0:
            return Outcome(c.path, "skipped", message="empty")
        if not c.fmt.inline:
            return await upload_file(client, c, size)
        data = await asyncio.to_thread(c.path.read_bytes)
    except OSError as exc:
        return Outcome(c.path, "failed", "unreadable", exc.strerror or str(exc))
    try:
        text = decode_text(data)
    except UnicodeDecodeError:
        return Outcome(c.path, "failed", "not_utf8", "not UTF-8 text")
    if not text.strip():
        return Outcome(c.path, "skipped", message="empty")
    try:
        document = build_document(c.path, c.root, text, c.fmt)
    except ValidationError as exc:
        return Outcome(c.path, "failed", "invalid_document", describe_validation_error(exc.errors()))
    if len(data) > MAX_INLINE_FILE_BYTES:
        return await upload_file(client, c, len(data), data=data)
    try:
        result = await client.ingest(document)
    except RagClientError as exc:
        if exc.code in FATAL_CODES:
            raise
        if exc.code == ErrorCode.MESSAGE_TOO_LARGE:  # as a JSON message it does not fit: upload it
            return await upload_file(client, c, len(data), data=data)
        return Outcome(c.path, "failed", exc.code, exc.message, doc_id=document.id, reply=exc.reply)
    return Outcome(
        c.path,
        "ingested",
        doc_id=result.doc_id,
        chunks=result.chunks,
        replaced_chunks=result.replaced_chunks,
        reply=result,
    )


@dataclass(frozen=True)
class Batchable:
    """A small text file loaded and ready to go in an ingest_batch message."""

    candidate: Candidate
    document: Document
    json_bytes: int


async def load_batchable(c: Candidate) -> Batchable | None:
    """The file as a document for a batch, or None when it needs ``ingest_file`` (not text, too large,
    empty, unreadable or invalid: that path says why)."""
    if not c.fmt.inline:
        return None
    try:
        if c.path.stat().st_size > BATCH_BYTES:
            return None
        data = await asyncio.to_thread(c.path.read_bytes)
        text = decode_text(data)
        if not text.strip():
            return None
        document = build_document(c.path, c.root, text, c.fmt)
    except (OSError, ValueError):  # UnicodeDecodeError and pydantic's ValidationError are ValueErrors
        return None
    size = len(document.model_dump_json(exclude_none=True).encode()) + 1  # as the client sends it, plus a comma
    return Batchable(c, document, size) if size <= BATCH_BYTES else None


async def ingest_batch(client: RagClient, batch: Sequence[Batchable]) -> tuple[list[Outcome], BaseModel | None]:
    """Send loaded files in one ingest_batch message (one ``ingest`` for a single file). Returns an
    outcome per file and the server's reply. Only errors in FATAL_CODES propagate."""
    if len(batch) == 1:
        return [await ingest_file(client, batch[0].candidate)], None
    try:
        result = await client.ingest_batch([b.document for b in batch])
    except RagClientError as exc:
        if exc.code in FATAL_CODES:
            raise
        return [
            Outcome(b.candidate.path, "failed", exc.code, exc.message, doc_id=b.document.id) for b in batch
        ], exc.reply
    outcomes = []
    for b, item in zip(batch, result.results, strict=True):
        if item.status == "ingested" or item.error is None:
            outcomes.append(
                Outcome(
                    b.candidate.path,
                    "ingested",
                    doc_id=item.doc_id,
                    chunks=item.chunks,
                    replaced_chunks=item.replaced_chunks,
                )
            )
        else:
            outcomes.append(
                Outcome(b.candidate.path, "failed", item.error.code, item.error.message, doc_id=item.doc_id)
            )
    return outcomes, result


async def upload_file(client: RagClient, c: Candidate, size: int, *, data: bytes | None = None) -> Outcome:
    """upload_url (refused early when the type or size is not accepted), PUT the bytes, ingest_object.

    The server parses the file and takes its title from it; a file whose format has no title of its own
    gets the same fallback title as in a message."""
    doc_id = c.doc_id
    title = None if c.fmt.titled else fallback_title(c.path)
    try:
        ticket = await client.upload_url(c.path.name, size, c.fmt.content_type)
        if data is None:
            data = await asyncio.to_thread(c.path.read_bytes)
        await client.put_upload(ticket, data)
        result = await client.ingest_object(ticket.key, doc_id=doc_id, title=title)
    except OSError as exc:
        return Outcome(c.path, "failed", "unreadable", exc.strerror or str(exc), doc_id=doc_id)
    except RagClientError as exc:
        if exc.code in FATAL_CODES:
            raise
        return Outcome(c.path, "failed", exc.code, exc.message, doc_id=doc_id, reply=exc.reply)
    return Outcome(
        c.path,
        "ingested",
        doc_id=result.doc_id,
        chunks=result.chunks,
        replaced_chunks=result.replaced_chunks,
        reply=result,
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ====================================================================== output


def print_json(message: BaseModel) -> None:
    print(message.model_dump_json(), flush=True)


def print_error(code: str, message: str) -> None:
    print(f"error: {code}: {message}", file=sys.stderr, flush=True)


def _excerpt(text: str) -> str:
    return textwrap.shorten(" ".join(text.split()), EXCERPT_CHARS, placeholder=" ...")


def format_source(s: Source) -> str:
    head = f"[{s.n}] {s.title or s.doc_id} ({s.doc_id}, chunk {s.chunk}, distance {s.distance:.2f})"
    return f"{head}\n    {_excerpt(s.excerpt)}" if s.excerpt.strip() else head


def print_sources(sources: Sequence[Source], no_context: bool = False) -> None:
    if not sources:
        why = " (nothing within the max distance; answered without your documents)" if no_context else ""
        print(f"Sources: none{why}", flush=True)
        return
    print("Sources:")
    for s in sources:
        print(textwrap.indent(format_source(s), "  "))
    sys.stdout.flush()


# ====================================================================== commands


@dataclass
class Ctx:
    url: str
    json: bool
    timeout: float
    api_key: str | None = None

    def client(self) -> RagClient:
        return RagClient(self.url, timeout=self.timeout, api_key=self.api_key)


async def cmd_ingest(ctx: Ctx, args: argparse.Namespace) -> int:
    candidates, outcomes = discover(args.paths)
    counts = {"ingested": 0, "skipped": 0, "failed": 0}
    chunks = 0
    attempted = 0
    fatal: RagClientError | None = None
    # Work for the senders: a file on its own, or a batch of small text files. Bounded, so that only a
    # few batches' worth of files is in memory at a time.
    todo: asyncio.Queue[Candidate | list[Batchable] | None] = asyncio.Queue(maxsize=2 * max(1, args.concurrency))
    bar = tqdm(total=len(candidates), unit="file", desc="ingesting", file=sys.stderr, disable=None, leave=False)

    def report(o: Outcome) -> None:
        nonlocal chunks
        counts[o.status] += 1
        chunks += o.chunks
        if ctx.json and o.reply is not None:
            print_reply(o.reply)
        if o.status == "ingested" and not ctx.json:
            replaced = f", replacing {o.replaced_chunks}" if o.replaced_chunks else ""
            tqdm.write(f"ingested {o.path} as {o.doc_id} ({_plural(o.chunks, 'chunk')}{replaced})", file=sys.stdout)
        elif o.status == "skipped":
            tqdm.write(f"skipped {o.path}: {o.message}", file=sys.stderr)
        elif o.status == "failed":
            tqdm.write(f"error: {o.code}: {o.path}: {o.message}", file=sys.stderr)

    def print_reply(reply: BaseModel) -> None:
        tqdm.write(reply.model_dump_json(), file=sys.stdout)
        sys.stdout.flush()

    async def produce(senders: int) -> None:
        """Files in discovery order: small text files packed into batches, the rest one by one."""
        batch: list[Batchable] = []
        size = 0
        for c in candidates:
            if fatal is not None:
                break
            loaded = await load_batchable(c)
            if loaded is None:
                await todo.put(c)
                continue
            if batch and (len(batch) == MAX_BATCH_DOCUMENTS or size + loaded.json_bytes > BATCH_BYTES):
                await todo.put(batch)
                batch, size = [], 0
            batch.append(loaded)
            size += loaded.json_bytes
        if batch and fatal is None:
            await todo.put(batch)
        for _ in range(senders):
            await todo.put(None)

    async def send(client: RagClient) -> None:
        nonlocal fatal, attempted
        while (item := await todo.get()) is not None:
            if fatal is not None:
                continue  # drain, so that the producer never blocks
            n = 1 if isinstance(item, Candidate) else len(item)
            try:
                if isinstance(item, Candidate):
                    done, reply = [await ingest_file(client, item)], None
                else:
                    done, reply = await ingest_batch(client, item)
            except RagClientError as exc:
                fatal = exc
                continue
            attempted += n
            if ctx.json and reply is not None:
                print_reply(reply)
            for o in done:
                report(o)
            bar.update(n)

    for o in outcomes:
        report(o)
    try:
        if candidates:
            async with ctx.client() as client:
                senders = min(args.concurrency, len(candidates))
                await asyncio.gather(produce(senders), *(send(client) for _ in range(senders)))
    finally:
        bar.close()
    not_done = len(candidates) - attempted if fatal is not None else 0
    summary = (
        f"{_plural(counts['ingested'], 'document')} ingested ({_plural(chunks, 'chunk')}), "
        f"{counts['skipped']} skipped, {counts['failed']} failed" + (f", {not_done} not attempted" if not_done else "")
    )
    print(summary, file=sys.stderr if ctx.json else sys.stdout, flush=True)
    if fatal is not None:
        raise fatal
    return 1 if counts["failed"] else 0


async def stream_answer(
    ctx: Ctx, client: RagClient, question: str, conversation: str | None, args: argparse.Namespace
) -> StreamEnd:
    """Send a chat request; print the answer as it streams (or the messages, with --json)."""
    end: StreamEnd | None = None
    at_line_start = True
    try:
        stream = client.chat(question, conversation, top_k=args.top_k, max_distance=args.max_distance)
        async with contextlib.aclosing(stream):
            async for msg in stream:
                if isinstance(msg, StreamEnd):
                    end = msg
                if ctx.json:
                    print_json(msg)
                elif isinstance(msg, Token) and msg.text:
                    sys.stdout.write(msg.text)
                    sys.stdout.flush()
                    at_line_start = msg.text.endswith("\n")
    finally:
        if not at_line_start:
            print(flush=True)
    if end is None:  # the client only ends a chat stream normally at stream_end
        raise RagClientError(RagClientError.INVALID_REPLY, "the answer stream ended without stream_end")
    return end


async def cmd_ask(ctx: Ctx, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        end = await stream_answer(ctx, client, args.question, args.conversation, args)
    if not ctx.json:
        if not end.answer.strip():
            print("(the model returned an empty answer)")
        print()
        print_sources(end.sources, end.prompt == "no_context")
        print(
            f"conversation: {end.conversation_id} (continue with --conversation {end.conversation_id})",
            file=sys.stderr,
            flush=True,
        )
    return 0


class StdinLines:
    """Lines from stdin, read on a daemon thread so the event loop keeps serving the WebSocket
    while the user types. It reads the file descriptor directly: a read cut short by Ctrl-C holds no
    lock of sys.stdin that interpreter shutdown would wait for."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._buf = b""
        self._eof = False

    def _read_line(self) -> str | None:
        while b"\n" not in self._buf and not self._eof:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self._eof = True
            self._buf += chunk
        if not self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", errors="replace").rstrip("\r")

    async def readline(self, prompt: str = "") -> str | None:
        """The next line without its newline; None at end of input."""
        if prompt:
            sys.stderr.write(prompt)
            sys.stderr.flush()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def deliver(line: str | None) -> None:
            if not done.done():
                done.set_result(line)

        def run() -> None:
            try:
                line = self._read_line()
            except OSError:
                line = None
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(deliver, line)

        threading.Thread(target=run, name="stdin-reader", daemon=True).start()
        return await done


CHAT_HELP = """\
Ask a question about your documents; each answer continues the conversation.
  /sources   show the sources of the last answer
  /new       start a new conversation
  /quit      leave (or Ctrl-D)"""


async def cmd_chat(ctx: Ctx, args: argparse.Namespace) -> int:
    conversation: str | None = args.conversation
    last: StreamEnd | None = None
    lines = StdinLines()
    interactive = os.isatty(0)
    async with ctx.client() as client:
        print(f"localrag chat on {ctx.url}\n{CHAT_HELP}", file=sys.stderr, flush=True)
        while True:
            line = await lines.readline("> " if interactive else "")
            if line is None:
                if interactive:
                    print(file=sys.stderr)
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command = line.split()[0].lower()
                if command in ("/quit", "/exit", "/q"):
                    return 0
                if command == "/new":
                    conversation, last = None, None
                    print("(new conversation)", file=sys.stderr, flush=True)
                elif command == "/sources":
                    if last is None:
                        print("(no answer yet)", file=sys.stderr, flush=True)
                    else:
                        print_sources(last.sources, last.prompt == "no_context")
                elif command == "/help":
                    print(CHAT_HELP, file=sys.stderr, flush=True)
                else:
                    print(f"unknown command {command}; try /help", file=sys.stderr, flush=True)
                continue
            try:
                last = await stream_answer(ctx, client, line, conversation, args)
            except RagClientError as exc:
                if exc.code in FATAL_CODES:
                    raise
                report_error(ctx, exc)
                continue
            conversation = last.conversation_id
            if not ctx.json:
                n = len(last.sources)
                note = f"{_plural(n, 'source')}: /sources to list" if n else "no sources"
                print(f"({note})\n", file=sys.stderr, flush=True)


async def cmd_search(ctx: Ctx, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        result = await client.search(args.query, top_k=args.top_k, max_distance=args.max_distance)
    if ctx.json:
        print_json(result)
        return 0
    if not result.results:
        print(f"no results within distance {result.max_distance:.2f}")
        return 0
    print(f"{_plural(len(result.results), 'result')} within distance {result.max_distance:.2f}:")
    for s in result.results:
        print(format_source(s))
    return 0


async def cmd_calibrate(ctx: Ctx, args: argparse.Namespace) -> int:
    """Probe the corpus with its own sentences and with off-topic questions (shared/client/calibrate.py)."""
    from shared.client.calibrate import OFFTOPIC_PROBES, run, table

    offtopic: Sequence[str] = OFFTOPIC_PROBES
    if args.offtopic is not None:
        lines = (line.strip() for line in args.offtopic.read_text(encoding="utf-8").splitlines())
        offtopic = [line for line in lines if line and not line.startswith("#")]
    async with ctx.client() as client:

        async def sample(count: int, seed: int) -> tuple[int, list[tuple[str, int, str]]]:
            got = await client.sample_chunks(count, seed=seed)
            return got.total, [(c.doc_id, c.chunk, c.text) for c in got.chunks]

        async def nearest(query: str) -> float | None:
            found = await client.search(query, max_distance=2.0)
            return min((s.distance for s in found.results), default=None)

        bar = None if ctx.json or not sys.stderr.isatty() else tqdm(total=0, unit="probe", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            cal = await run(
                sample,
                nearest,
                probes=args.probes,
                offtopic=offtopic,
                seed=args.seed,
                max_miss=args.max_miss,
                max_leak=args.max_leak,
                progress=progress,
            )
        finally:
            if bar is not None:
                bar.close()
    if args.out is not None:
        args.out.write_text(json.dumps(cal.to_json(), indent=2) + "\n", encoding="utf-8")
    if ctx.json:
        print(json.dumps({k: v for k, v in cal.to_json().items() if k != "probes"}))
        return 0
    iq, oq = cal.to_json()["in_topic_quantiles"], cal.to_json()["off_topic_quantiles"]
    print(
        f"{len(cal.in_topic)} in-topic probes (a sentence of a random chunk, of {cal.chunks_total}) and "
        f"{len(cal.off_topic)} off-topic questions; nearest passage distance:"
    )
    print(f"  in-topic:  median {iq['median']:.2f}, 95th percentile {iq['p95']:.2f}, max {iq['max']:.2f}")
    if oq:
        print(f"  off-topic: median {oq['median']:.2f}, 5th percentile {oq['p05']:.2f}, min {oq['min']:.2f}")
    print()
    print(table(cal, args.current))
    print()
    print(f"recommended RAG_MAX_DISTANCE={cal.recommended}: {cal.reason}")
    print("in-topic probes quote the documents; real questions paraphrase them and sit a little further away.")
    return 0


async def cmd_history(ctx: Ctx, args: argparse.Namespace) -> int:
    """The whole conversation, every page (with --json: each history message as it arrives)."""
    messages: list[HistoryMessage] = []
    async with ctx.client() as client:
        async for page in client.history_pages(args.conversation_id):
            if ctx.json:
                print_json(page)
            messages.extend(page.messages)
    if ctx.json:
        return 0
    print(f"conversation {args.conversation_id}: {_plural(len(messages), 'message')}")
    for m in messages:
        print(f"\n[{m.created_at}] {m.role}:")
        print(textwrap.indent(m.content.strip() or "(empty)", "  "))
        if m.truncated:
            print("  (cut to fit one reply; the stored message is whole)")
        if m.sources:
            cited = "; ".join(f"[{s.n}] {s.doc_id} chunk {s.chunk} ({s.distance:.2f})" for s in m.sources)
            print(f"  sources: {cited}")
    return 0


async def cmd_list(ctx: Ctx, args: argparse.Namespace) -> int:
    """Every document, page by page (with --json: each document_list message)."""
    count = 0
    async with ctx.client() as client:
        async for page in client.list_documents_pages():
            for d in page.documents:
                if not ctx.json:
                    title = f"  {d.title}" if d.title else ""
                    print(f"{d.id}\t{d.status}\t{_plural(d.chunks, 'chunk')}{title}")
            if ctx.json:
                print_json(page)
            count += len(page.documents)
            sys.stdout.flush()
    if not ctx.json:
        print(_plural(count, "document"), file=sys.stderr)
    return 0


async def cmd_delete(ctx: Ctx, args: argparse.Namespace) -> int:
    async with ctx.client() as client:
        result = await client.delete_document(args.doc_id)
    if ctx.json:
        print_json(result)
    else:
        print(f"deleted {result.doc_id} ({_plural(result.chunks_deleted, 'chunk')})")
    return 0


# ====================================================================== API keys (the store itself)


def open_keys(args: argparse.Namespace) -> KeyStore:
    """The key store in the documents store ($RAG_DOCUMENTS_URI, or --documents-uri)."""
    from shared.settings import DocumentsSettings, RagSettings

    rag = RagSettings()
    uri = args.documents_uri or DocumentsSettings().documents_uri
    return KeyStore.open(uri, s3_endpoint_url=rag.s3_endpoint_url, region=rag.aws_region)


def _key_row(k: ApiKey) -> str:
    revoked = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
    return f"{k.key_id}  {k.tenant:<20} {k.created_at.isoformat()}  {revoked:<32} {k.name}"


async def cmd_keys_create(ctx: Ctx, args: argparse.Namespace) -> int:
    record, plaintext = open_keys(args).create(args.tenant, args.name)
    if ctx.json:
        print(json.dumps({**record.model_dump(mode="json"), "api_key": plaintext}), flush=True)
    else:
        print(
            f"created API key {record.key_id} for tenant {record.tenant}; it is shown once, store it now:",
            file=sys.stderr,
            flush=True,
        )
        print(plaintext, flush=True)
    return 0


async def cmd_keys_list(ctx: Ctx, args: argparse.Namespace) -> int:
    records = open_keys(args).list()
    if args.tenant:
        records = [r for r in records if r.tenant == args.tenant]
    if ctx.json:
        for r in records:
            print(json.dumps(r.model_dump(mode="json")), flush=True)
        return 0
    if not records:
        print("no API keys", file=sys.stderr)
        return 0
    print(f"{'KEY ID':<16}  {'TENANT':<20} {'CREATED':<25}  {'STATUS':<32} NAME")
    for r in records:
        print(_key_row(r))
    return 0


async def cmd_keys_revoke(ctx: Ctx, args: argparse.Namespace) -> int:
    try:
        record = open_keys(args).revoke(args.key_id)
    except UnknownKeyId:
        print_error("unknown_key", f"no API key has the id {args.key_id!r} (see `localrag keys list`)")
        return 1
    if ctx.json:
        print(json.dumps(record.model_dump(mode="json")), flush=True)
    else:
        print(f"revoked API key {record.key_id} (tenant {record.tenant}, {record.name or 'unnamed'})")
    return 0


# ====================================================================== doctor


DOCTOR_MODULE = "ingestion.doctor"


def doctor_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``python -m ingestion.doctor`` command line and environment for ``localrag doctor``'s options."""
    argv = [sys.executable, "-m", DOCTOR_MODULE]
    if args.repair:
        argv.append("--repair")
    if getattr(args, "json", False):
        argv.append("--json")
    if args.min_age is not None:
        argv += ["--min-age", str(args.min_age)]
    env = dict(os.environ)
    if args.documents_uri:
        env["RAG_DOCUMENTS_URI"] = args.documents_uri
    if args.lancedb_uri:
        env["RAG_LANCEDB_URI"] = args.lancedb_uri
    return argv, env


async def cmd_doctor(ctx: Ctx, args: argparse.Namespace) -> int:
    """``python -m ingestion.doctor`` in a child process: the checker needs the ingestion lambda's settings,
    chunker and embedder, which this client (shared/) does not import; its report and exit status pass
    through."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec(DOCTOR_MODULE.split(".")[0]) is None:
        print_error("doctor_unavailable", "the ingestion package is not installed here; run it where the stack runs")
        return 2
    argv, env = doctor_command(args)
    return await asyncio.to_thread(lambda: subprocess.run(argv, env=env, check=False).returncode)


# ====================================================================== arguments and main


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _add_common(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--url, --api-key, --json and --timeout, accepted before and after the command."""
    suppress = argparse.SUPPRESS
    parser.add_argument(
        "--api-key",
        default=None if top_level else suppress,
        metavar="KEY",
        help="the API key to send (default: $RAG_API_KEY, else the file $RAG_API_KEY_FILE or data/local-api-key)",
    )
    parser.add_argument(
        "--url",
        default=(os.environ.get("RAG_URL") or DEFAULT_URL) if top_level else suppress,
        help=f"the gateway's WebSocket URL (default: $RAG_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top_level else suppress,
        help="print the protocol messages received as JSON lines instead",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT if top_level else suppress,
        metavar="SECONDS",
        help=f"wait this long for each reply (default: {DEFAULT_TIMEOUT:g})",
    )


def _add_retrieval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top-k", type=_positive_int, help="retrieve at most this many passages")
    parser.add_argument(
        "--max-distance", type=float, metavar="X", help="drop passages further than this cosine distance (0-2)"
    )


Handler = Callable[[Ctx, argparse.Namespace], Coroutine[None, None, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localrag",
        description="Talk to the local RAG system: ingest documents, ask questions, search.",
    )
    _add_common(parser, top_level=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, top_level=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", parents=[common], help="ingest .txt, .md, .pdf and .html files (folders recursively)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument(
        "-j",
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"documents in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("ask", parents=[common], help="ask one question; stream the answer and its sources")
    p.add_argument("question")
    p.add_argument("--conversation", metavar="ID", help="continue this conversation")
    _add_retrieval(p)
    p.set_defaults(handler=cmd_ask)

    p = sub.add_parser("chat", parents=[common], help="interactive conversation (/sources, /new, /quit)")
    p.add_argument("--conversation", metavar="ID", help="continue this conversation")
    _add_retrieval(p)
    p.set_defaults(handler=cmd_chat)

    p = sub.add_parser("search", parents=[common], help="the passages nearest to a query, without an answer")
    p.add_argument("query")
    _add_retrieval(p)
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="recommend RAG_MAX_DISTANCE for your documents: probe them with their own sentences and with "
        "off-topic questions",
    )
    p.add_argument("--probes", type=_positive_int, default=100, help="in-topic probes (random chunks; default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample (default 0)")
    p.add_argument(
        "--max-miss",
        type=float,
        default=0.03,
        metavar="SHARE",
        help="in-topic probes the threshold may leave without passages (default 0.03)",
    )
    p.add_argument(
        "--max-leak",
        type=float,
        default=0.15,
        metavar="SHARE",
        help="off-topic questions the threshold may give passages (default 0.15)",
    )
    p.add_argument(
        "--offtopic", type=Path, metavar="FILE", help="off-topic questions, one per line (default: the built-in list)"
    )
    p.add_argument("--current", type=float, metavar="X", help="mark this threshold in the table (your current one)")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the distances and every probe as JSON")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("list", parents=[common], help="the documents: id, status, chunks, title (every page)")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("history", parents=[common], help="the messages of a conversation")
    p.add_argument("conversation_id", metavar="CONVERSATION_ID")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("delete", parents=[common], help="delete a document and its chunks")
    p.add_argument("doc_id", metavar="DOC_ID")
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser(
        "doctor",
        help="find (--repair: fix) drift between the raw documents and the index (in the stores themselves)",
        description="Runs python -m ingestion.doctor on the configured stores ($RAG_DOCUMENTS_URI, "
        "$RAG_LANCEDB_URI and the other RAG_* ingestion settings), not through the gateway. Exit status 1 "
        "when drift is found and not repaired, 2 when the store cannot be checked.",
    )
    p.add_argument("--repair", action="store_true", help="repair what is found, then check again")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON")
    p.add_argument("--min-age", type=float, metavar="SECONDS", help="leave files younger than this alone")
    p.add_argument("--documents-uri", metavar="URI", help="the documents store (default: $RAG_DOCUMENTS_URI)")
    p.add_argument("--lancedb-uri", metavar="URI", help="the index (default: $RAG_LANCEDB_URI)")
    p.set_defaults(handler=cmd_doctor, uses_gateway=False)

    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (in the documents store: $RAG_DOCUMENTS_URI)",
        description="API keys are kept hashed in the documents store under auth/keys/; a new key is shown once.",
    )
    keys_common = argparse.ArgumentParser(add_help=False)
    keys_common.add_argument(
        "--documents-uri",
        metavar="URI",
        help="the documents store (default: $RAG_DOCUMENTS_URI, else data/documents)",
    )
    keys_common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON lines")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", parents=[keys_common], help="create a key for a tenant and print it (once)")
    p.add_argument("--tenant", default="default", help="the tenant (workspace) the key belongs to (default: default)")
    p.add_argument("--name", default="", help="what the key is for (shown by list)")
    p.set_defaults(handler=cmd_keys_create, uses_gateway=False)
    p = keys_sub.add_parser("list", parents=[keys_common], help="list the keys (never their secrets)")
    p.add_argument("--tenant", help="only this tenant's keys")
    p.set_defaults(handler=cmd_keys_list, uses_gateway=False)
    p = keys_sub.add_parser("revoke", parents=[keys_common], help="revoke a key: from now on it is refused")
    p.add_argument("key_id", metavar="KEY_ID")
    p.set_defaults(handler=cmd_keys_revoke, uses_gateway=False)
    return parser


def report_error(ctx: Ctx, exc: RagClientError) -> None:
    if ctx.json and exc.reply is not None:
        print_json(exc.reply)
    print_error(exc.code, exc.message)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Ctx(url=args.url, json=args.json, timeout=args.timeout)
    handler: Handler = args.handler
    try:
        if getattr(args, "uses_gateway", True):
            ctx.api_key = find_api_key(args.api_key)
        return asyncio.run(handler(ctx, args))
    except KeyFileError as exc:
        print_error("api_key_file", str(exc))
        return 1
    except ValueError as exc:  # keys create: an invalid tenant or name
        if getattr(args, "uses_gateway", True):
            raise
        print_error("invalid_request", str(exc))
        return 1
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end the line the ^C was echoed on
        return 130
    except RagClientError as exc:
        report_error(ctx, exc)
        return 1
    except BrokenPipeError:
        # The reader went away (`localrag search x | head -1`): stop writing, quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("LOCALRAG_DEBUG"):
            raise
        print_error("unexpected", f"{type(exc).__name__}: {exc} (set LOCALRAG_DEBUG=1 for a traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
