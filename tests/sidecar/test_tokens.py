"""Input token counting with the offline tiktoken encodings, checked against OpenAI's cookbook."""

import pytest

from openai_policy_sidecar import tokens
from openai_policy_sidecar.tokens import (
    IMAGE_LOW_DETAIL_TOKENS,
    IMAGE_TOKENS,
    TokenCountError,
    count_input_tokens,
    count_text_tokens,
    encoding_name_for_model,
)


@pytest.fixture(autouse=True)
def _offline_encodings(tiktoken_cache_dir):
    """Every test here needs TIKTOKEN_CACHE_DIR (the fixture fails clearly when it is not set)."""


# The cookbook's example conversation ("How to count tokens with tiktoken"), for which it reports
# 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini, matching the API.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# The cookbook's function-calling example: 101 tokens for gpt-4o / gpt-4o-mini, 105 for gpt-3.5 / gpt-4.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.2", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("some-future-model", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::abc", "cl100k_base"),
        ("ft:gpt-4o-mini:acme::abc", "o200k_base"),
    ],
)
def test_encoding_for_model(model, encoding):
    assert encoding_name_for_model(model) == encoding


def test_text_tokens_differ_by_encoding():
    assert count_text_tokens("hello world", "gpt-4o") == 2
    assert count_text_tokens("", "gpt-4o") == 0
    text = "Zürich — naïve café, 東京 🚀"
    assert count_text_tokens(text, "gpt-4o") != count_text_tokens(text, "gpt-4")


def test_special_token_text_counts_as_text():
    assert count_text_tokens("<|endoftext|>", "gpt-4o") > 1


def test_encodings_load_once():
    first = tokens.encoding_for_model("gpt-4o")
    assert tokens.encoding_for_model("gpt-5") is first
    assert tokens.get_encoding("o200k_base") is first


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)]
)
def test_chat_messages_match_the_cookbook(model, expected):
    assert (
        count_input_tokens("chat.completions", {"model": model, "messages": COOKBOOK_MESSAGES}, model)
        == expected
    )


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-4", 105), ("gpt-3.5-turbo", 105)]
)
def test_chat_tools_match_the_cookbook(model, expected):
    body = {"model": model, "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_input_tokens("chat.completions", body, model) == expected


def test_content_parts_count_like_the_same_string():
    text = "Describe the weather in Paris in one sentence."
    as_string = count_input_tokens(
        "chat.completions", {"messages": [{"role": "user", "content": text}]}, "gpt-4o"
    )
    as_parts = count_input_tokens(
        "chat.completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
        "gpt-4o",
    )
    assert as_string == as_parts


def test_images_get_a_fixed_estimate_and_data_urls_are_not_tokenised():
    def with_image(detail):
        image = {"url": "data:image/png;base64," + "A" * 100_000}
        if detail:
            image["detail"] = detail
        return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]}

    empty = count_input_tokens("chat.completions", {"messages": [{"role": "user", "content": []}]}, "gpt-4o")
    assert (
        count_input_tokens("chat.completions", with_image("low"), "gpt-4o") == empty + IMAGE_LOW_DETAIL_TOKENS
    )
    assert count_input_tokens("chat.completions", with_image(None), "gpt-4o") == empty + IMAGE_TOKENS


def test_tool_calls_and_tool_results_count():
    base = [{"role": "user", "content": "weather?"}]
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_current_weather", "arguments": '{"location": "Paris, France"}'},
            }
        ],
    }
    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}
    plain = count_input_tokens("chat.completions", {"messages": base}, "gpt-4o")
    with_call = count_input_tokens("chat.completions", {"messages": [*base, call]}, "gpt-4o")
    with_result = count_input_tokens("chat.completions", {"messages": [*base, call, result]}, "gpt-4o")
    arguments = count_text_tokens('{"location": "Paris, France"}', "gpt-4o")
    assert with_call - plain >= arguments + count_text_tokens("get_current_weather", "gpt-4o")
    assert with_result - with_call >= count_text_tokens('{"temperature": 21}', "gpt-4o")


