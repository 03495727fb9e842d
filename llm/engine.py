"""llama.cpp behind an asyncio front: one generation at a time, streamed token by token, cancellable.

The model (``llama_cpp.Llama``) is loaded once per process. Generation is blocking C++ work, so it runs on
a dedicated worker thread, one generation at a time (an asyncio lock admits them in arrival order, a
thread lock guards the model). Tokens cross to the event loop through an ``asyncio.Queue`` fed with
``loop.call_soon_threadsafe``. When the consumer goes away (client disconnect, timeout, error) the
generation's cancel flag is set; the worker checks it between tokens and stops generating.

``llama_cpp`` is imported lazily (in :meth:`Engine.load`) so settings and the app factory import without it.

Usage::

    async with engine.generation(params) as gen:   # 429 ThrottlingException when the queue is full
        async for text in gen:                     # text deltas as they are produced
            ...
    gen.stop_reason, gen.input_tokens, gen.output_tokens
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from shared.aws_http import AwsError, Throttling, ValidationError
from shared.coalesce import TokenCoalescer

log = logging.getLogger(__name__)

StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


@dataclass(frozen=True)
class GenerationParams:
    """One chat generation. ``messages`` are chat-template messages: {"role": ..., "content": str}."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    # Sampling controls mapped to llama.cpp's samplers (the app fills them from the request or LLM_* settings).
    top_k: int = 40
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass
class EngineStats:
    generations_started: int = 0
    generations_completed: int = 0
    generations_cancelled: int = 0
    generations_failed: int = 0
    tokens_generated: int = 0
    # Prompt tokens llama.cpp evaluated, and those it reused from an evaluated prefix (the context as the
    # previous generation left it, or a state restored from the state cache).
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    state_cache_restores: int = 0


def common_prefix(a: Any, b: Any) -> int:
    """How many leading tokens two token sequences share."""
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    n = min(len(x), len(y))
    diff = np.flatnonzero(x[:n] != y[:n])
    return int(diff[0]) if diff.size else n


@dataclass(frozen=True)
class _Saved:
    tokens: Any  # numpy array of the evaluated tokens
    state: Any  # llama_cpp.LlamaState (its KV cache; logits left out: a restored prefix re-evaluates one token)


class StateCache:
    """Evaluated llama.cpp states (KV cache) of recent prompts and answers, least recently used evicted
    first, within ``capacity_bytes``: a conversation's follow-up restores its previous turn's state and
    evaluates only what is new, even when other conversations were answered in between.

    llama-cpp-python's own ``LlamaRAMCache`` also copies the logits buffer (n_batch x n_vocab floats, 100 MB
    for SmolLM2) with every state and does not count it; this keeps only the KV cache. A state whose tokens
    are a prefix of a newer state's (a conversation's previous turn) is dropped: the newer one serves both."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._items: OrderedDict[int, _Saved] = OrderedDict()
        self._next = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def best(self, tokens: Any) -> tuple[_Saved | None, int]:
        """The state sharing the longest prefix with ``tokens``, and that prefix's length."""
        found, best = None, 0
        for key, item in self._items.items():
            n = common_prefix(item.tokens, tokens)
            if n > best:
                found, best = key, n
        if found is None:
            return None, 0
        self._items.move_to_end(found)
        return self._items[found], best

    def put(self, tokens: Any, state: Any) -> None:
        size = int(state.llama_state_size)
        if size > self.capacity_bytes:
            return
        for key in [k for k, item in self._items.items() if common_prefix(item.tokens, tokens) == len(item.tokens)]:
            self.bytes -= int(self._items.pop(key).state.llama_state_size)
        while self._items and self.bytes + size > self.capacity_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= int(old.state.llama_state_size)
        self._items[self._next] = _Saved(tokens, state)
        self._next += 1
        self.bytes += size


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


class GenerationFailed(Exception):
    """The model failed mid-generation; the message is safe to show to clients."""


@dataclass
class _Started:
    input_tokens: int
    cached_tokens: int = 0


@dataclass
class _Done:
    stop_reason: StopReason
    output_tokens: int
    stop_sequence: str | None = None  # the stop sequence that ended it (stop_reason "stop_sequence")


@dataclass
class _Failed:
    error: BaseException


