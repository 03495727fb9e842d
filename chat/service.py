"""Chat logic: retrieval with the distance threshold, prompt, streamed answer, history."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from chat.prompts import Turn, approx_tokens, build_system_prompt, excerpt, fit_history
from shared.bedrock import ChatModel, Embedder, StreamDone, TextDelta
from shared.errors import UnknownConversation
from shared.protocol import (
    ChatRequest,
    History,
    HistoryMessage,
    HistoryRequest,
    SearchRequest,
    SearchResult,
    Source,
    StreamEnd,
    StreamStart,
    Token,
    Usage,
)
from shared.vector_store import MessageRow, VectorStore, timed_ms
from shared.ws_lambda import Emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrieval:
    sources: list[Source]
    passages: list[str]
    max_distance: float
    ms: float


class ChatService:
    def __init__(
        self,
        *,
        embedder: Embedder,
        store: VectorStore,
        llm: ChatModel,
        top_k: int = 5,
        max_distance: float = 1.2,
        excerpt_chars: int = 300,
        history_token_budget: int = 1024,
        token_flush_ms: float = 0.0,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.llm = llm
        self.top_k = top_k
        self.max_distance = max_distance
        self.excerpt_chars = excerpt_chars
        self.history_token_budget = history_token_budget
        self.token_flush_ms = token_flush_ms

    # ------------------------------------------------------------------ retrieval

    def retrieve(self, query: str, top_k: int | None = None, max_distance: float | None = None) -> Retrieval:
        t0 = time.perf_counter()
        k = top_k or self.top_k
        limit = self.max_distance if max_distance is None else max_distance
        matches = self.store.search(self.embedder.embed_query(query), top_k=k, max_distance=limit)
        sources = [
            Source(
                n=i,
                doc_id=m.doc_id,
                title=m.title,
                chunk=m.chunk,
                distance=round(m.distance, 4),
                excerpt=excerpt(m.text, self.excerpt_chars),
                date=m.date,
                source=m.source,
            )
            for i, m in enumerate(matches, start=1)
        ]
        return Retrieval(sources, [m.text for m in matches], limit, timed_ms(t0))

    def search(self, req: SearchRequest) -> SearchResult:
        r = self.retrieve(req.query, req.top_k, req.max_distance)
        return SearchResult(request_id=req.request_id, query=req.query, max_distance=r.max_distance, results=r.sources)

    # ------------------------------------------------------------------ chat

    def chat(self, req: ChatRequest, emit: Emit) -> None:
        t0 = time.perf_counter()
        prior: list[MessageRow] = []
        if req.conversation_id is not None:
            prior = self.store.conversation(req.conversation_id)
            if not prior:
                raise UnknownConversation(f"no conversation with id {req.conversation_id!r}")
        conversation_id = req.conversation_id or str(uuid.uuid4())

        retrieval = self.retrieve(req.question, req.top_k, req.max_distance)
        system = build_system_prompt(retrieval.sources, retrieval.passages)
        prompt_kind = "context" if retrieval.sources else "no_context"
        history = fit_history([Turn(m.role, m.content) for m in prior], self.history_token_budget, approx_tokens)
        messages = [{"role": t.role, "content": t.content} for t in history]
        messages.append({"role": "user", "content": req.question})

        emit(StreamStart(request_id=req.request_id, conversation_id=conversation_id, sources=retrieval.sources))
        t_llm = time.perf_counter()
        parts: list[str] = []
        pending: list[str] = []
        index = 0
        last_flush = time.perf_counter()
        first_token_ms: float | None = None
        done = StreamDone("end_turn", 0, 0)

        def flush() -> None:
            nonlocal index, pending
            if pending:
                emit(Token(request_id=req.request_id, index=index, text="".join(pending)))
                index += 1
                pending = []

        # If the client is gone (emit raises), close() closes the HTTP stream to the LLM and the LLM
        # service stops generating.
        events = self.llm.stream(system, messages)
        try:
            for ev in events:
                if isinstance(ev, TextDelta):
                    if first_token_ms is None:
                        first_token_ms = timed_ms(t_llm)
                    parts.append(ev.text)
                    pending.append(ev.text)
                    now = time.perf_counter()
                    if (now - last_flush) * 1000 >= self.token_flush_ms:
                        flush()
                        last_flush = now
                else:
                    done = ev
            flush()
        finally:
            events.close()
        answer = "".join(parts)

        now_iso = _now_iso()
        seq = prior[-1].seq + 1 if prior else 0
        self.store.append_messages(
            [
                MessageRow(str(uuid.uuid4()), conversation_id, seq, "user", req.question, now_iso),
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
                    },
                ),
            ]
        )
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
                    "retrieval": retrieval.ms,
                    "first_token": first_token_ms if first_token_ms is not None else timed_ms(t_llm),
                    "generation": timed_ms(t_llm),
                    "total": timed_ms(t0),
                },
            )
        )

    # ------------------------------------------------------------------ history

    def history(self, req: HistoryRequest) -> History:
        rows = self.store.conversation(req.conversation_id)
        if not rows:
            raise UnknownConversation(f"no conversation with id {req.conversation_id!r}")
        return History(
            request_id=req.request_id,
            conversation_id=req.conversation_id,
            messages=[
                HistoryMessage(
                    id=r.id,
                    role="assistant" if r.role == "assistant" else "user",
                    content=r.content,
                    created_at=r.created_at,
                    sources=[Source.model_validate(s) for s in r.rag_context.get("sources", [])],
                    max_distance=r.rag_context.get("max_distance"),
                    prompt=r.rag_context.get("prompt"),
                )
                for r in rows
            ],
        )


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")
