"""llm.eventstream frames must decode with botocore's own event stream decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer, EventStreamMessage

from llm.eventstream import encode_event, encode_exception, encode_message


def _decode(data: bytes, chunk: int | None = None) -> list[EventStreamMessage]:
    buf = EventStreamBuffer()
    if chunk is None:
        buf.add_data(data)
    else:  # feed in small pieces, as a network read would
        out: list[EventStreamMessage] = []
        for i in range(0, len(data), chunk):
            buf.add_data(data[i : i + chunk])
            out.extend(buf)
        return out
    return list(buf)


def test_event_round_trip() -> None:
    payload = {"contentBlockIndex": 0, "delta": {"text": "héllo ✓"}}
    (msg,) = _decode(encode_event("contentBlockDelta", payload))
    assert msg.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(msg.payload) == payload
    assert msg.to_response_dict()["status_code"] == 200


def test_exception_round_trip() -> None:
    (msg,) = _decode(encode_exception("modelStreamErrorException", "boom"))
    assert msg.headers[":message-type"] == "exception"
    assert msg.headers[":exception-type"] == "modelStreamErrorException"
    assert json.loads(msg.payload) == {"message": "boom"}
    assert msg.to_response_dict()["status_code"] == 400


def test_many_frames_split_across_reads() -> None:
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f"t{i}"}}) for i in range(50)]
    events += [("contentBlockStop", {"contentBlockIndex": 0}), ("messageStop", {"stopReason": "end_turn"})]
    data = b"".join(encode_event(t, p) for t, p in events)
    msgs = _decode(data, chunk=7)
    assert [(m.headers[":event-type"], json.loads(m.payload)) for m in msgs] == events


def test_empty_payload_and_bad_header() -> None:
    (msg,) = _decode(encode_message({":message-type": "event", ":event-type": "x"}, b""))
    assert msg.payload == b""
    with pytest.raises(ValueError):
        encode_message({"": "x"}, b"")


def test_botocore_parses_converse_stream_events() -> None:
    """Full path: botocore's EventStream parser for the bedrock-runtime ConverseStream output shape."""
    import botocore.session
    from botocore.eventstream import EventStream
    from botocore.parsers import EventStreamJSONParser

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("ConverseStream").output_shape.members["stream"]

    class _Raw:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def stream(self):  # type: ignore[no-untyped-def]
            yield self._data

        def close(self) -> None:
            pass

    data = encode_event("messageStart", {"role": "assistant"}) + encode_event(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}
    )
    events = list(EventStream(_Raw(data), shape, EventStreamJSONParser(), "ConverseStream"))
    assert events == [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "hi"}}},
    ]

    from botocore.exceptions import EventStreamError

    bad = EventStream(
        _Raw(encode_exception("modelStreamErrorException", "went wrong")),
        shape,
        EventStreamJSONParser(),
        "ConverseStream",
    )
    with pytest.raises(EventStreamError) as exc_info:
        list(bad)
    assert exc_info.value.response["Error"]["Code"] == "modelStreamErrorException"
    assert "went wrong" in exc_info.value.response["Error"]["Message"]