class StopMatcher:
    """Cuts generated text at the first stop sequence, holding back text that may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.matched: str | None = None  # the stop sequence found

    def feed(self, text: str) -> tuple[str, bool]:
        """Add generated text; return (text safe to emit now, whether a stop sequence was hit)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [(i, s) for s, i in ((s, self.pending.find(s)) for s in self.stops) if i >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            out, self.pending = self.pending[:at], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Engine:
    """A loaded model plus the admission queue in front of it."""

    def __init__(
        self,
        llama: Any,
        *,
        model_id: str,
        max_queue: int,
        model_path: Path | None = None,
        state_cache_bytes: int = 0,
        stream_flush_ms: float = 0.0,
    ) -> None:
        """``state_cache_bytes``: keep evaluated states of recent prompts up to this size (0: only the
        context the previous generation left, which llama.cpp reuses on its own). ``stream_flush_ms``: the
        worker hands text to the event loop at most this often (the first text at once; 0: every token)."""
        self.llama = llama
        self.stream_flush_s = max(stream_flush_ms, 0.0) / 1000.0
        self.state_cache = StateCache(state_cache_bytes) if state_cache_bytes > 0 else None
        self.model_id = model_id
        self.max_queue = max_queue
        self.model_path = model_path
        self.n_ctx = int(llama.n_ctx())
        self.stats = EngineStats()
        self._lock = asyncio.Lock()  # admission: one generation at a time, FIFO
        self._waiting = 0
        self._active: Generation | None = None
        self._thread_lock = threading.Lock()  # the model itself is not thread-safe
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-generate")
        self._formatter = self._make_formatter()

    @classmethod
    def load(
        cls,
        model_path: Path,
        *,
        model_id: str,
        max_queue: int,
        n_ctx: int,
        n_threads: int | None,
        repeat_last_n: int = 64,
        state_cache_bytes: int = 0,
        stream_flush_ms: float = 0.0,
    ) -> Engine:
        """Load the GGUF with llama.cpp (blocking: call it from a thread, once per process).

        ``n_threads`` (generation and prompt evaluation): None means every core this process may use."""
        from llama_cpp import Llama

        threads = n_threads or available_cores()
        kwargs: dict[str, Any] = {
            "n_ctx": n_ctx,
            "n_threads": threads,
            "n_threads_batch": threads,
            "last_n_tokens_size": repeat_last_n,
            "verbose": False,
        }
        started = time.monotonic()
        llama = Llama(model_path=str(model_path), **kwargs)
        log.info(
            "loaded %s in %.1fs (n_ctx=%d, chat_format=%s, threads=%d)",
            model_path,
            time.monotonic() - started,
            llama.n_ctx(),
            llama.chat_format,
            threads,
        )
        return cls(
            llama,
            model_id=model_id,
            max_queue=max_queue,
            model_path=model_path,
            state_cache_bytes=state_cache_bytes,
            stream_flush_ms=stream_flush_ms,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        close = getattr(self.llama, "close", None)
        if callable(close):
            close()

    # -- token counting -------------------------------------------------------------------------------

    def _make_formatter(self) -> Callable[[list[dict[str, str]]], tuple[str, bool]] | None:
        """Renders messages with the GGUF's chat template exactly as llama-cpp-python does (for usage)."""
        template = getattr(self.llama, "metadata", {}).get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token_id: int) -> str:
            if token_id == -1:
                return ""
            return bytes(self.llama.detokenize([token_id], special=True)).decode("utf-8", errors="replace")

        formatter = Jinja2ChatFormatter(
            template=template, eos_token=text(self.llama.token_eos()), bos_token=text(self.llama.token_bos())
        )

        def render(messages: list[dict[str, str]]) -> tuple[str, bool]:
            result = formatter(messages=messages)  # type: ignore[arg-type]
            return result.prompt, bool(result.added_special)

        return render

    def count_tokens(self, text: str, *, special: bool = False, add_bos: bool = False) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """Input tokens of a chat prompt, counted with the model's tokenizer on the templated prompt."""
        tokens = self.prompt_tokens(messages)
        if tokens is not None:
            return len(tokens)
        return sum(self.count_tokens(m["content"]) for m in messages)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        """The chat prompt's tokens as llama-cpp-python's chat handler makes them (None: no chat template)."""
        if self._formatter is None:
            return None
        prompt, added_special = self._formatter(messages)
        return list(self.llama.tokenize(prompt.encode("utf-8"), add_bos=not added_special, special=True))

    # -- evaluated prefixes (worker thread, under the model's lock) -----------------------------------

    def _reuse(self, tokens: list[int]) -> int:
        """Restore the cached state that shares more of ``tokens`` than the current context does; the number
        of prompt tokens llama.cpp will then reuse rather than evaluate (Llama.generate's rule: a prompt
        wholly in the context re-evaluates its last token)."""
        llama = self.llama
        current = common_prefix(llama.input_ids[: llama.n_tokens], tokens)
        if self.state_cache is not None:
            saved, n = self.state_cache.best(tokens)
            if saved is not None and n > current:
                llama.load_state(saved.state)
                self.stats.state_cache_restores += 1
                current = n
        return current - 1 if current == len(tokens) else current

    def _save(self) -> None:
        """Keep the context's evaluated state (the prompt and the answer) in the state cache."""
        if self.state_cache is None or self.llama.n_tokens == 0:
            return
        import ctypes

        import numpy as np
        from llama_cpp import LlamaState
        from llama_cpp import llama_cpp as C

        llama = self.llama
        ctx = llama._ctx.ctx
        size = int(C.llama_state_get_size(ctx))
        # Tens of MB for a long context: a bytearray (calloc'd, so not written twice) that llama.cpp fills
        # without the GIL, kept as it is (load_state copies from any buffer), rather than a ctypes array
        # zeroed and then copied into bytes, two copies made holding the GIL the event loop needs.
        data = bytearray(size)
        n_bytes = int(C.llama_state_get_data(ctx, (ctypes.c_uint8 * size).from_buffer(data), size))
        state = LlamaState(
            input_ids=llama.input_ids.copy(),
            # load_state broadcasts this row into its logits buffer; the restored prefix's last token is
            # evaluated again before sampling (Llama.generate), which rewrites them.
            scores=np.zeros((1, llama.n_vocab()), dtype=np.single),
            n_tokens=llama.n_tokens,
            llama_state=data if n_bytes == size else bytes(data[:n_bytes]),  # type: ignore[arg-type]
            llama_state_size=n_bytes,
            seed=llama._seed,
        )
        self.state_cache.put(llama.input_ids[: llama.n_tokens].copy(), state)

    # -- admission ------------------------------------------------------------------------------------

    def generation(self, params: GenerationParams) -> Generation:
        return Generation(self, params)

    def _admit(self) -> None:
        busy = self._lock.locked() or self._waiting > 0
        if busy and self._waiting >= self.max_queue:
            raise Throttling(
                f"Too many requests: the model is busy and {self._waiting} request(s) are already waiting "
                f"(LLM_MAX_QUEUE={self.max_queue}). Retry later."
            )

    def health(self) -> dict[str, Any]:
        return {
            "generating": self._active is not None,
            "waiting": self._waiting,
            "max_queue": self.max_queue,
            "n_ctx": self.n_ctx,
            "threads": int(getattr(self.llama, "n_threads", 0) or 0),
            "generations_started": self.stats.generations_started,
            "generations_completed": self.stats.generations_completed,
            "generations_cancelled": self.stats.generations_cancelled,
            "generations_failed": self.stats.generations_failed,
            "tokens_generated": self.stats.tokens_generated,
            "prompt_tokens_evaluated": self.stats.prompt_tokens_evaluated,
            "prompt_tokens_reused": self.stats.prompt_tokens_reused,
            "state_cache_restores": self.stats.state_cache_restores,
            "state_cache_entries": len(self.state_cache) if self.state_cache is not None else 0,
            "state_cache_bytes": self.state_cache.bytes if self.state_cache is not None else 0,
        }


_Item = str | _Started | _Done | _Failed


class Generation:
    """One admitted generation: an async context manager and an async iterator of text deltas."""

    def __init__(self, engine: Engine, params: GenerationParams) -> None:
        self.engine = engine
        self.params = params
        self.input_tokens = 0
        self.cached_tokens = 0  # prompt tokens reused from an evaluated prefix, not evaluated again
        self.output_tokens = 0
        self.stop_reason: StopReason | None = None
        self.stop_sequence: str | None = None  # which stop sequence ended it, if one did
        self._cancel = threading.Event()
        self._queue: asyncio.Queue[_Item] | None = None
        self._future: asyncio.Future[None] | None = None
        self._finished = False  # the worker's final item (_Done / _Failed) has been consumed
        self._failed = False
        self._sampled = 0  # tokens sampled so far; written by the worker, read once it has finished

    def cancel(self) -> None:
        """Ask the worker to stop after the current token."""
        self._cancel.set()

    async def __aenter__(self) -> Generation:
        eng = self.engine
        eng._admit()  # synchronous: raises Throttling before anything is sent to the client
        eng._waiting += 1
        try:
            await eng._lock.acquire()
        finally:
            eng._waiting -= 1
        try:
            loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            eng._active = self
            eng.stats.generations_started += 1
            self._future = loop.run_in_executor(eng._executor, self._run, loop)
            first = await self._queue.get()
            if isinstance(first, _Failed):
                self._finished = self._failed = True
                raise first.error
            assert isinstance(first, _Started)
            self.input_tokens = first.input_tokens
            self.cached_tokens = first.cached_tokens
            return self
        except BaseException:
            await self._finish()
            raise

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._finish()

    async def _finish(self) -> None:
        """Stop the worker if it is still generating, wait for it, and free the model."""
        eng = self.engine
        try:
            if self._future is not None:
                if not self._finished:
                    self._cancel.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._future)
                if self._failed:
                    eng.stats.generations_failed += 1
                elif self._finished:
                    eng.stats.generations_completed += 1
                else:
                    self.output_tokens = self._sampled
                    eng.stats.generations_cancelled += 1
                    log.info("generation cancelled after %d tokens", self._sampled)
                eng.stats.tokens_generated += self.output_tokens
        finally:
            eng._active = None
            self._future = None
            eng._lock.release()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        if self._finished or self._queue is None:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, str):
            return item
        self._finished = True
        if isinstance(item, _Done):
            self.stop_reason = item.stop_reason
            self.stop_sequence = item.stop_sequence
            self.output_tokens = item.output_tokens
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._failed = True
            raise item.error
        raise RuntimeError(f"unexpected item {item!r}")

    # -- worker thread --------------------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        queue = self._queue
        assert queue is not None

        def send(item: _Item) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        # Text is handed over as the chat function posts it (shared/coalesce.py: the first at once, then every
        # stream_flush_s or where a sentence ends): each handover wakes the event loop, and every wakeup on a
        # machine whose cores all run llama.cpp costs generation speed.
        coalescer = TokenCoalescer(self.engine.stream_flush_s * 1000, clock=time.monotonic)

        def emit(item: _Item) -> None:
            if isinstance(item, str):
                text = coalescer.add(item)
                if text:
                    send(text)
                return
            rest = coalescer.flush()
            if rest:
                send(rest)
            send(item)

        with self.engine._thread_lock:
            try:
                self._generate(emit)
                self.engine._save()
            except AwsError as exc:
                emit(_Failed(exc))
            except Exception as exc:
                log.exception("generation failed")
                emit(_Failed(GenerationFailed(f"The model failed to generate a response ({type(exc).__name__}).")))

    def _generate(self, emit: Callable[[_Item], None]) -> None:
        eng, p = self.engine, self.params
        llama = eng.llama
        tokens = eng.prompt_tokens(p.messages)
        n_in = len(tokens) if tokens is not None else eng.count_prompt_tokens(p.messages)
        if n_in >= eng.n_ctx:
            raise ValidationError(
                f"Input is too long for the model: {n_in} prompt tokens, the context window is {eng.n_ctx} "
                "tokens (LLM_N_CTX)."
            )
        max_tokens = min(p.max_tokens, eng.n_ctx - n_in)
        reused = eng._reuse(tokens) if tokens is not None else 0
        eng.stats.prompt_tokens_reused += reused
        eng.stats.prompt_tokens_evaluated += n_in - reused
        emit(_Started(n_in, reused))

        kwargs: dict[str, Any] = {}
        if p.top_p is not None:
            kwargs["top_p"] = p.top_p
        stream = llama.create_chat_completion(
            messages=p.messages,
            stream=True,
            max_tokens=max_tokens,
            temperature=p.temperature,
            top_k=p.top_k,
            repeat_penalty=p.repeat_penalty,
            frequency_penalty=p.frequency_penalty,
            presence_penalty=p.presence_penalty,
            **kwargs,
        )
        matcher = StopMatcher(p.stop)
        finish: str | None = None
        hit_stop = False
        try:
            for chunk in stream:
                if self._cancel.is_set():
                    return  # nobody wants the rest: no _Done, the async side counts it as cancelled
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    out, hit_stop = matcher.feed(piece)
                    if out:
                        emit(out)
                    if hit_stop:
                        break
                finish = choice.get("finish_reason") or finish
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()
            # Tokens sampled: llama.cpp evaluates each sampled token but the last (the generation stops on it),
            # so the context now holds the prompt and all but one of them. Counted from the context rather
            # than by a logits processor, whose Python callback on every token (a view over the whole
            # vocabulary) costs generation speed.
            self._sampled = min(max(int(llama.n_tokens) - n_in + 1, 0), max_tokens)
        if self._cancel.is_set():
            return
        if hit_stop:
            reason: StopReason = "stop_sequence"
            n_out = self._sampled
        elif finish == "stop":  # an end-of-generation token, which is not part of the output
            reason = "end_turn"
            rest = matcher.flush()
            if rest:
                emit(rest)
            n_out = max(self._sampled - 1, 0)
        else:
            reason = "max_tokens"
            rest = matcher.flush()
            if rest:
                emit(rest)
            n_out = self._sampled
        emit(_Done(reason, n_out, matcher.matched if hit_stop else None))
