"""``localrag calibrate``: a distance threshold for the user's own corpus, without labels.

RAG_MAX_DISTANCE decides which retrieved passages reach the model: too low and real questions find
nothing, too high and questions the documents do not cover get unrelated passages. The default (0.7) was
calibrated on SciFact with relevance labels; a user's corpus has none. This draws two kinds of probes and
measures, for each, the distance of the nearest passage the chat would retrieve (the search action with
max_distance 2.0, so nothing is cut):

- in-topic probes: a sentence of a chunk drawn at random from the corpus (the ``sample_chunks`` action),
  i.e. something the documents certainly answer;
- off-topic probes: OFFTOPIC_PROBES below, everyday questions (cooking, sport, travel, history, nature,
  ...) that a document collection about anything else does not answer.

For each threshold of a grid it reports the share of in-topic probes that would find nothing and the share
of off-topic probes that would get passages, and recommends the larger of: the smallest threshold leaving
at most MAX_MISS of the in-topic probes without passages (a floor: in-topic probes quote the corpus, so they
sit nearer their passages than a user's paraphrased question does), and the largest threshold giving at
most MAX_LEAK of the off-topic probes passages (README "Threshold calibration" compares it with SciFact's
labelled optimum). Pure functions here; the wire-protocol runner is ``run``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

GRID: tuple[float, ...] = tuple(round(0.30 + 0.05 * i, 2) for i in range(19))  # 0.30 .. 1.20
MAX_MISS = 0.03  # the share of in-topic probes a recommended threshold may leave without passages
# The share of off-topic probes a recommended threshold may give passages: a passage given to a question it
# does not answer costs less (the model is told to say the passages do not answer it) than a real question
# left without one. 0.15 is the trade of the SciFact-labelled default (0.7: 15% of off-topic questions).
MAX_LEAK = 0.15
PROBE_MIN_WORDS = 6
PROBE_MAX_WORDS = 30

# Everyday questions with no technical, business or scientific subject: a collection of documents about
# anything else should have nothing on them. (A probe that the corpus does cover only makes the
# off-topic side look worse, never the recommendation laxer.) Not the list bench/ calibrated on.
OFFTOPIC_PROBES: tuple[str, ...] = (
    "How do I make fluffy pancakes from scratch?",
    "How long should a turkey roast per kilogram?",
    "What herbs go well in a tomato sauce?",
    "How do I keep guacamole from turning brown?",
    "What is the secret to crispy roast potatoes?",
    "How do you poach an egg without it falling apart?",
    "Which cheese is traditionally used on a Margherita pizza?",
    "How much rice should I cook per person?",
    "What is the difference between baking and roasting?",
    "How do I sharpen a kitchen knife with a whetstone?",
    "Who scored the winning goal in the 2014 World Cup final?",
    "How many holes are there on a standard golf course?",
    "What is a hat-trick in cricket?",
    "How long is the Tour de France?",
    "How many rounds are there in a professional boxing title fight?",
    "What are the rules of curling?",
    "How many points is a try worth in rugby union?",
    "How high is a basketball hoop?",
    "What is the capital of Canada?",
    "Which river runs through Vienna?",
    "What is the tallest mountain in Africa?",
    "How many islands make up Hawaii?",
    "What language is spoken in Brazil?",
    "Which desert is the largest hot desert in the world?",
    "What is the best time of year to visit Japan for cherry blossoms?",
    "Do I need a visa to travel from the UK to Thailand?",
    "What should I pack for a week of hiking in the Alps?",
    "Who painted the ceiling of the Sistine Chapel?",
    "When did the Berlin Wall fall?",
    "Who built the Great Pyramid of Giza?",
    "Why did the Titanic sink?",
    "Who wrote the novel Moby-Dick?",
    "What year did humans first land on the Moon?",
    "How many symphonies did Beethoven write?",
    "How many strings does a cello have?",
    "What is the plot of Romeo and Juliet?",
    "Which band recorded the album Abbey Road?",
    "How do I learn to play the guitar as an adult?",
    "How often should I repot a houseplant?",
    "When should I plant tulip bulbs?",
    "How do I get rid of aphids on roses?",
    "Why do leaves change colour in autumn?",
    "How long do cats usually live?",
    "How can I stop my dog from pulling on the lead?",
    "What do hedgehogs eat?",
    "How do bees make honey?",
    "How do I remove a red wine stain from a carpet?",
    "What is the best way to fold a fitted sheet?",
    "How do I unclog a bathroom sink?",
    "How often should I change the oil in my car?",
    "How do I change a flat bicycle tyre?",
    "What is a good stretching routine before running?",
    "How many hours of sleep does a teenager need?",
    "How do I knit a scarf for beginners?",
    "How does a knight move in chess?",
    "How do you solve a Rubik's cube?",
    "What is the plural of octopus?",
    "Why is the sky blue during the day?",
    "How many bones are in the human hand?",
    "What is a good name for a goldfish?",
)

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Row:
    threshold: float
    in_topic_missed: float  # share of in-topic probes with no passage within the threshold
    off_topic_answered: float  # share of off-topic probes that get a passage within the threshold


@dataclass
class Calibration:
    recommended: float
    reason: str
    rows: list[Row]
    in_topic: list[float]
    off_topic: list[float]
    chunks_total: int = 0
    probes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended,
            "reason": self.reason,
            "chunks_total": self.chunks_total,
            "in_topic_probes": len(self.in_topic),
            "off_topic_probes": len(self.off_topic),
            "in_topic_quantiles": quantiles(self.in_topic),
            "off_topic_quantiles": quantiles(self.off_topic),
            "sweep": [asdict(r) for r in self.rows],
            "probes": self.probes,
        }


def probe_sentence(text: str, rng: random.Random) -> str:
    """A sentence of ``text`` to ask about it: one of PROBE_MIN_WORDS..PROBE_MAX_WORDS words, chosen at
    random; failing any, the text's first PROBE_MAX_WORDS words."""
    sentences = [" ".join(s.split()) for s in _SENTENCE.split(text)]
    fit = [s for s in sentences if PROBE_MIN_WORDS <= len(s.split()) <= PROBE_MAX_WORDS]
    if fit:
        return rng.choice(fit)
    return " ".join(text.split()[:PROBE_MAX_WORDS])


