"""Everything the fake OpenAI sends must validate against OpenAI's own OpenAPI schema.

The schema is made strict (see devkit/openai_policy_devkit/fake_openai_schema.py): unknown fields, wrong types
and floats-for-integers fail. The self-tests at the end prove the check is not vacuous: each takes
a real answer of the fake, breaks one thing, and expects the validator to reject it.
"""

from __future__ import annotations

import base64
import copy
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from openai_policy_devkit.fake_openai import FakeOpenAI
from openai_policy_devkit.fake_openai_http import request
from openai_policy_devkit.fake_openai_schema import OpenAISchemas, openai_schemas

MESSAGES = [{"role": "user", "content": "Validate me."}]
LONG_REPLY = " ".join(["token"] * 40)


@pytest.fixture(scope="session")
def openai_schema() -> OpenAISchemas:
    return openai_schemas()


def post(fake: FakeOpenAI, path: str, body: Any, status: int = 200) -> Any:
    response = request(fake.base_url, "POST", path, body)
    assert response.status == status, response.body
    return response


def chunks_of(response: Any) -> list[dict[str, Any]]:
    frames = response.sse()
    assert frames[-1] == (None, "[DONE]")
    assert all(name is None for name, _ in frames)
    return [json.loads(data) for _, data in frames[:-1]]


def events_of(response: Any) -> list[dict[str, Any]]:
    events = []
    for name, data in response.sse():
        event = json.loads(data)
        assert name == event["type"]
        events.append(event)
    return events


@pytest.mark.parametrize("extra", [{}, {"max_tokens": 2}, {"max_completion_tokens": 4}, {"n": 3}])
def test_chat_completion(fake_openai, openai_schema, extra):
    fake_openai.cached_tokens = 3
    body = post(fake_openai, "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, **extra}).json()
    openai_schema.validate("CreateChatCompletionResponse", body)
    openai_schema.validate("CompletionUsage", body["usage"])


@pytest.mark.parametrize(
    "options",
    [
        None,
        {"include_usage": True},
        {"include_usage": False},
        {"include_usage": True, "include_obfuscation": False},
    ],
)
@pytest.mark.parametrize("n", [1, 2])
def test_chat_stream_chunks(fake_openai, openai_schema, options, n):
    body: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "n": n}
    if options is not None:
        body["stream_options"] = options
    chunks = chunks_of(post(fake_openai, "/chat/completions", body))
    for chunk in chunks:
        openai_schema.validate("CreateChatCompletionStreamResponse", chunk)
    assert ("obfuscation" in chunks[0]) == (options is None or options.get("include_obfuscation", True))


@pytest.mark.parametrize("reply", [None, LONG_REPLY])
def test_response_object(fake_openai, openai_schema, reply):
    if reply:
        fake_openai.add_fault("reply", text=reply)
    body = post(
        fake_openai,
        "/responses",
        {"model": "gpt-4.1", "input": MESSAGES, "instructions": "x", "max_output_tokens": 16},
    ).json()
    openai_schema.validate("Response", body)
    assert body["status"] == ("incomplete" if reply else "completed")


@pytest.mark.parametrize("reply", [None, LONG_REPLY])
def test_response_stream_events(fake_openai, openai_schema, reply):
    if reply:
        fake_openai.add_fault("reply", text=reply)
    events = events_of(
        post(
            fake_openai,
            "/responses",
            {"model": "gpt-4.1", "input": "hi", "stream": True, "max_output_tokens": 16},
        )
    )
    for event in events:
        openai_schema.validate(openai_schema.stream_event_schema(event["type"]), event)
        openai_schema.validate("ResponseStreamEvent", event)
    assert events[-1]["type"] == ("response.incomplete" if reply else "response.completed")


def test_legacy_completion(fake_openai, openai_schema):
    body = post(fake_openai, "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"]}).json()
    openai_schema.validate("CreateCompletionResponse", body)


