"""The follow-up rule (chat/followup.py): which questions lean on the conversation, and what they retrieve on."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from chat.followup import content_words, is_followup, retrieval_query


@dataclass(frozen=True)
class T:
    role: str
    content: str


EARLIER = [
    T("user", "What maximum batching window does the Kinesis event source mapping use?"),
    T("assistant", "Two seconds [1]."),
]


@pytest.mark.parametrize(
    "question",
    [
        "And how does that trade latency against cost?",
        "Why?",
        "What about the cost?",
        "How do I change it?",
        "Is that the default?",
        "also for S3 Vectors",
    ],
)
def test_follow_ups_are_recognised(question: str) -> None:
    assert is_followup(question)


@pytest.mark.parametrize(
    "question",
    [
        "What distance threshold did the author settle on for the LanceDB vector search?",
        "Which embedding model does the Kinesis pipeline use to index documents?",
        "How does Lambda Web Adapter forward invocations to a FastAPI application?",
        "What is the capital of Australia?",
    ],
)
def test_questions_of_their_own_are_not(question: str) -> None:
    assert not is_followup(question)


def test_a_follow_up_gets_the_earlier_questions_terms_after_its_own_words() -> None:
    q = retrieval_query("And how does that trade latency against cost?", EARLIER)
    assert q.startswith("And how does that trade latency against cost? (")
    added = q[q.index("(") + 1 : -1].split()
    assert {"kinesis", "batching", "window", "event", "source", "mapping"} <= set(added)
    assert "what" not in added and "cost" not in added  # stopwords and the question's own words are not repeated


def test_a_question_of_its_own_retrieves_on_its_own_words() -> None:
    q = "Which embedding model does the Kinesis pipeline use to index documents?"
    assert retrieval_query(q, EARLIER) == q


def test_turned_off_or_nothing_earlier_leaves_the_question_alone() -> None:
    q = "And how does that trade latency against cost?"
    assert retrieval_query(q, EARLIER, enabled=False) == q
    assert retrieval_query(q, []) == q
    assert retrieval_query(q, [T("assistant", "Hello! Ask me about your documents.")]) == q


def test_a_chain_of_follow_ups_keeps_the_topic_of_the_question_it_started_from() -> None:
    chain = [*EARLIER, T("user", "And why that value?"), T("assistant", "Latency [1].")]
    q = retrieval_query("What does it cost?", chain)
    assert "kinesis" in q and "value" in q
    # ... but no further back than the question before a follow-up.
    older = [T("user", "Tell me about gold prices"), T("assistant", "..."), *EARLIER]
    assert "gold" not in retrieval_query("Why?", older)


def test_content_words_drop_stopwords_and_keep_technical_tokens() -> None:
    assert content_words("What is the maxDistance of S3-Vectors in v3.2?") == ["maxdistance", "s3-vectors", "v3.2"]


def test_a_why_question_of_its_own_is_not_a_follow_up_but_a_bare_why_is() -> None:
    assert not is_followup("Why is a vector queryable as soon as PutVectors returns?")
    assert is_followup("Why that value?") and is_followup("why?")