def share_above(values: Sequence[float], threshold: float) -> float:
    return sum(v > threshold for v in values) / len(values) if values else 0.0


def sweep(in_topic: Sequence[float], off_topic: Sequence[float], grid: Sequence[float] = GRID) -> list[Row]:
    """Per threshold: in-topic probes that would find nothing (nearest > t), off-topic probes that would
    get passages (nearest <= t)."""
    return [
        Row(t, round(share_above(in_topic, t), 4), round(1.0 - share_above(off_topic, t), 4) if off_topic else 0.0)
        for t in grid
    ]


def recommend(
    in_topic: Sequence[float],
    off_topic: Sequence[float],
    grid: Sequence[float] = GRID,
    max_miss: float = MAX_MISS,
    max_leak: float = MAX_LEAK,
) -> tuple[float, str]:
    """The larger of two grid thresholds: the floor, the smallest that leaves at most ``max_miss`` of the
    in-topic probes without passages, and the ceiling, the largest that gives at most ``max_leak`` of the
    off-topic probes passages. In-topic probes quote the corpus, so they sit nearer their passages than
    real questions, which paraphrase: their floor alone would be too strict. Off-topic probes are real
    questions: the ceiling admits real questions as far out as that costs."""
    if not in_topic:
        raise ValueError("no in-topic probes: the corpus has no chunks")
    rows = sweep(in_topic, off_topic, grid)
    ok = [r for r in rows if r.in_topic_missed <= max_miss]
    if not ok:
        last = rows[-1]
        return last.threshold, (
            f"no threshold up to {last.threshold} keeps {1 - max_miss:.0%} of the in-topic probes "
            f"({last.in_topic_missed:.0%} find nothing at {last.threshold}): the corpus's passages are far "
            "from its own sentences (very long chunks, or an embedding model that does not fit the language)"
        )
    floor = ok[0]
    leaky = [r for r in rows if r.off_topic_answered <= max_leak] if off_topic else []
    ceiling = leaky[-1] if leaky else None
    pick = floor if ceiling is None or ceiling.threshold <= floor.threshold else ceiling
    reason = (
        f"{pick.threshold}: {pick.in_topic_missed:.1%} of in-topic probes find nothing, "
        f"{pick.off_topic_answered:.0%} of off-topic probes get passages ("
    )
    if pick is floor:
        reason += (
            f"the smallest threshold leaving at most {max_miss:.0%} of in-topic probes without passages; "
            f"a lower one would cost real questions)"
        )
    else:
        reason += (
            f"the largest threshold giving at most {max_leak:.0%} of off-topic probes passages; in-topic probes "
            f"alone would allow {floor.threshold}, but they quote the documents and real questions sit further out)"
        )
    return pick.threshold, reason


def quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))], 4)

    return {
        "min": round(s[0], 4),
        "p05": q(0.05),
        "p25": q(0.25),
        "median": q(0.5),
        "p75": q(0.75),
        "p95": q(0.95),
        "max": round(s[-1], 4),
    }


# The two things calibration needs from a deployment (the CLI: the WebSocket client; bench/: the chat
# service in process): chunks drawn at random (total, [(doc_id, chunk, text)]), and the nearest
# retrieved distance for a query (None when nothing at all is retrieved).
SampleFn = Callable[[int, int], Awaitable[tuple[int, list[tuple[str, int, str]]]]]
NearestFn = Callable[[str], Awaitable[float | None]]


async def run(
    sample: SampleFn,
    nearest: NearestFn,
    *,
    probes: int = 100,
    offtopic: Sequence[str] = OFFTOPIC_PROBES,
    seed: int = 0,
    max_miss: float = MAX_MISS,
    max_leak: float = MAX_LEAK,
    grid: Sequence[float] = GRID,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Draw ``probes`` chunks (``sample(count, seed)``, in calls of at most 100), probe each with a
    sentence of it and every off-topic question, and recommend a threshold."""
    rng = random.Random(seed)
    chunks: list[tuple[str, int, str]] = []
    total = 0
    call = 0
    while len(chunks) < probes:
        total, got = await sample(min(100, probes - len(chunks)), seed + call)
        call += 1
        seen = {(d, c) for d, c, _ in chunks}
        fresh = [g for g in got if (g[0], g[1]) not in seen]
        chunks += fresh
        if not fresh or len(chunks) >= total:
            break
    in_topic: list[float] = []
    detail: list[dict[str, Any]] = []
    todo = len(chunks) + len(offtopic)
    for doc_id, n, text in chunks[:probes]:
        q = probe_sentence(text, rng)
        d = await nearest(q)
        in_topic.append(2.0 if d is None else d)
        detail.append({"kind": "in_topic", "doc_id": doc_id, "chunk": n, "probe": q, "nearest": d})
        if progress:
            progress(len(detail), todo)
    off_topic: list[float] = []
    for q in offtopic:
        d = await nearest(q)
        off_topic.append(2.0 if d is None else d)
        detail.append({"kind": "off_topic", "probe": q, "nearest": d})
        if progress:
            progress(len(detail), todo)
    if not in_topic:
        raise ValueError("the corpus has no chunks: ingest documents first")
    best, reason = recommend(in_topic, off_topic, grid, max_miss, max_leak)
    return Calibration(best, reason, sweep(in_topic, off_topic, grid), in_topic, off_topic, total, detail)


def table(cal: Calibration, current: float | None = None, highlight: Sequence[float] = ()) -> str:
    """The sweep as a plain-text table (the recommended row, and ``current`` if given, marked)."""
    lines = [
        f"{'max_distance':>12}  {'in-topic probes finding nothing':>31}  {'off-topic probes getting passages':>33}"
    ]
    for r in cal.rows:
        mark = " <- recommended" if r.threshold == cal.recommended else ""
        if current is not None and math.isclose(r.threshold, current):
            mark += " (current)"
        if mark or not highlight or r.threshold in highlight:
            lines.append(f"{r.threshold:>12.2f}  {r.in_topic_missed:>31.1%}  {r.off_topic_answered:>33.1%}{mark}")
    return "\n".join(lines)
