"""Typed errors that reach the client as an ``error`` message with a stable code."""

from __future__ import annotations

from shared.protocol import ErrorCode


class RagError(Exception):
    """An expected failure: its message is safe to show the client."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(RagError):
    code = ErrorCode.INVALID_REQUEST


class EmptyDocument(RagError):
    code = ErrorCode.EMPTY_DOCUMENT


class DocumentTooLarge(RagError):
    code = ErrorCode.DOCUMENT_TOO_LARGE


class DocumentNotFound(RagError):
    code = ErrorCode.DOCUMENT_NOT_FOUND


class DocumentBusy(RagError):
    """Another request holds the document's lease (it is being written); nothing was written: retry."""

    code = ErrorCode.DOCUMENT_BUSY


class UnknownConversation(RagError):
    code = ErrorCode.UNKNOWN_CONVERSATION


class UpstreamUnavailable(RagError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class UpstreamTimeout(RagError):
    code = ErrorCode.UPSTREAM_TIMEOUT


class Throttled(RagError):
    code = ErrorCode.THROTTLED
