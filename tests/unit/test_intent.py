"""Intent routing: the small-talk classifier (pure), and how ChatService uses it.

The ChatService tests use recording stand-ins for the embedder, the store and the LLM: what they check is
which system prompt is chosen, what is stored, and that small talk does not wait for retrieval (the real
parts are exercised by test_e2e.py and test_hybrid.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from typing import Any

import pytest

from chat.intent import Intent, classify, is_conversational
from chat.prompts import CONVERSATIONAL_PROMPT, NO_CONTEXT_PROMPT, SYSTEM_PROMPT
from chat.service import ChatService
from chat.settings import Settings
from shared.bedrock import ChatEvent, StreamDone, TextDelta
from shared.identity import anonymous
from shared.protocol import ChatRequest, StreamEnd
from shared.vector_store import Match, MessageRow, TurnClaim
from tests.support.timeouts import scaled

CONVERSATIONAL = [
    "hi",
    "Hi!",
    "hello",
    "Hello there",
    "hey",
    "Hey :)",
    "heyyy",
    "Hiii",
    "yo",
    "good morning",
    "Good morning!!",
    "Good evening everyone",
    "morning",
    "howdy",
    "hi bot",
    "Hello 👋",
    "👋",
    "🙂👍",
    "thanks!",
    "Thanks.",
    "thank you",
    "Thank you so much!",
    "thanks a lot :-)",
    "Thanks again!",
    "thx",
    "ty",
    "cheers",
    "many thanks",
    "much appreciated",
    "thank you for your help",
    "thanks for the answer",
    "that was helpful, thanks",
    "that helps, thank you!",
    "how are you?",
    "How are you doing today?",
    "how's it going?",
    "how are u",
    "hi, how are you?",
    "hey there, what's up?",
    "I'm fine, and you?",
    "nice to meet you",
    "ok",
    "OK.",
    "okay thanks",
    "ok thanks bye",
    "great, thanks!",
    "Awesome!",
    "got it",
    "makes sense, thank you",
    "sounds good",
    "no worries",
    "lol",
    "haha",
    "yes, thanks!",
    "bye",
    "Goodbye!",
    "thanks, bye",
    "see you later",
    "good night",
    "take care!",
    "have a nice day",
    "who are you?",
    "what is your name?",
    "are you a bot?",
    "Danke schön",
    "merci beaucoup",
    "Hola",
    "I\u2019m fine, thanks",  # typographic apostrophe
]

RETRIEVAL = [
    "How do volcanoes erupt?",
    "hi, how do volcanoes erupt?",
    "Hello! Can you summarize the report on glaciers?",
    "thanks, and what about lava?",
    "Thanks. Now explain the second passage.",
    "Who won the 1998 World Cup?",
    "good evidence for vitamin D?",
    "Good morning routines for productivity",
    "good night photography tips",
    "how are volcanoes formed?",
    "how are you supposed to bake bread",
    "how do you do photosynthesis",
    "what's new in version 2?",
    "hello world program in python",
    "hey what is the capital of France",
    "ok so what causes it?",
    "thanks to what did rome fall",
    "cheers and applause in theatre history",
    "goodbye lenin film plot",
    "bye-election results in 2019",
    "great barrier reef bleaching",
    "nice weather in France in May",
    "morning sickness in pregnancy",
    "thank you ma'am movie",
    "Is BRCA1 linked to breast cancer?",
    "0-dimensional biomaterials lack inductive properties.",
    "summarize the document",
    "tell me more",
    "more",
    "continue",
    "go on",
    "explain",
    "why?",
    "and?",
    "yes",
    "no",
    "sure",
    "yes please",
    "help",
    "what can you do?",
    "what do the documents say about sourdough?",
    "who are the authors?",
    "What is your name in the paper's acknowledgements?",
    "?",
    "",
    "   ",
    "hi " * 20,  # too long to be small talk
]


@pytest.mark.parametrize("message", CONVERSATIONAL)
def test_small_talk_is_conversational(message: str) -> None:
    assert classify(message) is Intent.CONVERSATIONAL
    assert is_conversational(message)


@pytest.mark.parametrize("message", RETRIEVAL)
def test_questions_and_anything_unsure_go_to_retrieval(message: str) -> None:
    assert classify(message) is Intent.RETRIEVAL


# ---------------------------------------------------------------------------------------------- service


class SlowEmbedder:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        # When set, embed_query holds until the gate opens; timed_out records that nobody opened it.
        self.gate: threading.Event | None = None
        self.timed_out = False

    def embed_query(self, text: str) -> list[float]:
        self.calls += 1
        if self.gate is not None and not self.gate.wait(scaled(10)):
            self.timed_out = True
        time.sleep(self.delay)
        return [1.0, 0.0]


class FakeStore:
    def __init__(self) -> None:
        self.saved: list[MessageRow] = []
        self.searched = threading.Event()

    def search(self, vector: Sequence[float], **kwargs: Any) -> list[Match]:
        self.searched.set()
        m = Match("volcanoes", 0, "Volcanoes", "Magma rises.", 0.3, None, None, {"page": 2}, page=2)
        return [m] if kwargs["max_distance"] >= 0.3 else []

    def conversation(self, conversation_id: str, **_: str) -> list[MessageRow]:
        return [r for r in self.saved if r.conversation_id == conversation_id]

    def conversation_exists(self, conversation_id: str, **_: str) -> bool:
        return bool(self.conversation(conversation_id))

    def begin_turn(self, conversation_id: str, **_: Any) -> TurnClaim:
        prior = tuple(self.conversation(conversation_id))
        return TurnClaim(conversation_id, "token", len(prior), prior, {"id": "anchor"})

    def renew_turn(self, claim: TurnClaim, **_: Any) -> bool:
        return True

    def commit_turn(self, claim: TurnClaim, messages: Sequence[MessageRow], **_: str) -> bool:
        self.saved.extend(messages)
        return True

    def release_turn(self, claim: TurnClaim, **_: str) -> None:
        pass


class RecordingLLM:
    def __init__(self) -> None:
        self.systems: list[str] = []
        self.questions: list[str] = []  # the last user message of each call

    def stream(self, system: str, messages: Sequence[dict[str, str]]) -> Generator[ChatEvent, None, None]:
        self.systems.append(system)
        self.questions.append(messages[-1]["content"])
        yield TextDelta("Hello!")
        yield StreamDone("end_turn", 5, 1)


def make_service(delay: float = 0.0, routing: bool = True) -> tuple[ChatService, SlowEmbedder, FakeStore, RecordingLLM]:
    emb, store, llm = SlowEmbedder(delay), FakeStore(), RecordingLLM()
    settings = Settings(max_distance=0.7, intent_routing=routing)
    svc = ChatService(settings, embedder=emb, store=store, llm=llm)
    return svc, emb, store, llm


def run_chat(svc: ChatService, question: str) -> StreamEnd:
    out: list[Any] = []
    svc.chat(ChatRequest(action="chat", request_id="r", question=question), out.append, anonymous())
    end = out[-1]
    assert isinstance(end, StreamEnd)
    return end


def test_small_talk_gets_the_conversational_prompt_and_no_sources() -> None:
    svc, _, store, llm = make_service()
    end = run_chat(svc, "Hi there!")
    assert end.sources == [] and end.prompt == "no_context"
    assert llm.systems == [CONVERSATIONAL_PROMPT] and CONVERSATIONAL_PROMPT != NO_CONTEXT_PROMPT
    assistant = store.saved[-1]
    assert assistant.role == "assistant" and assistant.rag_context["intent"] == "conversational"
    assert assistant.rag_context["sources"] == [] and assistant.rag_context["prompt"] == "no_context"


def test_a_question_is_answered_from_retrieval() -> None:
    svc, emb, store, llm = make_service()
    end = run_chat(svc, "How do volcanoes erupt?")
    assert [s.doc_id for s in end.sources] == ["volcanoes"] and end.prompt == "context"
    assert emb.calls == 1 and "[1] Volcanoes" in llm.questions[0] and llm.systems[0] == SYSTEM_PROMPT
    assert store.saved[-1].rag_context["intent"] == "retrieval"
    assert store.saved[-1].rag_context["search_mode"] == "hybrid"


def test_small_talk_does_not_wait_for_retrieval() -> None:
    # Retrieval starts at once (concurrently with the classifier); small talk does not wait for it: the
    # answer is complete while the embedder is still held (had it waited, the hold would have timed out).
    svc, emb, _, _ = make_service()
    emb.gate = threading.Event()
    try:
        end = run_chat(svc, "thanks!")
        assert not emb.timed_out, "small talk waited for retrieval"
    finally:
        emb.gate.set()
    assert end.sources == []
    # ...and a question still gets its sources after the same slow retrieval.
    svc2, _, _, _ = make_service(delay=0.2)
    assert run_chat(svc2, "What is magma?").sources


def test_routing_can_be_switched_off() -> None:
    svc, emb, _, llm = make_service(routing=False)
    end = run_chat(svc, "hi")
    assert emb.calls == 1 and end.prompt == "context" and llm.systems[0] != CONVERSATIONAL_PROMPT
