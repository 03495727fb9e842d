"""A conversation's turns are serialized: ChatService on the real LanceDB (a folder), several processes.

Every stored conversation is seq 0..n-1 with no gap and no duplicate, user and assistant alternating, and
every turn is either stored whole or refused (``conversation_busy``, or the upstream error that ended it).
The model is a scripted stand-in that refuses non-alternating roles as Bedrock's Converse does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pytest

from chat.service import ChatService
from chat.settings import Settings
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.errors import RagError, UpstreamUnavailable
from shared.identity import Principal
from shared.protocol import ChatRequest, ErrorCode, HistoryRequest, StreamEnd, StreamStart
from shared.vector_store import MESSAGES_TABLE, ConversationBusy, MessageRow, VectorStore
from tests.support.paths import ROOT
from tests.support.timeouts import scaled

ALICE = Principal("alpha", "key:alice", "api_key")
DIM = 4


class Embedder:
    def embed_query(self, text: str) -> list[float]:
        return [1.0, 0.0, 0.0, 0.0]


class ScriptedLLM:
    """Streams an answer naming the question; refuses what Bedrock's Converse refuses (roles that do not
    alternate user/assistant, starting and ending with user). ``plan`` decides each answer: "ok", "fail"
    (an upstream error mid-stream), "slow" (a pause of ``slow_s`` before the first token), or a
    threading.Event to wait on before answering."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.plan: Any = "ok"
        self.slow_s = 0.0
        self.refused: list[list[str]] = []
        self.started = threading.Event()

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        roles = [m["role"] for m in messages]
        if (
            roles[0::2] != ["user"] * len(roles[0::2])
            or roles[1::2] != ["assistant"] * len(roles[1::2])
            or (roles[-1] != "user")
        ):
            self.refused.append(roles)
            raise RagError("ValidationException: roles must alternate", ErrorCode.INVALID_REQUEST)
        self.started.set()
        plan = self.plan
        if isinstance(plan, threading.Event):
            assert plan.wait(scaled(30))
        elif plan == "slow":
            time.sleep(self.slow_s)
        question = messages[-1]["content"].rsplit("Question: ", 1)[-1]  # after this turn's passages (if any)
        for i in range(self.rng.randint(1, 4)):
            time.sleep(self.rng.uniform(0, 0.01))
            if plan == "fail" and i == 1:
                raise UpstreamUnavailable("the LLM service is unavailable")
            yield TextDelta(f"[{question}:{i}]")
        if plan == "fail":
            raise UpstreamUnavailable("the LLM service is unavailable")
        yield StreamDone("end_turn", 5, 3)


def make_service(uri: Path, llm: ScriptedLLM, lease_s: float = 30.0, store: VectorStore | None = None) -> ChatService:
    store = store or VectorStore(str(uri), dimension=DIM, model_id="test", full_text=False)
    settings = Settings(intent_routing=False, search_mode="vector", max_distance=2.0)
    return ChatService(settings, embedder=Embedder(), store=store, llm=llm, turn_lease_s=lease_s)


def chat(svc: ChatService, question: str, conversation_id: str | None = None) -> tuple[list[Any], RagError | None]:
    """The replies of one chat, and the typed error that ended it (None when it ended with stream_end)."""
    out: list[Any] = []
    req = ChatRequest(action="chat", request_id=question, question=question, conversation_id=conversation_id)
    try:
        svc.chat(req, out.append, ALICE)
    except RagError as exc:
        return out, exc
    assert isinstance(out[-1], StreamEnd)
    return out, None


def stored(uri: Path, conversation_id: str) -> list[MessageRow]:
    store = VectorStore(str(uri), dimension=DIM, model_id="test", full_text=False)
    return store.conversation(conversation_id, tenant=ALICE.tenant, principal=ALICE.principal)


