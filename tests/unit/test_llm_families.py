"""The LLM service's model map and InvokeModel families (llm/families.py), without a process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llm.families import (
    DEFAULT_MODEL_IDS,
    ModelMap,
    Outcome,
    Renderer,
    UnknownModel,
    base_model_id,
    detect_family,
    inst_prompt_messages,
    llama_prompt_messages,
    parse_model_ids,
    parse_request,
    titan_prompt_messages,
)
from llm.settings import Settings
from shared.aws_http import ValidationError as AwsValidationError


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("amazon.nova-micro-v1:0", "amazon.nova-micro-v1:0"),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("eu.amazon.nova-lite-v1:0", "amazon.nova-lite-v1:0"),
        ("apac.meta.llama3-2-3b-instruct-v1:0", "meta.llama3-2-3b-instruct-v1:0"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("arn:aws:bedrock:us-west-2::foundation-model/amazon.titan-text-express-v1", "amazon.titan-text-express-v1"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-3-haiku-20240307-v1:0",
        ),
        ("local-llm", "local-llm"),
        ("us.local", "us.local"),  # a prefix only when a provider.model follows
    ],
)
def test_every_form_of_an_id_reduces_to_its_base_id(given: str, base: str) -> None:
    assert base_model_id(given) == base


def test_the_default_map_serves_every_family_and_the_local_id() -> None:
    models = ModelMap(DEFAULT_MODEL_IDS, "local-llm")
    families = {models.resolve(i).family for i in DEFAULT_MODEL_IDS}
    assert families == {"anthropic", "nova", "llama", "mistral", "titan"}
    assert models.resolve("local-llm").family is None
    assert models.resolve("us.amazon.nova-micro-v1:0").model_id == "amazon.nova-micro-v1:0"
    assert "arn:aws:bedrock:us-west-2::foundation-model/amazon.nova-lite-v1:0" in models


def test_an_unknown_id_is_an_invalid_identifier_naming_the_setting() -> None:
    models = ModelMap(DEFAULT_MODEL_IDS, "local-llm")
    with pytest.raises(UnknownModel) as info:
        models.resolve("cohere.command-r-v1:0")
    assert (info.value.status, info.value.code) == (400, "ValidationException")
    assert info.value.message.startswith("The provided model identifier is invalid.")
    assert "LLM_MODEL_IDS" in info.value.message and "cohere" not in info.value.message


def test_model_ids_setting_takes_ids_and_families() -> None:
    s = Settings(model_ids="my.model-v1, custom-model=anthropic  us.meta.llama3-8b-instruct-v1:0")  # type: ignore[arg-type]
    models = ModelMap(s.model_ids, s.model_id)
    assert models.resolve("my.model-v1").family is None
    assert models.resolve("custom-model").family == "anthropic"
    assert models.resolve("meta.llama3-8b-instruct-v1:0").family == "llama"
    with pytest.raises(UnknownModel):
        models.resolve("amazon.nova-micro-v1:0")  # not listed any more
    with pytest.raises(ValueError, match="unknown family"):
        parse_model_ids(["x=gpt"])
    with pytest.raises(ValueError, match="unknown family"):
        Settings(model_ids="x=gpt")  # type: ignore[arg-type]


# -- prompt-string families: chat templates back into turns ----------------------------------------------------------


def test_a_llama3_prompt_becomes_its_turns() -> None:
    prompt = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is lava?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nMolten rock.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd basalt?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert llama_prompt_messages(prompt) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is lava?"},
        {"role": "assistant", "content": "Molten rock."},
        {"role": "user", "content": "And basalt?"},
    ]
    assert llama_prompt_messages("What is lava?") == [{"role": "user", "content": "What is lava?"}]
    assert llama_prompt_messages("<|begin_of_text|>What is lava?") == [{"role": "user", "content": "What is lava?"}]


def test_an_inst_prompt_becomes_its_turns() -> None:
    prompt = (
        "<s>[INST] What is your favourite condiment? [/INST] Lemon juice.</s>[INST] Do you have mayonnaise "
        "recipes? [/INST]"
    )
    assert inst_prompt_messages(prompt) == [
        {"role": "user", "content": "What is your favourite condiment?"},
        {"role": "assistant", "content": "Lemon juice."},
        {"role": "user", "content": "Do you have mayonnaise recipes?"},
    ]
    assert inst_prompt_messages("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert inst_prompt_messages("plain text") == [{"role": "user", "content": "plain text"}]


def test_a_titan_prompt_becomes_its_turns() -> None:
    assert titan_prompt_messages("User: What is lava?\nBot:") == [{"role": "user", "content": "What is lava?"}]
    assert titan_prompt_messages("Context: rocks.\n\nUser: What is lava?\nBot: Molten rock.\nUser: Why?\nBot:") == [
        {"role": "user", "content": "Context: rocks.\n\nWhat is lava?"},
        {"role": "assistant", "content": "Molten rock."},
        {"role": "user", "content": "Why?"},
    ]
    assert titan_prompt_messages("Summarize: lava") == [{"role": "user", "content": "Summarize: lava"}]


# -- request bodies ------------------------------------------------------------------------------------------------


def _parse(family: Any, body: dict[str, Any]) -> Any:
    return parse_request(family, json.dumps(body).encode())


def test_each_family_body_maps_onto_one_chat_request() -> None:
    fam, r = _parse(
        "anthropic",
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 7,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "temperature": 0.1,
            "top_p": 0.5,
            "top_k": 3,
            "stop_sequences": ["END"],
        },
    )
    assert fam == "anthropic"
    assert r.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (r.max_tokens, r.temperature, r.top_p, r.top_k, r.stop) == (7, 0.1, 0.5, 3, ("END",))

    _, r = _parse(
        "nova",
        {
            "schemaVersion": "messages-v1",
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"max_new_tokens": 9, "top_p": 0.4, "topK": 2, "stopSequences": ["x"]},
        },
    )
    assert (r.max_tokens, r.top_p, r.top_k, r.stop, r.messages[0]["role"]) == (9, 0.4, 2, ("x",), "system")

    _, r = _parse("llama", {"prompt": "Hi", "max_gen_len": 5, "temperature": 0.2, "top_p": 0.9})
    assert (r.messages, r.max_tokens, r.temperature, r.top_p) == ([{"role": "user", "content": "Hi"}], 5, 0.2, 0.9)

    _, r = _parse("mistral", {"prompt": "<s>[INST] Hi [/INST]", "max_tokens": 4, "stop": ["."], "top_k": 5})
    assert (r.messages, r.max_tokens, r.stop, r.top_k) == ([{"role": "user", "content": "Hi"}], 4, (".",), 5)

    _, r = _parse(
        "titan", {"inputText": "User: Hi\nBot:", "textGenerationConfig": {"maxTokenCount": 6, "stopSequences": ["|"]}}
    )
    assert (r.messages, r.max_tokens, r.stop) == ([{"role": "user", "content": "Hi"}], 6, ("|",))


@pytest.mark.parametrize(
    ("family", "body", "fragment"),
    [
        ("anthropic", {"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}, "[anthropic_version]"),
        (
            "anthropic",
            {"anthropic_version": "bedrock-2023-05-31", "messages": [{"role": "user", "content": "Hi"}]},
            "required key [max_tokens] not found",
        ),
        (
            "anthropic",
            {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "only text content blocks",
        ),
        ("anthropic", {"inputText": "Hi"}, "extraneous key [inputText]"),
        ("nova", {"prompt": "Hi"}, "required key [messages] not found"),
        ("nova", {"messages": [{"role": "user", "content": [{"image": {}}]}]}, "only text content blocks"),
        ("llama", {"prompt": "Hi", "max_tokens": 5}, "extraneous key [max_tokens]"),
        ("llama", {"inputText": "Hi"}, "required key [prompt] not found"),
        ("mistral", {"prompt": "Hi", "max_gen_len": 5}, "extraneous key [max_gen_len]"),
        ("mistral", {"prompt": "Hi", "max_tokens": "5"}, "#/max_tokens"),
        ("titan", {"prompt": "Hi"}, "required key [inputText] not found"),
        ("titan", {"inputText": "Hi", "textGenerationConfig": {"maxTokens": 5}}, "#/textGenerationConfig: extraneous"),
        ("titan", {"inputText": "Hi", "textGenerationConfig": {"temperature": True}}, "#/textGenerationConfig/temp"),
    ],
)
def test_a_body_of_the_wrong_shape_names_the_field(family: Any, body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AwsValidationError) as info:
        _parse(family, body)
    assert info.value.code == "ValidationException"
    assert info.value.message.startswith("Malformed input request")
    assert fragment in info.value.message


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1]"])
def test_a_body_that_is_no_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(AwsValidationError, match="Malformed input request"):
        parse_request("nova", raw)


def test_an_id_of_no_provider_takes_any_family_body() -> None:
    assert detect_family({"anthropic_version": "x", "messages": []}) == "anthropic"
    assert detect_family({"messages": []}) == "nova"
    assert detect_family({"prompt": "x", "max_gen_len": 3}) == "llama"
    assert detect_family({"prompt": "x"}) == "mistral"
    assert detect_family({"inputText": "x"}) == "titan"
    with pytest.raises(AwsValidationError, match="none of the text families"):
        detect_family({"texts": ["x"]})


# -- response bodies and stream chunks -------------------------------------------------------------------------------

OUT = Outcome("Molten rock.", "stop_sequence", 11, 4, stop_sequence="\n\n", latency_ms=30, first_byte_ms=5)


def test_response_bodies() -> None:
    body = Renderer("anthropic", "anthropic.claude-3-haiku-20240307-v1:0").body(OUT)
    assert body["type"] == "message" and body["model"] == "claude-3-haiku-20240307"
    assert body["content"] == [{"type": "text", "text": "Molten rock."}]
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "\n\n")
    assert body["usage"] == {"input_tokens": 11, "output_tokens": 4}
    nova = Renderer("nova", "amazon.nova-micro-v1:0").body(OUT)
    assert nova["output"]["message"]["content"] == [{"text": "Molten rock."}] and nova["stopReason"] == "stop_sequence"
    assert nova["usage"]["totalTokens"] == 15
    assert Renderer("llama", "m").body(OUT) == {
        "generation": "Molten rock.",
        "prompt_token_count": 11,
        "generation_token_count": 4,
        "stop_reason": "stop",
    }
    assert Renderer("mistral", "m").body(OUT) == {"outputs": [{"text": "Molten rock.", "stop_reason": "stop"}]}
    assert Renderer("titan", "m").body(OUT) == {
        "inputTextTokenCount": 11,
        "results": [{"tokenCount": 4, "outputText": "Molten rock.", "completionReason": "STOP_CRITERIA_MET"}],
    }
    length = Outcome("x", "max_tokens", 1, 1)
    assert Renderer("titan", "m").body(length)["results"][0]["completionReason"] == "LENGTH"
    assert Renderer("llama", "m").body(length)["stop_reason"] == "length"


@pytest.mark.parametrize("family", ["anthropic", "nova", "llama", "mistral", "titan"])
def test_every_stream_ends_with_invocation_metrics(family: Any) -> None:
    r = Renderer(family, "anthropic.claude-3-haiku-20240307-v1:0")
    chunks = [*r.start(11), r.delta("Molten", 11), r.delta(" rock.", 11), *r.end(OUT)]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"] == {
        "inputTokenCount": 11,
        "outputTokenCount": 4,
        "invocationLatency": 30,
        "firstByteLatency": 5,
    }
    assert all("amazon-bedrock-invocationMetrics" not in c for c in chunks[:-1])
    if family == "anthropic":
        kinds = [c["type"] for c in chunks]
        assert kinds == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert chunks[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "\n\n"}
    elif family == "nova":
        assert [next(iter(c)) for c in chunks] == [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata",
        ]
    elif family == "llama":
        assert [c["prompt_token_count"] for c in chunks] == [11, None, None]
        assert chunks[-1]["stop_reason"] == "stop" and chunks[-1]["generation_token_count"] == 4
    elif family == "mistral":
        assert [c["outputs"][0]["stop_reason"] for c in chunks] == [None, None, "stop"]
    else:
        assert chunks[0]["inputTextTokenCount"] == 11 and "inputTextTokenCount" not in chunks[1]
        assert chunks[-1]["completionReason"] == "STOP_CRITERIA_MET"
