"""Chat logic: intent routing, retrieval with the distance threshold, prompt, streamed answer, history.

Retrieval searches the caller's tenant's documents only; a conversation belongs to the principal who
started it, and any other caller (another tenant, or another principal of the same tenant) naming its id
gets ``unknown_conversation``, exactly as for an id that does not exist.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from chat.followup import retrieval_query
from chat.intent import Intent, classify
from chat.prompts import (
    CONVERSATIONAL_PROMPT,
    SYSTEM_PROMPT,
    Turn,
    alternating,
    approx_tokens,
    build_turn,
    excerpt,
    fit_history,
)
from chat.settings import Settings
from shared.bedrock import StreamDone, TextDelta
from shared.coalesce import TokenCoalescer
from shared.errors import InvalidRequest, RagError, UnknownConversation
from shared.identity import Principal
from shared.logs import record_metric
from shared.paging import (
    ENVELOPE_BYTES,
    SOURCES_BUDGET_BYTES,
    fit_history_message,
    fit_sources,
    json_size,
    take_page,
)
from shared.ports import ChatStore, ChatStreamer, QueryEmbedder
from shared.protocol import (
    DEFAULT_HISTORY_LIMIT,
    MAX_MESSAGE_BYTES,
    ChatRequest,
    ErrorCode,
    History,
    HistoryMessage,
    HistoryRequest,
    PromptKind,
    SearchMode,
    SearchRequest,
    SearchResult,
    Source,
    StreamEnd,
    StreamStart,
    Token,
    Usage,
)
from shared.timing import iso_utc, timed_ms
from shared.vector_store import ConversationBusy, Match, MessageRow, TurnClaim
from shared.ws_lambda import Emit

log = logging.getLogger(__name__)

# How long a turn's claim on its conversation lasts; renewed while the answer streams, so a turn whose
# process died holds the conversation this long at most.
TURN_LEASE_S = 30.0
BUSY_MESSAGE = (
    "an answer is being generated in this conversation; send this message again when it has ended "
    "(its stream_end or error)"
)
LOST_MESSAGE = (
    "another answer was stored in this conversation while this one was generated; this one was not "
    "stored: send the message again"
)


@dataclass(frozen=True)
class Retrieval:
    sources: list[Source]
    passages: list[str]
    max_distance: float
    ms: float
    search_mode: SearchMode = "vector"


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        embedder: QueryEmbedder,
        store: ChatStore,
        llm: ChatStreamer,
        turn_lease_s: float = TURN_LEASE_S,
    ) -> None:
        """``settings``: the chat lambda's settings, whole (retrieval, intent routing, prompt budget, token
        flushing are read from it); the adapters are built from it by chat.handler.build_service.
        ``turn_lease_s``: how long a turn's claim on its conversation lasts unrenewed."""
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.llm = llm
        self.turn_lease_s = turn_lease_s
        self._renewed: dict[str, float] = {}  # claim token -> when it was last renewed (monotonic)
        # Retrieval runs here while the caller's thread classifies the message's intent.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retrieve")

    # ------------------------------------------------------------------ retrieval

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        max_distance: float | None = None,
        search_mode: SearchMode | None = None,
        *,
        tenant: str,
        sources_budget: int = SOURCES_BUDGET_BYTES,
    ) -> Retrieval:
        """The tenant's passages for ``query``: those whose sources fit ``sources_budget`` bytes of JSON."""
        t0 = time.perf_counter()
        k = top_k or self.settings.top_k
        limit = self.settings.max_distance if max_distance is None else max_distance
        mode: SearchMode = search_mode or self.settings.search_mode
        matches = self.store.search(
            self.embedder.embed_query(query),
            tenant=tenant,
            top_k=k,
            max_distance=limit,
            mode=mode,
            query_text=query,
            rrf_k=self.settings.rrf_k,
        )
        # Only the sources that fit a reply are shown, and so only their passages go into the prompt.
        sources = fit_sources([self._source(i, m) for i, m in enumerate(matches, start=1)], sources_budget)
        elapsed = timed_ms(t0)
        record_metric("RetrievalTime", elapsed, "Milliseconds")
        return Retrieval(sources, [m.text for m in matches[: len(sources)]], limit, elapsed, mode)

    def _source(self, n: int, m: Match) -> Source:
        # page/heading come from the chunk metadata (PDF/Markdown parsers); validated from a dict so that
        # this also works while the protocol's Source does not declare them yet (pydantic ignores extras).
        return Source.model_validate(
            {
                "n": n,
                "doc_id": m.doc_id,
                "title": m.title,
                "chunk": m.chunk,
                "distance": round(m.distance, 4),
                "excerpt": excerpt(m.text, self.settings.excerpt_chars),
                "date": m.date,
                "source": m.source,
                "page": m.page,
                "heading": m.heading,
            }
        )

    def search(self, req: SearchRequest, *, tenant: str) -> SearchResult:
        # The reply echoes the query (up to 16,000 characters): the results get the rest of the message.
        echo = json_size(SearchResult(request_id=req.request_id, query=req.query, max_distance=2.0, results=[]))
        r = self.retrieve(
            req.query,
            req.top_k,
            req.max_distance,
            req.search_mode,
            tenant=tenant,
            sources_budget=MAX_MESSAGE_BYTES - ENVELOPE_BYTES - echo,
        )
        return SearchResult(request_id=req.request_id, query=req.query, max_distance=r.max_distance, results=r.sources)

    def route(self, req: ChatRequest, *, tenant: str, query: str | None = None) -> tuple[Intent, Retrieval | None]:
        """Classify the message while retrieval runs; small talk does not wait for retrieval. Retrieval
        searches ``query`` (a follow-up expanded with the conversation, chat/followup.py), else the question.

        Retrieval starts first, on a worker thread, so a question pays nothing for the classifier.
        For small talk the retrieval result is not used (it is cancelled if it has not started).
        """
        if not self.settings.intent_routing:
            return Intent.RETRIEVAL, self.retrieve(
                query or req.question, req.top_k, req.max_distance, req.search_mode, tenant=tenant
            )
        # In a copy of this context: the retrieval's log lines and Bedrock call carry the correlation id.
        future: Future[Retrieval] = self._pool.submit(
            contextvars.copy_context().run,
            self.retrieve,
            query or req.question,
            req.top_k,
            req.max_distance,
            req.search_mode,
            tenant=tenant,
        )
        intent = classify(req.question)
        if intent is Intent.CONVERSATIONAL:
            future.cancel()
            future.add_done_callback(_log_discarded)
            return intent, None
        return intent, future.result()

    # ------------------------------------------------------------------ chat

    def chat(self, req: ChatRequest, emit: Emit, caller: Principal) -> None:
        """Answer `req` for `caller`, streaming through `emit`.

        Stateful (the WebSocket chat): the earlier turns come from the stored conversation, and the
        question and answer are stored. Stateless (``req.messages`` given, the HTTP API): those messages
        are the earlier turns, nothing is read or stored, and ``conversation_id`` must be omitted (the
        reply carries a fresh id that names no stored conversation).

        A stored conversation answers one turn at a time, across processes: the turn claims the
        conversation before anything is streamed (a second chat on it meanwhile gets conversation_busy)
        and stores its question and answer at the next two seqs when the answer is complete; a turn that
        fails stores nothing and gives its claim up (see shared.vector_store.VectorStore.begin_turn).
        """
        t0 = time.perf_counter()
        stateless = req.messages is not None
        if stateless and req.conversation_id is not None:
            raise InvalidRequest("invalid chat request: chat.conversation_id: must be omitted when messages is given")
        claim = None if stateless else self._begin_turn(req.conversation_id, caller)
        try:
            self._answer(req, emit, caller, claim, t0)
        except BaseException:
            if claim is not None:
                self._release_turn(claim, caller)
            raise

    def _answer(self, req: ChatRequest, emit: Emit, caller: Principal, claim: TurnClaim | None, t0: float) -> None:
        """The turn: retrieval, the streamed answer and, for a stored conversation (``claim``), storing it."""
        stateless = claim is None
        prior = list(claim.prior) if claim is not None else []
        conversation_id = claim.conversation_id if claim is not None else str(uuid.uuid4())

        t_route = time.perf_counter()
        # A follow-up ("and how does that scale?") retrieves with the earlier question's terms (chat/followup.py).
        query = retrieval_query(req.question, req.messages or prior, self.settings.followup_rewrite)
        intent, found = self.route(req, tenant=caller.tenant, query=query)
        # The prompt (README "Prompt layout"): the stable system prompt, the earlier turns as they were sent,
        # then this turn's passages with the question; a follow-up's prompt starts with the previous turn's
        # prompt and answer, so a model server keeping evaluated prefixes evaluates only what is new.
        # The earlier turns, alternating (a client's messages, and conversations stored before turns were
        # serialized, may not); a stored question is replayed as it was sent, with its passages.
        earlier = (
            [Turn(m.role, m.content) for m in (req.messages or [])]
            if stateless
            else [Turn(m.role, str(m.rag_context.get("sent") or m.content), _passages_of(m)) for m in prior]
        )
        turns = alternating(earlier)
        history = fit_history(turns, self.settings.history_token_budget, approx_tokens)
        messages = [{"role": t.role, "content": t.content} for t in history]
        sent_passages: list[tuple[str, int, int]] = []
        if found is None:  # small talk: no passages, the conversational prompt
            limit = self.settings.max_distance if req.max_distance is None else req.max_distance
            retrieval = Retrieval([], [], limit, 0.0)
            system, sent = CONVERSATIONAL_PROMPT, req.question
        else:
            # Passages already in the prompt (an earlier turn kept in it) keep their number, unrepeated.
            shown = {(d, c): n for t in history for d, c, n in t.passages}
            turn = build_turn(req.question, found.sources, found.passages, shown)
            retrieval = Retrieval(turn.sources, found.passages, found.max_distance, found.ms, found.search_mode)
            system, sent, sent_passages = SYSTEM_PROMPT, turn.user, turn.new
        # The protocol's PromptKind has no "conversational" yet: small talk reports "no_context" and the
        # stored RAG context says intent "conversational".
        prompt_kind: PromptKind = "context" if retrieval.sources else "no_context"
        route_ms = timed_ms(t_route)
        messages.append({"role": "user", "content": sent})

        emit(StreamStart(request_id=req.request_id, conversation_id=conversation_id, sources=retrieval.sources))
        t_llm = time.perf_counter()
        parts: list[str] = []
        # Tokens are coalesced into token frames (shared/coalesce.py): the first goes out at once.
        coalescer = TokenCoalescer(self.settings.token_flush_ms, self.settings.token_flush_bytes)
        index = 0
        first_token_ms: float | None = None
        done = StreamDone("end_turn", 0, 0)

        def post(text: str | None) -> None:
            nonlocal index
            if text:
                emit(Token(request_id=req.request_id, index=index, text=text))
                index += 1

        # If the client is gone (emit raises), close() closes the HTTP stream to the LLM and the LLM
        # service stops generating.
        events = self.llm.stream(system, messages)
        try:
            for ev in events:
                if claim is not None:
                    self._renew_turn(claim, caller)
                if isinstance(ev, TextDelta):
                    if first_token_ms is None:
                        first_token_ms = timed_ms(t_llm)
                    parts.append(ev.text)
                    post(coalescer.add(ev.text))
                else:  # the stream's last event: the answer's end goes out now
                    done = ev
                    post(coalescer.flush())
            post(coalescer.flush())
        finally:
            events.close()
        answer = "".join(parts)

        if claim is not None:
            self._store_turn(
                req, caller, claim, answer, retrieval, prompt_kind, intent, found is not None, (sent, sent_passages)
            )
        _record_answer_metrics(first_token_ms, retrieval if found is not None else None)
        emit(
            StreamEnd(
                request_id=req.request_id,
                conversation_id=conversation_id,
                answer=answer,
                sources=retrieval.sources,
                usage=Usage(
                    input_tokens=done.input_tokens,
                    output_tokens=done.output_tokens,
                    total_tokens=done.input_tokens + done.output_tokens,
                ),
                stop_reason=done.stop_reason,
                prompt=prompt_kind,
                timings_ms={
                    "retrieval": retrieval.ms if found is not None else route_ms,
                    "first_token": first_token_ms if first_token_ms is not None else timed_ms(t_llm),
                    "generation": timed_ms(t_llm),
                    "total": timed_ms(t0),
                },
            )
        )

    # ------------------------------------------------------------------ turns

    def _begin_turn(self, conversation_id: str | None, caller: Principal) -> TurnClaim:
        """The caller's claim on the next turn of their conversation ``conversation_id`` (None: a new one)."""
        try:
            claim = self.store.begin_turn(
                conversation_id or str(uuid.uuid4()),
                tenant=caller.tenant,
                principal=caller.principal,
                lease_s=self.turn_lease_s,
                new=conversation_id is None,
            )
        except ConversationBusy:
            raise RagError(BUSY_MESSAGE, ErrorCode.CONVERSATION_BUSY) from None
        if claim is None:
            raise UnknownConversation(f"no conversation with id {conversation_id!r}")
        self._renewed[claim.token] = time.monotonic()
        return claim

    def _renew_turn(self, claim: TurnClaim, caller: Principal) -> None:
        """Extend the claim while the answer streams, every third of its lease."""
        if time.monotonic() - self._renewed.get(claim.token, 0.0) < self.turn_lease_s / 3:
            return
        self._renewed[claim.token] = time.monotonic()
        try:
            if not self.store.renew_turn(
                claim, tenant=caller.tenant, principal=caller.principal, lease_s=self.turn_lease_s
            ):
                log.warning("the claim on conversation %s expired and was taken", claim.conversation_id)
        except Exception as exc:  # the claim may then expire; storing the turn settles it
            log.warning("renewing the claim on conversation %s failed: %s", claim.conversation_id, type(exc).__name__)

    def _release_turn(self, claim: TurnClaim, caller: Principal) -> None:
        """Give the claim up after a failed turn (best effort: else it expires)."""
        self._renewed.pop(claim.token, None)
        try:
            self.store.release_turn(claim, tenant=caller.tenant, principal=caller.principal)
        except Exception as exc:
            log.warning("releasing the claim on conversation %s failed: %s", claim.conversation_id, type(exc).__name__)

    def _store_turn(
        self,
        req: ChatRequest,
        caller: Principal,
        claim: TurnClaim,
        answer: str,
        retrieval: Retrieval,
        prompt_kind: PromptKind,
        intent: Intent,
        retrieved: bool,
        sent: tuple[str, list[tuple[str, int, int]]],
    ) -> None:
        """The user message and the assistant message with its RAG context, at the claimed seqs, in one
        commit, as the caller's. conversation_busy when another turn was stored there first (this one
        outlived its claim). ``sent``: the user message as the model got it and (doc_id, chunk, n) of the
        passages whose text is in it, stored with the question so that later turns replay it unchanged."""
        self._renewed.pop(claim.token, None)
        now_iso = iso_utc()
        conversation_id, seq = claim.conversation_id, claim.seq
        stored = self.store.commit_turn(
            claim,
            [
                MessageRow(
                    str(uuid.uuid4()),
                    conversation_id,
                    seq,
                    "user",
                    req.question,
                    now_iso,
                    {"sent": sent[0], "passages": [list(p) for p in sent[1]]},
                ),
                MessageRow(
                    str(uuid.uuid4()),
                    conversation_id,
                    seq + 1,
                    "assistant",
                    answer,
                    now_iso,
                    {
                        "sources": [s.model_dump() for s in retrieval.sources],
                        "max_distance": retrieval.max_distance,
                        "prompt": prompt_kind,
                        "intent": str(intent),
                        "search_mode": retrieval.search_mode if retrieved else None,
                    },
                ),
            ],
            tenant=caller.tenant,
            principal=caller.principal,
        )
        if not stored:
            raise RagError(LOST_MESSAGE, ErrorCode.CONVERSATION_BUSY)

    # ------------------------------------------------------------------ history

    def _conversation(self, conversation_id: str, caller: Principal) -> list[MessageRow]:
        """The caller's conversation; UnknownConversation when they have none of this id (the same answer
        whether it does not exist or is another tenant's or another principal's)."""
        rows = self.store.conversation(conversation_id, tenant=caller.tenant, principal=caller.principal)
        if not rows and not self.store.conversation_exists(
            conversation_id, tenant=caller.tenant, principal=caller.principal
        ):  # (one whose first answer is being generated exists, with no messages yet)
            raise UnknownConversation(f"no conversation with id {conversation_id!r}")
        return rows

    def history(self, req: HistoryRequest, caller: Principal) -> History:
        """One page of the conversation, oldest first, after the message ``req.after``: at most
        ``req.limit`` messages and no more than fit one reply (shared/paging.py); ``next`` names the
        page's last message while more follow."""
        rows = self._conversation(req.conversation_id, caller)
        start = 0
        if req.after is not None:
            ids = [r.id for r in rows]
            if req.after not in ids:
                raise InvalidRequest(
                    "invalid history request: history.after: not a message of this conversation "
                    "(send the previous page's next)"
                )
            start = ids.index(req.after) + 1
        messages = (
            fit_history_message(
                HistoryMessage(
                    id=r.id,
                    role="assistant" if r.role == "assistant" else "user",
                    content=r.content,
                    created_at=r.created_at,
                    sources=[Source.model_validate(s) for s in r.rag_context.get("sources", [])],
                    max_distance=r.rag_context.get("max_distance"),
                    prompt=r.rag_context.get("prompt"),
                )
            )
            for r in rows[start:]
        )
        page, more = take_page(messages, limit=req.limit or DEFAULT_HISTORY_LIMIT)
        return History(
            request_id=req.request_id,
            conversation_id=req.conversation_id,
            messages=page,
            next=page[-1].id if more and page else None,
        )


def _passages_of(m: MessageRow) -> tuple[tuple[str, int, int], ...]:
    """(doc_id, chunk, n) of the passages whose text a stored question was sent with."""
    return tuple((str(d), int(c), int(n)) for d, c, n in m.rag_context.get("passages", []))


def _log_discarded(future: Future[Retrieval]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("discarded retrieval for small talk failed: %s", future.exception())


def _record_answer_metrics(first_token_ms: float | None, retrieval: Retrieval | None) -> None:
    """The answer's metrics (README "Observability"): time to first token; for a question that retrieved (not
    small talk), the sources kept and NoContext (1 when none was kept: its average is the no-context rate)."""
    if first_token_ms is not None:
        record_metric("TimeToFirstToken", first_token_ms, "Milliseconds")
    if retrieval is not None:
        record_metric("SourcesKept", len(retrieval.sources), "Count")
        record_metric("NoContext", 0 if retrieval.sources else 1, "Count")
