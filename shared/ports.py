"""What the services need from their adapters, as typing Protocols.

ChatService and IngestionService are typed against these, not against the concrete adapters
(shared.bedrock.Embedder and ChatModel, shared.vector_store.VectorStore), so a test can hand them any
object with the right methods (an in-process model, a recording stand-in) and still type-check.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol

from shared.bedrock import ChatEvent
from shared.protocol import SearchMode
from shared.vector_store import ChunkRow, Match, MessageRow, TurnClaim
from shared.vector_store.leases import DocumentLeases


class QueryEmbedder(Protocol):
    """Embeds a question (shared.bedrock.Embedder)."""

    def embed_query(self, text: str) -> list[float]: ...


class TextEmbedder(QueryEmbedder, Protocol):
    """Embeds questions and passages (shared.bedrock.Embedder)."""

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...


class ChatStreamer(Protocol):
    """Streams an answer: TextDelta events, then one StreamDone (shared.bedrock.ChatModel).

    Closing the generator must stop the generation."""

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]: ...


class ChatStore(Protocol):
    """Chunk search and the conversation log (shared.vector_store.VectorStore, for ChatService); every
    call names the tenant (and, for conversations, the principal) it is for."""

    def search(
        self,
        vector: Sequence[float],
        *,
        tenant: str,
        top_k: int,
        max_distance: float,
        mode: SearchMode = ...,
        query_text: str | None = ...,
        rrf_k: int = ...,
    ) -> Sequence[Match]: ...

    def sample_chunks(self, count: int, *, tenant: str, seed: int | None = ...) -> tuple[int, list[dict[str, Any]]]: ...

    def conversation(self, conversation_id: str, *, tenant: str, principal: str) -> list[MessageRow]: ...

    def conversation_exists(self, conversation_id: str, *, tenant: str, principal: str) -> bool: ...

    def begin_turn(
        self, conversation_id: str, *, tenant: str, principal: str, lease_s: float, new: bool = ...
    ) -> TurnClaim | None: ...

    def renew_turn(self, claim: TurnClaim, *, tenant: str, principal: str, lease_s: float) -> bool: ...

    def commit_turn(self, claim: TurnClaim, messages: Sequence[MessageRow], *, tenant: str, principal: str) -> bool: ...

    def release_turn(self, claim: TurnClaim, *, tenant: str, principal: str) -> None: ...


class DocumentIndex(Protocol):
    """Writing and listing documents' chunks (shared.vector_store.VectorStore, for IngestionService)."""

    def replace_document(self, doc_id: str, rows: Sequence[ChunkRow], *, tenant: str) -> tuple[int, int]: ...

    def replace_documents(
        self, docs: Mapping[str, Sequence[ChunkRow]], *, tenant: str
    ) -> dict[str, tuple[int, int]]: ...

    def document_stats(self, *, tenant: str) -> dict[str, tuple[int, str | None]]: ...

    def delete_document(self, doc_id: str, *, tenant: str) -> int: ...

    def document_leases(self) -> DocumentLeases: ...
