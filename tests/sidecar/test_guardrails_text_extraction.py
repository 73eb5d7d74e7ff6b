"""The text walker sees (and rewrites) every caller text on every endpoint."""

from __future__ import annotations

import copy

from openai_policy_sidecar.guardrails.text_extraction import (
    iter_output_texts,
    iter_texts,
    rewrite_texts,
)

CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "hello"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part one"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "text", "text": "part two"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "tool says hi"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
    ],
}

RESPONSES = {
    "model": "gpt-4o",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": "plain string item"},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "input text part"},
                {"type": "input_image", "image_url": "https://x/y.png"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "earlier answer"}],
        },
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "function result"},
    ],
}


def test_chat_string_and_parts():
    slots = iter_texts("chat.completions", CHAT)
    assert [(s.path, s.role, s.text) for s in slots] == [
        ("messages[0].content", "system", "You are helpful."),
        ("messages[1].content", "user", "hello"),
        ("messages[2].content[0].text", "user", "part one"),
        ("messages[2].content[2].text", "user", "part two"),
        ("messages[4].content", "tool", "tool says hi"),
        ("messages[5].content[0].refusal", "assistant", "no"),
    ]
    assert [s.path for s in iter_texts("chat.completions", CHAT, skip_roles={"system", "assistant"})] == [
        "messages[1].content",
        "messages[2].content[0].text",
        "messages[2].content[2].text",
        "messages[4].content",
    ]


def test_responses_input_items_and_instructions():
    slots = iter_texts("responses", RESPONSES)
    assert [(s.path, s.role, s.text) for s in slots] == [
        ("instructions", "system", "Be brief."),
        ("input[0].content", "user", "plain string item"),
        ("input[1].content[0].text", "user", "input text part"),
        ("input[2].content[0].text", "assistant", "earlier answer"),
        ("input[4].output", "tool", "function result"),
    ]
    assert [(s.path, s.text) for s in iter_texts("responses", {"input": "just a string"})] == [
        ("input", "just a string")
    ]


def test_completions_prompt_and_embeddings_input():
    assert [s.text for s in iter_texts("completions", {"prompt": "once"})] == ["once"]
    assert [s.path for s in iter_texts("completions", {"prompt": ["a", "b", [1, 2, 3]]})] == [
        "prompt[0]",
        "prompt[1]",
    ]
    assert iter_texts("completions", {"prompt": [1, 2, 3]}) == []
    assert [s.text for s in iter_texts("embeddings", {"input": ["x", "y"]})] == ["x", "y"]


def test_unknown_endpoint_and_malformed_bodies_yield_nothing():
    assert iter_texts("images", {"prompt": "cat"}) == []
    assert iter_texts("chat.completions", {"messages": "nope"}) == []
    assert iter_texts("chat.completions", {"messages": [None, 3, {"content": 5}]}) == []
    assert iter_texts("responses", {"input": 42}) == []


def test_rewrite_changes_every_form_in_place():
    for endpoint, body in (
        ("chat.completions", CHAT),
        ("responses", RESPONSES),
        ("completions", {"prompt": ["a b", "c"]}),
        ("embeddings", {"input": "zz"}),
    ):
        body = copy.deepcopy(body)
        before = iter_texts(endpoint, body)
        changed = rewrite_texts(endpoint, body, lambda slot: slot.text.upper())
        after = iter_texts(endpoint, body)
        assert changed == sum(1 for s in before if s.text != s.text.upper())
        assert [s.text for s in after] == [s.text.upper() for s in before]
        assert [s.path for s in after] == [s.path for s in before]


def test_rewrite_respects_skip_roles_and_keeps_non_text_parts():
    body = copy.deepcopy(CHAT)
    rewrite_texts("chat.completions", body, lambda s: "X", skip_roles={"system"})
    assert body["messages"][0]["content"] == "You are helpful."
    assert body["messages"][2]["content"][1] == CHAT["messages"][2]["content"][1]
    assert body["messages"][3]["tool_calls"] == CHAT["messages"][3]["tool_calls"]


def test_output_texts_per_endpoint():
    chat = {
        "choices": [{"message": {"role": "assistant", "content": "answer"}}, {"message": {"content": None}}]
    }
    assert [s.text for s in iter_output_texts("chat.completions", chat)] == ["answer"]
    resp = {
        "output": [
            {"type": "reasoning"},
            {"type": "message", "content": [{"type": "output_text", "text": "hi"}]},
        ]
    }
    assert [s.path for s in iter_output_texts("responses", resp)] == ["output[1].content[0].text"]
    assert [s.text for s in iter_output_texts("completions", {"choices": [{"text": "t"}]})] == ["t"]
