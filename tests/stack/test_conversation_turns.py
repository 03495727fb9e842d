"""Two chats sent at once on one conversation, over two WebSockets, through the whole stack.

One is answered; the other gets ``conversation_busy`` before any token (or, had the first ended already,
is answered after it). The stored conversation alternates user/assistant with no repeated turn.
"""

from __future__ import annotations

import threading
from typing import Any

from shared.protocol import SERVER_MESSAGE
from tests.conftest import StackFactory, WsClient

ROUNDS = 5


def _collect(client: WsClient, into: dict[WsClient, list[dict[str, Any]]]) -> None:
    """The replies of the chat in flight on ``client``, up to its stream_end or error."""
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] not in ("stream_end", "error"):
        out.append(client.recv())
    into[client] = out


def test_two_concurrent_chats_on_one_conversation(start_stack: StackFactory) -> None:
    stack = start_stack("turns")
    with WsClient(stack.ws_url) as first, WsClient(stack.ws_url) as second:
        opening = first.chat({"action": "chat", "request_id": "open", "question": "Hello there!"})
        assert opening[-1]["type"] == "stream_end", opening[-1]
        cid = opening[-1]["conversation_id"]
        answered, busy = ["Hello there!"], 0
        for r in range(ROUNDS):
            questions = {first: f"Question A{r}?", second: f"Question B{r}?"}
            replies: dict[WsClient, list[dict[str, Any]]] = {}
            # Both sent before either is read: the two chat invocations run at once.
            for client, question in questions.items():
                client.send({"action": "chat", "request_id": f"r{r}", "conversation_id": cid, "question": question})

            threads = [threading.Thread(target=_collect, args=(c, replies)) for c in questions]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ended = []
            for client, out in replies.items():
                for m in out:
                    SERVER_MESSAGE.validate_python(m)
                last = out[-1]
                if last["type"] == "stream_end":
                    assert last["conversation_id"] == cid
                    ended.append((client, last))
                else:
                    # Refused before anything was streamed, with a typed, retryable error.
                    assert out == [last] and last["code"] == "conversation_busy", out
                    assert "answer is being generated" in last["message"]
                    busy += 1
            assert ended, replies  # one of the two is always answered
            answered += [questions[c] for c, _ in ended]
        history = first.request({"action": "history", "request_id": "h", "conversation_id": cid})
        assert history["type"] == "history", history
        msgs = history["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2) and len(msgs) % 2 == 0
        assert sorted(m["content"] for m in msgs[0::2]) == sorted(answered)
        assert len(msgs) == 2 * len(answered)
        assert busy >= 1, "the two chats never overlapped"