def assert_serial(rows: Sequence[MessageRow]) -> None:
    """seq 0..n-1, user at even seqs and assistant at odd, each answer its question's."""
    assert [r.seq for r in rows] == list(range(len(rows))), [r.seq for r in rows]
    assert len(rows) % 2 == 0
    assert [r.role for r in rows] == ["user", "assistant"] * (len(rows) // 2)
    for q, a in zip(rows[0::2], rows[1::2], strict=True):
        assert a.content.startswith(f"[{q.content}:0]"), (q.content, a.content)


def assert_table_clean(uri: Path) -> None:
    """No two rows of one (conversation, seq), anchors included."""
    rows = lancedb.connect(uri).open_table(MESSAGES_TABLE).to_arrow().select(["conversation_id", "seq"]).to_pylist()
    counts = Counter((r["conversation_id"], r["seq"]) for r in rows)
    assert not [k for k, n in counts.items() if n > 1], counts


# ---------------------------------------------------------------------------------------------- one process


def test_a_second_chat_on_a_busy_conversation_is_refused_before_any_token(tmp_path: Path) -> None:
    llm = ScriptedLLM()
    svc = make_service(tmp_path / "db", llm)
    first, err = chat(svc, "q0")
    assert err is None
    cid = first[-1].conversation_id

    gate = threading.Event()
    llm.plan, llm.started = gate, threading.Event()
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=chat(svc, "q1", cid)))
    t.start()
    try:
        assert llm.started.wait(scaled(30))
        replies, busy = chat(svc, "q-busy", cid)
        assert replies == [] and busy is not None  # nothing streamed: the error comes first
        assert busy.code is ErrorCode.CONVERSATION_BUSY and "answer is being generated" in busy.message
    finally:
        gate.set()
        t.join(scaled(30))
    assert result["r"][1] is None
    llm.plan = "ok"
    assert chat(svc, "q2", cid)[1] is None  # free again once the answer ended
    rows = stored(tmp_path / "db", cid)
    assert [r.content for r in rows[0::2]] == ["q0", "q1", "q2"]
    assert_serial(rows)


def test_a_new_conversation_is_busy_while_its_first_answer_streams(tmp_path: Path) -> None:
    # The client learns the id from stream_start; a second chat naming it meanwhile is busy, not unknown.
    llm = ScriptedLLM()
    svc = make_service(tmp_path / "db", llm)
    gate = threading.Event()
    llm.plan = gate
    out: list[Any] = []
    t = threading.Thread(target=lambda: svc.chat(ChatRequest(action="chat", question="first"), out.append, ALICE))
    t.start()
    try:
        assert llm.started.wait(scaled(30))
        cid = out[0].conversation_id
        assert isinstance(out[0], StreamStart)
        assert svc.history(HistoryRequest(action="history", conversation_id=cid), ALICE).messages == []
        _, busy = chat(svc, "second", cid)
        assert busy is not None and busy.code is ErrorCode.CONVERSATION_BUSY
    finally:
        gate.set()
        t.join(scaled(30))
    assert isinstance(out[-1], StreamEnd)
    rows = stored(tmp_path / "db", cid)
    assert [r.content for r in rows[0::2]] == ["first"]
    assert_serial(rows)


def test_a_failed_turn_stores_nothing_and_frees_the_conversation_at_once(tmp_path: Path) -> None:
    llm = ScriptedLLM()
    svc = make_service(tmp_path / "db", llm, lease_s=3600)  # (a claim left behind would block for an hour)
    cid = chat(svc, "q0")[0][-1].conversation_id
    llm.plan = "fail"
    replies, err = chat(svc, "q-fails", cid)
    assert err is not None and err.code is ErrorCode.UPSTREAM_UNAVAILABLE and isinstance(replies[0], StreamStart)
    llm.plan = "ok"
    assert chat(svc, "q1", cid)[1] is None

    # A client that went away mid-answer: nothing stored, and the conversation is free.
    def gone(message: Any) -> None:
        if not isinstance(message, StreamStart):
            raise ConnectionError("gone")

    with pytest.raises(ConnectionError):
        svc.chat(ChatRequest(action="chat", question="q-gone", conversation_id=cid), gone, ALICE)
    assert chat(svc, "q2", cid)[1] is None
    rows = stored(tmp_path / "db", cid)
    assert [r.content for r in rows[0::2]] == ["q0", "q1", "q2"]
    assert_serial(rows)