def test_names_cost_one_extra_token():
    without = count_input_tokens(
        "chat.completions", {"messages": [{"role": "user", "content": "hi"}]}, "gpt-4o"
    )
    named = count_input_tokens(
        "chat.completions", {"messages": [{"role": "user", "name": "bob", "content": "hi"}]}, "gpt-4o"
    )
    assert named == without + count_text_tokens("bob", "gpt-4o") + 1


def test_responses_string_input_counts_like_one_user_message():
    text = "Write a haiku about the sea."
    chat = count_input_tokens("chat.completions", {"messages": [{"role": "user", "content": text}]}, "gpt-4o")
    assert count_input_tokens("responses", {"input": text}, "gpt-4o") == chat


def test_responses_items_and_instructions():
    text = "Write a haiku about the sea."
    items = [{"role": "user", "content": [{"type": "input_text", "text": text}]}]
    plain = count_input_tokens("responses", {"input": items}, "gpt-4o")
    assert plain == count_input_tokens("responses", {"input": text}, "gpt-4o")
    instructed = count_input_tokens("responses", {"input": items, "instructions": "Be terse."}, "gpt-4o")
    chat = count_input_tokens(
        "chat.completions",
        {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": text}]},
        "gpt-4o",
    )
    assert instructed == chat


def test_responses_function_items_and_tools():
    items = [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": '{"temperature": 21}'},
        {"type": "item_reference", "id": "msg_123"},
    ]
    counted = count_input_tokens("responses", {"input": items}, "gpt-4o")
    assert counted > count_input_tokens("responses", {"input": items[:1]}, "gpt-4o") + 10
    tools = [{"type": "function", **COOKBOOK_TOOLS[0]["function"]}]
    with_tools = count_input_tokens("responses", {"input": "hi", "tools": tools}, "gpt-4o")
    chat_tools = count_input_tokens(
        "chat.completions",
        {"messages": [{"role": "user", "content": "hi"}], "tools": COOKBOOK_TOOLS},
        "gpt-4o",
    )
    assert with_tools == chat_tools


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hello world", 2),
        (["hello world", "hello"], 3),
        ([15339, 1917], 2),
        ([[15339, 1917], [15339]], 3),
        ("", 0),
        ([], 0),
    ],
)
def test_completions_prompt_shapes(prompt, expected):
    assert count_input_tokens("completions", {"prompt": prompt}, "gpt-3.5-turbo-instruct") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("hello world", 2), (["hello world", "hello"], 3), ([1, 2, 3], 3), ([[1, 2], [3]], 3)],
)
def test_embeddings_input_shapes(value, expected):
    assert count_input_tokens("embeddings", {"input": value}, "text-embedding-3-small") == expected


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat.completions", {"messages": "hi"}, "messages"),
        ("chat.completions", {"messages": ["hi"]}, "messages[0]"),
        ("embeddings", {"input": 42}, "input"),
        ("embeddings", {"input": [1, "two"]}, "input[0]"),
        ("completions", {"prompt": {"a": 1}}, "prompt"),
        ("responses", {"input": 7}, "input"),
        ("responses", {"input": [7]}, "input[0]"),
    ],
)
def test_malformed_bodies_raise_token_count_error(endpoint, body, param):
    with pytest.raises(TokenCountError) as raised:
        count_input_tokens(endpoint, body, "gpt-4o")
    assert raised.value.param == param


def test_wrong_value_types_inside_messages_do_not_crash():
    body = {"messages": [{"role": "user", "content": 12345}, {"role": "user", "content": {"odd": True}}]}
    assert count_input_tokens("chat.completions", body, "gpt-4o") > 0


def test_unknown_endpoint_is_a_programming_error():
    with pytest.raises(ValueError):
        count_input_tokens("realtime", {}, "gpt-4o")


def test_missing_encoding_file_is_refused_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_encodings", {})
    from openai_policy_sidecar.tokenizer_files import TokenizerFilesError

    with pytest.raises(TokenizerFilesError):
        count_text_tokens("hello", "gpt-4o")


# -- memory: what a loaded encoding keeps, and which encodings a policy needs ------------------