def test_embeddings(fake_openai, openai_schema):
    as_float = post(
        fake_openai,
        "/embeddings",
        {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float"},
    ).json()
    openai_schema.validate("CreateEmbeddingResponse", as_float)
    # The spec only describes float arrays; the real API answers base64 with a string in their place.
    as_base64 = post(
        fake_openai,
        "/embeddings",
        {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "base64"},
    ).json()
    decoded = copy.deepcopy(as_base64)
    for item in decoded["data"]:
        raw = base64.b64decode(item["embedding"])
        item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    openai_schema.validate("CreateEmbeddingResponse", decoded)
    assert decoded == as_float


def test_moderation(fake_openai, openai_schema):
    body = post(fake_openai, "/moderations", {"input": ["fine", "kill -9"]}).json()
    openai_schema.validate("CreateModerationResponse", body)
    assert [r["flagged"] for r in body["results"]] == [False, True]


def test_models(fake_openai, openai_schema):
    listing = request(fake_openai.base_url, "GET", "/models").json()
    openai_schema.validate("ListModelsResponse", listing)
    for model in listing["data"]:
        openai_schema.validate("Model", model)
    openai_schema.validate("Model", request(fake_openai.base_url, "GET", "/models/gpt-4o").json())


def error_cases(fake: FakeOpenAI) -> list[Any]:
    base = fake.base_url
    fake.add_fault("status", status=429, retry_after=1, match="/embeddings")
    fake.add_fault("status", status=500, match="/moderations")
    fake.add_fault("status", status=503, match="/v1/completions")
    return [
        request(base, "POST", "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, api_key=None),
        request(base, "POST", "/chat/completions", raw=b"{nope"),
        request(base, "POST", "/chat/completions", {"messages": MESSAGES}),
        request(base, "POST", "/chat/completions", {"model": "gpt-4o"}),
        request(
            base, "POST", "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 0}
        ),
        request(base, "GET", "/models/unknown-model"),
        request(base, "GET", "/nothing-here"),
        request(base, "POST", "/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
        request(base, "POST", "/moderations", {"input": "x"}),
        request(base, "POST", "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x"}),
    ]


def test_errors(fake_openai, openai_schema):
    responses = error_cases(fake_openai)
    assert [r.status for r in responses] == [401, 400, 400, 400, 400, 404, 404, 429, 500, 503]
    for response in responses:
        openai_schema.validate("ErrorResponse", response.json())
        assert response.headers["x-request-id"].startswith("req_")


# --- the validator is not vacuous ---------------------------------------------------------------


def _rename(key: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        doc[new] = doc.pop(key)

    return mutate


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


BROKEN = {
    "misspelt optional field": (
        "CreateChatCompletionResponse",
        "chat",
        _rename("system_fingerprint", "system_fingerprnt"),
    ),
    "misspelt required field": ("CreateChatCompletionResponse", "chat", _rename("choices", "choice")),
    "integer as string": ("CreateChatCompletionResponse", "chat", _set("created", "1700000000")),
    "integer as float": ("CreateChatCompletionResponse", "chat", _set("usage.prompt_tokens", 9.0)),
    "wrong object": ("CreateChatCompletionResponse", "chat", _set("object", "chat.completion.chunk")),
    "extra usage field": (
        "CreateChatCompletionResponse",
        "chat",
        _set("usage.prompt_tokens_details.cache_hits", 1),
    ),
    "bad finish_reason": ("CreateChatCompletionResponse", "chat", _set("choices.0.finish_reason", "done")),
    "chunk usage not object": ("CreateChatCompletionStreamResponse", "chunk", _set("usage", "none")),
    "chunk delta typo": (
        "CreateChatCompletionStreamResponse",
        "chunk",
        _set("choices.0.delta", {"contents": "x"}),
    ),
    "response bad status": ("Response", "response", _set("status", "done")),
    "response usage typo": ("Response", "response", _rename("usage", "usages")),
    "response output typo": ("Response", "response", _set("output.0.content.0.type", "text")),
    "event missing sequence": ("ResponseStreamEvent", "event", lambda doc: doc.pop("sequence_number")),
    "event unknown field": ("ResponseStreamEvent", "event", _set("delta_text", "x")),
    "embedding as string": ("CreateEmbeddingResponse", "embedding", _set("data.0.embedding", "AAAA")),
    "moderation category typo": (
        "CreateModerationResponse",
        "moderation",
        _set("results.0.categories.violent", False),
    ),
    "model owner missing": ("Model", "model", lambda doc: doc.pop("owned_by")),
    "error code as int": ("ErrorResponse", "error", _set("error.code", 429)),
    "error missing param": ("ErrorResponse", "error", lambda doc: doc["error"].pop("param")),
}


@pytest.fixture
def samples(fake_openai) -> dict[str, Any]:
    stream = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = events_of(post(fake_openai, "/responses", {"model": "gpt-4.1", "input": "hi", "stream": True}))
    return {
        "chat": post(fake_openai, "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}).json(),
        "chunk": chunks_of(post(fake_openai, "/chat/completions", stream))[1],
        "response": post(fake_openai, "/responses", {"model": "gpt-4.1", "input": "hi"}).json(),
        "event": next(e for e in events if e["type"] == "response.output_text.delta"),
        "embedding": post(
            fake_openai,
            "/embeddings",
            {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"},
        ).json(),
        "moderation": post(fake_openai, "/moderations", {"input": "x"}).json(),
        "model": request(fake_openai.base_url, "GET", "/models/gpt-4o").json(),
        "error": request(fake_openai.base_url, "GET", "/models/nope").json(),
    }


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validator_rejects_a_broken_answer(openai_schema, samples, case):
    schema, sample, mutate = BROKEN[case]
    original = samples[sample]
    assert openai_schema.errors(schema, original) == []  # the untouched answer passes...
    broken = copy.deepcopy(original)
    mutate(broken)
    assert openai_schema.errors(schema, broken), (
        f"{case}: a broken {schema} was accepted"
    )  # ...the broken fails


def test_every_schema_the_fake_claims_exists(openai_schema):
    for name in (
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "Response",
        "ResponseStreamEvent",
        "CreateEmbeddingResponse",
        "CreateModerationResponse",
        "ListModelsResponse",
        "Model",
        "Error",
        "ErrorResponse",
        "CreateCompletionResponse",
    ):
        assert openai_schema.validator(name) is not None