def test_a_turn_that_outlives_its_claim_is_not_stored_over_another(tmp_path: Path) -> None:
    # A slow turn whose claim expired (its process stalled): another turn takes the conversation and is
    # stored; the slow one is then refused (conversation_busy) rather than stored at the same seqs.
    llm_slow, llm_fast = ScriptedLLM(), ScriptedLLM()
    slow, fast = make_service(tmp_path / "db", llm_slow, lease_s=0.3), make_service(tmp_path / "db", llm_fast)
    cid = chat(fast, "q0")[0][-1].conversation_id
    gate = threading.Event()
    llm_slow.plan = gate
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(r=chat(slow, "q-slow", cid)))
    t.start()
    try:
        assert llm_slow.started.wait(scaled(30))
        deadline = time.monotonic() + scaled(30)
        while (err := chat(fast, "q1", cid)[1]) is not None:  # busy until the slow claim expires
            assert err.code is ErrorCode.CONVERSATION_BUSY and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        gate.set()
        t.join(scaled(30))
    replies, lost = result["r"]
    assert lost is not None and lost.code is ErrorCode.CONVERSATION_BUSY and "was not stored" in lost.message
    assert isinstance(replies[0], StreamStart)
    rows = stored(tmp_path / "db", cid)
    assert [r.content for r in rows[0::2]] == ["q0", "q1"]
    assert_serial(rows)


def test_conversations_stored_before_turns_were_serialized(tmp_path: Path) -> None:
    # A messages table of the previous version (no claim columns) holding a scrambled conversation, as two
    # concurrent chats left it: seq 0, 1, 2, 2, 3, 3. It is migrated on open; the model gets alternating
    # roles; the next turn goes after it.
    uri = tmp_path / "db"
    old = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("conversation_id", pa.string(), nullable=False),
            pa.field("seq", pa.int64(), nullable=False),
            pa.field("role", pa.string(), nullable=False),
            pa.field("content", pa.string()),
            pa.field("created_at", pa.string()),
            pa.field("rag_context", pa.string()),
            pa.field("tenant", pa.string(), nullable=False),
            pa.field("principal", pa.string(), nullable=False),
        ]
    )
    said = [(0, "user", "a"), (1, "assistant", "A"), (2, "user", "b"), (2, "user", "c"), (3, "assistant", "B")]
    said.append((3, "assistant", "C"))
    rows = [
        {"id": str(uuid.uuid4()), "conversation_id": "old", "seq": s, "role": r, "content": c, "created_at": "",
         "rag_context": "{}", "tenant": ALICE.tenant, "principal": ALICE.principal}
        for s, r, c in said
    ]  # fmt: skip
    lancedb.connect(uri).create_table(MESSAGES_TABLE, data=pa.Table.from_pylist(rows, schema=old))
    llm = ScriptedLLM()
    svc = make_service(uri, llm)
    assert chat(svc, "d", "old")[1] is None
    assert not llm.refused
    after = stored(uri, "old")
    assert [(r.seq, r.content) for r in after[-2:]] == [(4, "d"), (5, after[-1].content)]
    assert sorted(r.content for r in after[:6]) == ["A", "B", "C", "a", "b", "c"]  # untouched
    assert chat(svc, "e", "old")[1] is None and [r.seq for r in stored(uri, "old")][-2:] == [6, 7]


# ---------------------------------------------------------------------------------------------- processes

ROUNDS = 60
CONVERSATIONS = 6
LEASE_S = 0.4


def _worker(uri: str, worker: int, seed: int, cids: list[str], barrier: Any, results: Any) -> None:
    """One chat function process: ROUNDS chats, each at the same moment as the other process's chat on
    the same conversation, with random delays, failures, stalls past the claim's lease, and claims left
    behind as by a process killed mid-answer."""
    rng = random.Random(seed)
    llm = ScriptedLLM(seed)
    svc = make_service(Path(uri), llm, lease_s=LEASE_S)
    store = svc.store
    log: list[tuple[int, str, str, str]] = []
    for r in range(ROUNDS):
        cid = cids[r % len(cids)]
        action = rng.choices(["ok", "fail", "slow", "abandon"], weights=[70, 10, 10, 10])[0]
        question = f"w{worker}-r{r}"
        barrier.wait(scaled(120))
        time.sleep(rng.choice([0.0, 0.0, rng.uniform(0, 0.05), rng.uniform(0, 2 * LEASE_S)]))
        if action == "abandon":  # a turn whose process died after claiming: nothing but the claim is written
            try:
                assert store.begin_turn(cid, tenant=ALICE.tenant, principal=ALICE.principal, lease_s=LEASE_S)
                outcome = "abandoned"
            except Exception as exc:
                outcome = f"abandon-refused:{type(exc).__name__}"
            log.append((r, cid, question, outcome))
            continue
        llm.plan, llm.slow_s = action, LEASE_S * 1.5
        replies, err = chat(svc, question, cid)
        if err is None:
            outcome = "stored"
        elif err.code is ErrorCode.CONVERSATION_BUSY:
            outcome = "lost" if replies else "busy"
        else:
            outcome = f"error:{err.code.value}"
        log.append((r, cid, question, outcome))
    results.put((worker, log, llm.refused))


