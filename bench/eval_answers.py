"""Answer quality with the real model: the seed articles, questions with facts, off-topic and follow-up turns.

    python -m bench.eval_answers                      # make eval-answers (~5-10 min on 2 cores)
    python -m bench.eval_answers --questions bench/questions/seeds.json --out bench/results/answers.json

One stack is started as ``make up`` starts it (shared/stack.py: gateway, authorizer, chat function, LLM
service with the model ``make up`` would use -- the embedded SmolLM2-135M-Instruct unless LLM_MODEL_PATH
or ``make model`` say otherwise -- identity on), the three articles in ../shared/seeds are ingested as a
user would (``localrag ingest`` in a subprocess), and every question is asked over the WebSocket with
the client library (shared/client/ws_client.py), at the chat's default settings:

- questions: does the answer cite a passage ([n] of a kept source), does a cited passage come from the
  article that answers it, does it contain the fact (one of ``facts``, case-insensitive);
- off-topic questions: did retrieval keep no passage (prompt "no_context"), does the answer say the
  documents do not cover it;
- follow-ups: a conversation of two turns (``first``, then ``followup``); the follow-up's retrieval hit
  (the right article among the kept sources), citation and fact -- once with the follow-up rewrite on
  (RAG_FOLLOWUP_REWRITE, chat/followup.py) and once off (the chat function restarted);
- every answer: stop reason, output tokens, time to first token (client side: from sending the question
  to the first token frame; and the chat function's own timings_ms.first_token).

Writes bench/results/answers.json and prints a table. Matching is by substring and regular expression:
it is a yardstick for regressions and settings, not a grader of prose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "seeds"
DEFAULT_QUESTIONS = Path(__file__).resolve().parent / "questions" / "seeds.json"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "answers.json"
TENANT = "answers"

CITATION = re.compile(r"\[(\d{1,2})\]")
# An answer that says the documents do not cover the question.
NOT_COVERED = re.compile(
    r"(not|n't|no longer|nothing)\s+(\w+\s+){0,4}(cover|covered|mention|mentioned|contain|contains|include|includes|"
    r"provide|provided|discuss|discussed|address|addressed|found|find|relevant|information|available|specif)"
    r"|no (relevant |specific |such )?(information|passage|passages|document|documents|mention|details|data)"
    r"|(unable|not able) to (find|answer|provide)|outside (the )?(scope|documents)|beyond the (scope|documents)",
    re.IGNORECASE,
)


@dataclass
class Turn:
    kind: str  # question | offtopic | first | followup
    id: str
    question: str
    variant: str = "rewrite on"
    article: str | None = None
    facts: list[str] = field(default_factory=list)
    answer: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    stop_reason: str = ""
    output_tokens: int = 0
    ttft_ms: float = 0.0
    server_first_token_ms: float | None = None
    cited: list[int] = field(default_factory=list)

    @property
    def valid_citations(self) -> list[dict[str, Any]]:
        by_n = {s["n"]: s for s in self.sources}
        return [by_n[n] for n in self.cited if n in by_n]

    def of_article(self, source: dict[str, Any]) -> bool:
        return self.article is not None and str(source["doc_id"]).startswith(self.article)

    def judge(self) -> dict[str, Any]:
        cites = self.valid_citations
        return {
            "retrieval_hit": any(self.of_article(s) for s in self.sources),
            "cites_passage": bool(cites),
            "cites_right_article": any(self.of_article(s) for s in cites),
            "fact": any(f.lower() in self.answer.lower() for f in self.facts),
            "no_context": self.prompt == "no_context",
            "says_not_covered": bool(NOT_COVERED.search(self.answer)),
        }


def _share(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    n = sum(bool(r[key]) for r in rows)
    return {"n": n, "of": len(rows), "share": round(n / len(rows), 3) if rows else None}


def summarize(turns: list[Turn]) -> dict[str, Any]:
    def rows(kind: str, variant: str = "rewrite on") -> list[dict[str, Any]]:
        return [{**t.judge(), "t": t} for t in turns if t.kind == kind and t.variant == variant]

    q, off = rows("question"), rows("offtopic")
    fu_on, fu_off = rows("followup"), rows("followup", "rewrite off")
    every = turns
    stops: dict[str, int] = {}
    for t in every:
        stops[t.stop_reason] = stops.get(t.stop_reason, 0) + 1
    tokens = [t.output_tokens for t in every]
    ttft = [t.ttft_ms for t in every if t.output_tokens]
    return {
        "questions": {
            "retrieval_hit": _share(q, "retrieval_hit"),
            "cites_passage": _share(q, "cites_passage"),
            "cites_right_article": _share(q, "cites_right_article"),
            "fact": _share(q, "fact"),
        },
        "offtopic": {"no_context": _share(off, "no_context"), "says_not_covered": _share(off, "says_not_covered")},
        "followups": {
            variant: {
                "retrieval_hit": _share(r, "retrieval_hit"),
                "cites_right_article": _share(r, "cites_right_article"),
                "fact": _share(r, "fact"),
            }
            for variant, r in (("rewrite on", fu_on), ("rewrite off", fu_off))
            if r
        },
        "answers": len(every),
        "stop_reasons": stops,
        "output_tokens": {
            "median": statistics.median(tokens) if tokens else None,
            "max": max(tokens, default=None),
            "mean": round(statistics.fmean(tokens), 1) if tokens else None,
        },
        "ttft_ms": {
            "median": round(statistics.median(ttft), 1) if ttft else None,
            "max": round(max(ttft), 1) if ttft else None,
        },
    }


# ---------------------------------------------------------------------------------------------- the stack


def start_stack(root: Path, extra_env: dict[str, str]) -> Any:
    """The six services as ``make up`` starts them (identity on; the LLM: what ``make up`` resolves)."""
    from shared.stack import Stack, StackConfig, plan

    cfg = StackConfig.any_ports(
        data_dir=root / "data",
        extra_env={"LOG_LEVEL": "WARNING", **extra_env},
    )
    stack = Stack(plan(cfg), cfg)
    stack.start(root / "logs", timeout=600)
    return stack


def ingest_seeds(url: str, key: str, seeds: Path) -> None:
    """``localrag ingest`` of the articles folder, as a user would (the key in the environment, not argv)."""
    env = {**os.environ, "RAG_API_KEY": key, "RAG_URL": url}
    done = subprocess.run(
        [sys.executable, "-m", "shared.client.cli", "ingest", str(seeds)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"localrag ingest failed ({done.returncode}): {done.stderr[-2000:]}")
    print(done.stdout.strip(), flush=True)


async def ask(client: Any, turn: Turn, conversation_id: str | None = None) -> str:
    """One chat turn; fills ``turn`` in and returns the conversation id."""
    from shared.protocol import StreamEnd, StreamStart, Token

    t0 = time.perf_counter()
    first: float | None = None
    end: StreamEnd | None = None
    async for msg in client.chat(turn.question, conversation_id):
        if isinstance(msg, Token) and first is None:
            first = time.perf_counter()
        elif isinstance(msg, StreamStart):
            turn.sources = [s.model_dump() for s in msg.sources]
        elif isinstance(msg, StreamEnd):
            end = msg
    if end is None:
        raise RuntimeError("the answer stream ended without stream_end")
    turn.answer = end.answer
    turn.prompt = end.prompt
    turn.stop_reason = end.stop_reason
    turn.output_tokens = end.usage.output_tokens
    turn.ttft_ms = round(((first or time.perf_counter()) - t0) * 1000, 1)
    turn.server_first_token_ms = end.timings_ms.get("first_token")
    turn.cited = sorted({int(n) for n in CITATION.findall(end.answer)})
    return end.conversation_id


async def run_questions(
    url: str, key: str, spec: dict[str, Any], variant: str, only_followups: bool, timeout: float
) -> list[Turn]:
    from shared.client.ws_client import RagClient

    turns: list[Turn] = []
    async with RagClient(url, api_key=key, timeout=timeout) as client:
        if not only_followups:
            for q in spec["questions"]:
                t = Turn("question", q["id"], q["question"], variant, q["article"], q["facts"])
                await ask(client, t)
                turns.append(t)
                print(f"  {t.id}: {_brief(t)}", flush=True)
            for i, text in enumerate(spec["offtopic"]):
                t = Turn("offtopic", f"offtopic-{i}", text, variant)
                await ask(client, t)
                turns.append(t)
                print(f"  {t.id}: {_brief(t)}", flush=True)
        for f in spec["followups"]:
            first = Turn("first", f["id"], f["first"], variant, f["article"])
            conversation = await ask(client, first)
            second = Turn("followup", f["id"], f["followup"], variant, f["article"], f["facts"])
            await ask(client, second, conversation)
            turns += [first, second]
            print(f"  {f['id']} ({variant}): {_brief(second)}", flush=True)
    return turns


def _brief(t: Turn) -> str:
    j = t.judge()
    flags = ", ".join(k for k, v in j.items() if v) or "-"
    return f"{t.stop_reason}, {t.output_tokens} tokens, {t.ttft_ms:.0f} ms TTFT [{flags}]"


# ---------------------------------------------------------------------------------------------- report


def table(summary: dict[str, Any]) -> str:
    def pct(s: dict[str, Any]) -> str:
        return f"{s['n']}/{s['of']} ({s['share']:.0%})" if s["of"] else "-"

    q, off, fu = summary["questions"], summary["offtopic"], summary["followups"]
    lines = [
        "| measure | result |",
        "|---|---|",
        f"| questions: right article among the kept passages | {pct(q['retrieval_hit'])} |",
        f"| questions: answer cites a passage ([n] of a kept source) | {pct(q['cites_passage'])} |",
        f"| questions: a cited passage is from the right article | {pct(q['cites_right_article'])} |",
        f"| questions: answer contains the fact | {pct(q['fact'])} |",
        f"| off-topic: no passage kept (no_context prompt) | {pct(off['no_context'])} |",
        f"| off-topic: answer says the documents do not cover it | {pct(off['says_not_covered'])} |",
    ]
    for variant, r in fu.items():
        lines += [
            f"| follow-ups, {variant}: right article among the kept passages | {pct(r['retrieval_hit'])} |",
            f"| follow-ups, {variant}: a cited passage is from the right article | {pct(r['cites_right_article'])} |",
            f"| follow-ups, {variant}: answer contains the fact | {pct(r['fact'])} |",
        ]
    stops = ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items()))
    tok, ttft = summary["output_tokens"], summary["ttft_ms"]
    lines += [
        f"| stop reasons ({summary['answers']} answers) | {stops} |",
        f"| output tokens per answer (median / mean / max) | {tok['median']} / {tok['mean']} / {tok['max']} |",
        f"| time to first token, client side (median / max) | {ttft['median']} ms / {ttft['max']} ms |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_answers", description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="the question set (JSON)")
    p.add_argument("--seeds", type=Path, default=SEEDS, help="the folder of articles to ingest")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-compare", action="store_true", help="skip the follow-ups with the rewrite off")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="RAG_MAX_TOKENS for the stack (default: the chat's own; a small value measures retrieval quickly, "
        "not answers)",
    )
    p.add_argument("--chat-timeout", type=float, default=900.0, help="CHAT_TIMEOUT_S (a loaded machine is slow)")
    args = p.parse_args(argv)

    from llm.model_fetch import ensure_model
    from llm.settings import Settings as LlmSettings
    from shared.stack import key_store

    spec = json.loads(args.questions.read_text(encoding="utf-8"))
    model = ensure_model(LlmSettings(), allow_download=False)
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.eval_answers", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": model.name,
        "questions_file": str(
            args.questions.relative_to(ROOT) if args.questions.is_relative_to(ROOT) else args.questions
        ),
    }
    turns: list[Turn] = []
    with tempfile.TemporaryDirectory(prefix="eval-answers-") as tmp:
        print(f"model {model.name}; starting the stack ...", flush=True)
        env = {"CHAT_TIMEOUT_S": str(args.chat_timeout), "GATEWAY_INTEGRATION_TIMEOUT_S": str(args.chat_timeout)}
        if args.max_tokens is not None:
            env["RAG_MAX_TOKENS"] = str(args.max_tokens)
        report["stack_env"] = env
        stack = start_stack(Path(tmp), env)
        try:
            from chat.settings import Settings as ChatSettings

            report["chat_settings"] = {
                k: v
                for k, v in ChatSettings(**({"max_tokens": args.max_tokens} if args.max_tokens else {}))
                .model_dump()
                .items()
                if k in ("top_k", "max_distance", "search_mode", "max_tokens", "temperature", "followup_rewrite")
            }
            _, key = key_store(stack.config).create(TENANT, "bench: answer evaluation")
            ingest_seeds(stack.ws_url, key, args.seeds)
            turns += asyncio.run(
                run_questions(stack.ws_url, key, spec, "rewrite on", only_followups=False, timeout=args.chat_timeout)
            )
            if not args.no_compare:
                chat = stack.by_name["chat"]
                chat.env["RAG_FOLLOWUP_REWRITE"] = "false"
                stack.restart("chat")
                turns += asyncio.run(
                    run_questions(
                        stack.ws_url, key, spec, "rewrite off", only_followups=True, timeout=args.chat_timeout
                    )
                )
        finally:
            stack.stop()
    summary = summarize(turns)
    report["summary"] = summary
    report["turns"] = [{**asdict(t), "judged": t.judge()} for t in turns]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(table(summary))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