def test_loaded_encodings_drop_the_python_ranks_and_still_encode_decode_and_pickle():
    import pickle

    encoding = tokens.get_encoding("o200k_base")
    assert not hasattr(encoding, "_mergeable_ranks")  # the Rust core holds them
    ids = encoding.encode_ordinary("hello world")
    assert ids == [24912, 2375] and encoding.decode(ids) == "hello world"
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [encoding.eot_token]
    assert encoding.n_vocab > 200_000
    clone = pickle.loads(pickle.dumps(encoding))  # registered: pickled by name, no ranks needed
    assert clone.name == "o200k_base" and clone.encode_ordinary("hello world") == ids


@pytest.mark.parametrize(
    ("allow", "pin", "fallback", "expected"),
    [
        (["*"], {}, None, ("o200k_base", "cl100k_base")),
        (["gpt-4o-mini*"], {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}, None, ("o200k_base",)),
        (["gpt-4o*", "gpt-5*", "o3*", "o*"], {}, None, ("o200k_base",)),
        (["gpt-4*"], {}, None, ("o200k_base", "cl100k_base")),  # gpt-4-turbo and gpt-4o alike
        (["gpt-4-*"], {}, None, ("cl100k_base",)),
        (["text-embedding-*"], {}, None, ("cl100k_base",)),
        (["gpt-4o"], {}, "gpt-3.5-turbo", ("o200k_base", "cl100k_base")),  # the fallback counts
        (["chat"], {"chat": "gpt-4-0613"}, None, ("o200k_base", "cl100k_base")),  # pin target
        (["ft:gpt-4:acme:*"], {}, None, ("cl100k_base",)),
        (["ft:*"], {}, None, ("o200k_base", "cl100k_base")),
        (["gpt-?o"], {}, None, ("o200k_base", "cl100k_base")),
        ([], {}, None, ()),
    ],
)
def test_encodings_a_policy_can_need(allow, pin, fallback, expected):
    # a stand-in for spec.models: the policy model would refuse some of these combinations
    from types import SimpleNamespace

    models = SimpleNamespace(allow=allow, pin=pin, fallback=fallback)
    assert tokens.encodings_for_models(models) == expected


def test_encodings_of_a_validated_models_spec():
    from openai_policy_api.spec import ModelsSpec

    models = ModelsSpec.model_validate({"allow": ["gpt-4o", "gpt-3.5-turbo"], "fallback": "gpt-3.5-turbo"})
    assert tokens.encodings_for_models(models) == ("o200k_base", "cl100k_base")
    assert tokens.encodings_for_models(ModelsSpec.model_validate({"allow": ["o4-mini"]})) == ("o200k_base",)


def test_dry_run_and_no_policy_need_every_encoding():
    from openai_policy_api.spec import ModelsSpec

    models = ModelsSpec.model_validate({"allow": ["gpt-4o"]})
    assert tokens.encodings_for_models(models, dry_run=True) == ("o200k_base", "cl100k_base")
    assert tokens.encodings_for_models(None) == ("o200k_base", "cl100k_base")


def test_prepare_verifies_every_file_but_loads_only_what_the_policy_needs(monkeypatch):
    from openai_policy_api.spec import ModelsSpec

    verified, loaded = [], []
    monkeypatch.setattr(tokens.tokenizer_files, "verify", lambda encodings: verified.append(encodings))
    monkeypatch.setattr(tokens, "get_encoding", loaded.append)
    models = ModelsSpec.model_validate({"allow": ["gpt-4o-mini"]})
    assert tokens.prepare(models) == ("o200k_base",)
    assert verified == [("o200k_base", "cl100k_base")] and loaded == ["o200k_base"]


def test_prepare_refuses_a_missing_file_even_when_the_policy_does_not_need_it(tmp_path, monkeypatch):
    from openai_policy_api.spec import ModelsSpec
    from openai_policy_sidecar.tokenizer_files import TokenizerFilesError

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(TokenizerFilesError):
        tokens.prepare(ModelsSpec.model_validate({"allow": ["gpt-4o"]}))


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("images.generations", {"prompt": "a cat in a hat"}),
        ("audio.speech", {"input": "a cat in a hat"}),
        ("audio.transcriptions", {"prompt": "a cat in a hat"}),
    ],
)
def test_media_endpoints_count_their_text(endpoint, body):
    assert count_input_tokens(endpoint, body, "gpt-image-1") == count_text_tokens("a cat in a hat", "gpt-4o")
