"""Encoder for the AWS event stream wire format (``application/vnd.amazon.eventstream``).

Bedrock's ConverseStream (like Transcribe streaming, S3 Select, Kinesis SubscribeToShard) sends its
response as a sequence of binary messages; botocore decodes them with ``botocore.eventstream``.
Each message is::

    prelude:  total length (u32 BE) | headers length (u32 BE) | CRC32 of those 8 bytes (u32 BE)
    headers:  repeated [name length (u8) | name | value type (u8, 7 = string) | value length (u16 BE) | value]
    payload:  bytes (here: JSON)
    trailer:  CRC32 of everything above (u32 BE)

Only string-valued headers are produced, which is all the Bedrock event shapes need. InvokeModelWithResponseStream
wraps each of the model's own JSON chunks in a ``chunk`` event whose payload is ``{"bytes": base64(chunk)}``
(botocore's PayloadPart; it hands the decoded bytes to the caller).
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "application/vnd.amazon.eventstream"

_PRELUDE_LEN = 12  # total length, headers length, prelude CRC
_TRAILER_LEN = 4  # message CRC
_HEADER_TYPE_STRING = 7
# botocore's decoder limits (botocore.eventstream): 16 MiB payload, 128 KiB headers.
MAX_PAYLOAD_LENGTH = 16 * 1024**2
MAX_HEADERS_LENGTH = 128 * 1024


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        name_b = name.encode("utf-8")
        value_b = value.encode("utf-8")
        if not 0 < len(name_b) <= 255:
            raise ValueError(f"event stream header name must be 1..255 bytes: {name!r}")
        if len(value_b) > 0xFFFF:
            raise ValueError(f"event stream header value too long for {name!r}")
        out += struct.pack(">B", len(name_b)) + name_b
        out += struct.pack(">BH", _HEADER_TYPE_STRING, len(value_b)) + value_b
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """Encode one event stream message with string headers and a raw payload."""
    headers_b = _encode_headers(headers)
    if len(headers_b) > MAX_HEADERS_LENGTH:
        raise ValueError("event stream headers too long")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event stream payload too long")
    total = _PRELUDE_LEN + len(headers_b) + len(payload) + _TRAILER_LEN
    prelude = struct.pack(">II", total, len(headers_b))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + headers_b + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """An ``event`` message, e.g. ``encode_event("contentBlockDelta", {"contentBlockIndex": 0, ...})``."""
    return encode_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        _json(payload),
    )


def encode_chunk(data: bytes) -> bytes:
    """An InvokeModelWithResponseStream ``chunk`` event carrying ``data`` (the model's JSON chunk)."""
    return encode_event("chunk", {"bytes": base64.b64encode(data).decode("ascii")})


def encode_exception(exception_type: str, message: str) -> bytes:
    """An ``exception`` message (e.g. ``modelStreamErrorException``); botocore raises it as EventStreamError."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        _json({"message": message}),
    )