def test_concurrent_turns_across_two_processes(tmp_path: Path) -> None:
    uri = tmp_path / "db"
    setup = make_service(uri, ScriptedLLM())
    cids = [chat(setup, f"seed-{i}")[0][-1].conversation_id for i in range(CONVERSATIONS)]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    seed = random.randrange(1 << 30)
    procs = [
        ctx.Process(target=_worker, args=(str(uri), w, seed + w, cids, barrier, results), daemon=True) for w in (0, 1)
    ]
    for p in procs:
        p.start()
    logs, refused = {}, []
    for _ in procs:
        worker, log, ref = results.get(timeout=scaled(600))
        logs[worker] = log
        refused += ref
    for p in procs:
        p.join(scaled(60))
        assert p.exitcode == 0
    assert not refused, f"the model was sent non-alternating roles: {refused[:3]} (seed {seed})"

    outcomes = Counter(o for log in logs.values() for *_, o in log)
    pairs = Counter(
        tuple(sorted((a[3], b[3]))) for a, b in zip(logs[0], logs[1], strict=True)
    )  # what each round's two concurrent turns came to
    print(f"\nseed {seed}; outcomes {dict(outcomes)}; pairs {dict(pairs)}")
    assert set(outcomes) <= {"stored", "busy", "lost", "error:upstream_unavailable", "abandoned"} | {
        "abandon-refused:ConversationBusy"
    }, outcomes
    assert outcomes["stored"] and outcomes["busy"], outcomes  # both happened: the turns did overlap

    questions = {cid: [q.content for q in stored(uri, cid)[2::2]] for cid in cids}
    for cid in cids:
        rows = stored(uri, cid)
        assert rows[0].content.startswith("seed-")
        assert_serial(rows)
    # Every turn is stored whole (exactly once) or not at all, as its outcome says; and stored turns
    # keep the order their rounds ran in.
    for log in logs.values():
        for _, cid, question, outcome in log:
            assert questions[cid].count(question) == (outcome == "stored"), (question, outcome, seed)
    for cid in cids:
        rounds = [int(q.split("-r")[1]) for q in questions[cid]]
        assert rounds == sorted(rounds), (cid, questions[cid], seed)
    assert_table_clean(uri)


COMMIT_ROUNDS = 50


def _committer(uri: str, worker: int, cid: str, barrier: Any, results: Any) -> None:
    """Each round: claim the conversation with a claim that expires at once (so both processes hold one,
    the later having taken the earlier's over), then both store their turn at the same moment."""
    store = VectorStore(uri, dimension=DIM, model_id="test", full_text=False)
    won: list[bool] = []
    for r in range(COMMIT_ROUNDS):
        barrier.wait(scaled(120))
        while True:
            try:
                claim = store.begin_turn(cid, tenant=ALICE.tenant, principal=ALICE.principal, lease_s=0.0)
                break
            except ConversationBusy:  # the other's claim, made this millisecond
                time.sleep(0.002)
        assert claim is not None
        barrier.wait(scaled(120))
        q = f"w{worker}-r{r}"
        turn = [
            MessageRow(str(uuid.uuid4()), cid, claim.seq, "user", q, ""),
            MessageRow(str(uuid.uuid4()), cid, claim.seq + 1, "assistant", f"[{q}:0]", ""),
        ]
        won.append(store.commit_turn(claim, turn, tenant=ALICE.tenant, principal=ALICE.principal))
    results.put((worker, won))


def test_two_turns_stored_after_one_row_at_once_store_one(tmp_path: Path) -> None:
    # The store's last line of defence: two turns holding claims on the same row (one expired and taken
    # over) store at the same moment, from two processes: exactly one is stored, at the next seqs.
    uri = tmp_path / "db"
    cid = chat(make_service(uri, ScriptedLLM()), "seed")[0][-1].conversation_id
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_committer, args=(str(uri), w, cid, barrier, results), daemon=True) for w in (0, 1)]
    for p in procs:
        p.start()
    won = dict(results.get(timeout=scaled(600)) for _ in procs)
    for p in procs:
        p.join(scaled(60))
        assert p.exitcode == 0
    rounds = list(zip(won[0], won[1], strict=True))
    print(f"\nrounds won by one: {sum(a != b for a, b in rounds)} of {len(rounds)}")
    assert all(a != b for a, b in rounds), rounds  # never both, never neither
    rows = stored(uri, cid)
    assert_serial(rows)
    assert len(rows) == 2 + 2 * COMMIT_ROUNDS
    winners = [f"w{0 if a else 1}-r{r}" for r, (a, _) in enumerate(rounds)]
    assert [q.content for q in rows[2::2]] == winners
    assert_table_clean(uri)


# ---------------------------------------------------------------------------------------------- kill -9

HOLDER = """
import sys, threading
from pathlib import Path
from tests.service.test_conversations import ScriptedLLM, chat, make_service
llm = ScriptedLLM()
llm.plan = threading.Event()  # never set: the answer hangs until the process is killed
svc = make_service(Path(sys.argv[1]), llm, lease_s=float(sys.argv[3]))
threading.Thread(target=chat, args=(svc, "killed", sys.argv[2]), daemon=True).start()
assert llm.started.wait(60)
print("streaming", flush=True)
threading.Event().wait()
"""


def test_a_chat_process_killed_mid_answer_does_not_block_the_conversation(tmp_path: Path) -> None:
    uri = tmp_path / "db"
    svc = make_service(uri, ScriptedLLM())
    cid = chat(svc, "q0")[0][-1].conversation_id
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(uri), cid, "1.0"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "streaming"
        _, busy = chat(svc, "q-while-held", cid)
        assert busy is not None and busy.code is ErrorCode.CONVERSATION_BUSY
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(scaled(30))
    deadline = time.monotonic() + scaled(30)
    while (err := chat(svc, "q1", cid)[1]) is not None:  # until the dead turn's claim expires
        assert err.code is ErrorCode.CONVERSATION_BUSY and time.monotonic() < deadline
        time.sleep(0.1)
    rows = stored(uri, cid)
    assert [r.content for r in rows[0::2]] == ["q0", "q1"]
    assert_serial(rows)


# ---------------------------------------------------------------------------------------------- compaction


def test_turns_small_commits_are_compacted_while_turns_go_on(tmp_path: Path) -> None:
    """Each turn commits two or three small files (its claim, its messages); after messages_fold_commits
    commits the background upkeep compacts them, however few rows they held (300 turns unfolded made a
    turn's claim and commit 6x slower), while the turns go on and stay serial."""
    uri = tmp_path / "db"
    store = VectorStore(str(uri), dimension=DIM, model_id="test", full_text=False, messages_fold_commits=4)
    svc = make_service(uri, ScriptedLLM(), store=store)
    cid = chat(svc, "first")[0][-1].conversation_id  # the anchor with its claim, then the two messages
    assert store.wait_for_upkeep(scaled(60))
    chat(svc, "second", cid)  # the claim, then the messages: the fourth commit
    assert store.wait_for_upkeep(scaled(60))
    stats: Any = lancedb.connect(uri).open_table(MESSAGES_TABLE).stats()
    assert stats["fragment_stats"]["num_fragments"] == 1, stats
    for i in range(6):  # turns go on while later folds run (when the duty allows) and commits race them
        chat(svc, f"more {i}", cid)
    assert store.wait_for_upkeep(scaled(60))
    rows = stored(uri, cid)
    assert_serial(rows)
    assert len(rows) == 2 * 8
    assert_table_clean(uri)
