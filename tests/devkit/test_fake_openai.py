"""The fake OpenAI upstream, seen through the real `openai` SDK (and raw HTTP where the SDK hides details)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import tiktoken

from openai_policy_devkit.fake_openai import DEFAULT_REPLY, FakeOpenAI
from openai_policy_devkit.fake_openai_faults import FaultError
from openai_policy_devkit.fake_openai_http import request
from openai_policy_devkit.managed_process import free_port

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello to the cluster."},
]


def client(fake: FakeOpenAI, **options) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test-key", **options)


def o200k(text: str) -> int:
    return len(tiktoken.get_encoding("o200k_base").encode(text))


def expected_chat_prompt_tokens(messages: list[dict[str, str]]) -> int:
    # OpenAI's documented accounting: 3 per message + its role and content, 3 to prime the reply.
    return sum(3 + o200k(m["role"]) + o200k(m["content"]) for m in messages) + 3


# --- chat completions ---------------------------------------------------------------------------


def test_chat_completion_through_the_sdk(fake_openai):
    raw = client(fake_openai).chat.completions.with_raw_response.create(
        model="gpt-4o-2024-08-06", messages=MESSAGES
    )
    completion = raw.parse()
    assert completion.model == "gpt-4o-2024-08-06"  # a pinned dated id stays as it is
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage.prompt_tokens == expected_chat_prompt_tokens(MESSAGES)
    assert usage.completion_tokens == o200k(DEFAULT_REPLY)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 1
    for unit in ("requests", "tokens"):
        assert int(raw.headers[f"x-ratelimit-limit-{unit}"]) > int(
            raw.headers[f"x-ratelimit-remaining-{unit}"]
        )
        assert raw.headers[f"x-ratelimit-reset-{unit}"].endswith("s")
    assert fake_openai.usage_log == [usage.model_dump(exclude_none=True)]


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
def test_completion_tokens_are_capped_by_the_request(fake_openai, cap_field):
    completion = client(fake_openai).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, **{cap_field: 3}
    )
    encoding = tiktoken.get_encoding("o200k_base")
    assert completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == encoding.decode(encoding.encode(DEFAULT_REPLY)[:3])


def test_n_choices_are_each_billed(fake_openai):
    sdk = client(fake_openai)
    completion = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=2, max_tokens=4)
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 2 * 4
    stream = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=2, stream=True)
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [DEFAULT_REPLY, DEFAULT_REPLY]


def test_reply_and_cached_tokens_are_scriptable(fake_openai):
    fake_openai.cached_tokens = 5
    fake_openai.add_fault("reply", text="Two words")
    sdk = client(fake_openai)
    first = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert first.choices[0].message.content == "Two words"
    assert first.usage.completion_tokens == o200k("Two words")
    assert first.usage.prompt_tokens_details.cached_tokens == 5
    fake_openai.add_fault("cached_tokens", tokens=10_000)  # never more than the prompt itself
    second = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens
    assert second.choices[0].message.content == DEFAULT_REPLY


def test_chat_stream_without_usage(fake_openai):
    stream = client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert fake_openai.usage_log == []  # nothing was returned, so nothing is logged

    frames = request(
        fake_openai.base_url,
        "POST",
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "stream": True},
    ).sse()
    assert frames[-1] == (None, "[DONE]")
    bodies = [json.loads(data) for _, data in frames[:-1]]
    assert all(b["object"] == "chat.completion.chunk" and "usage" not in b for b in bodies)
    assert len({(b["id"], b["created"]) for b in bodies}) == 1


def test_chat_stream_with_include_usage(fake_openai):
    stream = client(fake_openai).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == expected_chat_prompt_tokens(MESSAGES)
    assert chunks[-1].usage.completion_tokens == o200k(DEFAULT_REPLY)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert fake_openai.usage_log == [chunks[-1].usage.model_dump(exclude_none=True)]

    response = request(
        fake_openai.base_url,
        "POST",
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.body.endswith(b"\n\ndata: [DONE]\n\n")
    bodies = [json.loads(data) for _, data in response.sse()[:-1]]
    assert [b["usage"] is None for b in bodies] == [True] * (len(bodies) - 1) + [False]


# --- responses ----------------------------------------------------------------------------------


def test_responses_result(fake_openai):
    result = client(fake_openai).responses.create(
        model="gpt-4.1", input="Summarise the policy.", instructions="Be terse."
    )
    assert result.status == "completed"
    assert result.output_text == DEFAULT_REPLY
    assert result.usage.input_tokens == expected_chat_prompt_tokens(
        [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Summarise the policy."}]
    )
    assert result.usage.output_tokens == o200k(DEFAULT_REPLY)
    assert result.usage.input_tokens_details.cached_tokens == 0
    assert result.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_capped_output_is_incomplete(fake_openai):
    fake_openai.add_fault("reply", text=" ".join(["word"] * 40))
    capped = client(fake_openai).responses.create(model="gpt-4.1", input="hi", max_output_tokens=16)
    assert capped.status == "incomplete"
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert capped.usage.output_tokens == 16
    with pytest.raises(openai.BadRequestError) as refused:
        client(fake_openai).responses.create(model="gpt-4.1", input="hi", max_output_tokens=5)
    assert refused.value.code == "integer_below_min_value"


def test_responses_stream_event_sequence(fake_openai):
    stream = client(fake_openai).responses.create(model="gpt-4.1", input="hi", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == (
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        + ["response.output_text.delta"] * deltas
        + [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    )
    assert deltas == o200k(DEFAULT_REPLY)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_REPLY
    assert events[-1].response.usage.output_tokens == deltas
    assert events[0].response.status == "in_progress" and events[0].response.usage is None

    frames = request(
        fake_openai.base_url, "POST", "/responses", {"model": "gpt-4.1", "input": "hi", "stream": True}
    ).sse()
    assert [name for name, _ in frames] == [json.loads(data)["type"] for _, data in frames]  # event: == type
    assert frames[-1][0] == "response.completed"  # no [DONE] sentinel on the Responses API


def test_sdk_stream_helper_accumulates_the_response(fake_openai):
    with client(fake_openai).responses.stream(model="gpt-4.1", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_REPLY


# --- other endpoints ----------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree(fake_openai):
    sdk = client(fake_openai)
    as_float = sdk.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    by_default = sdk.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"]
    )  # SDK asks base64
    assert fake_openai.requests[1].json["encoding_format"] == "base64"
    assert [d.embedding for d in as_float.data] == [d.embedding for d in by_default.data]
    assert len(as_float.data[0].embedding) == 1536
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert abs(sum(v * v for v in as_float.data[0].embedding) - 1.0) < 1e-4
    encoding = tiktoken.get_encoding("cl100k_base")
    assert as_float.usage.prompt_tokens == len(encoding.encode("alpha")) + len(encoding.encode("beta"))
    raw = request(
        fake_openai.base_url,
        "POST",
        "/embeddings",
        {"model": "text-embedding-3-large", "input": "x", "encoding_format": "base64", "dimensions": 8},
    )
    vector = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert len(struct.unpack("<8f", vector)) == 8


def test_moderation_flags_the_trigger_word(fake_openai):
    sdk = client(fake_openai)
    flagged = sdk.moderations.create(model="omni-moderation-latest", input="I will KILL the process")
    clean = sdk.moderations.create(input=["hello", "kill it"])
    assert flagged.results[0].flagged and flagged.results[0].categories.violence
    assert [r.flagged for r in clean.results] == [False, True]
    fake_openai.moderation_triggers = ("banana",)
    assert sdk.moderations.create(input="kill banana").results[0].flagged
    assert not sdk.moderations.create(input="kill").results[0].flagged


def test_models_and_legacy_completions(fake_openai):
    sdk = client(fake_openai)
    ids = [m.id for m in sdk.models.list()]
    assert "gpt-4o" in ids and "text-embedding-3-small" in ids
    assert sdk.models.retrieve("gpt-4o-mini").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-nonexistent")
    assert missing.value.code == "model_not_found"
    completion = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon")
    assert completion.usage.completion_tokens == min(
        16, len(tiktoken.get_encoding("cl100k_base").encode(DEFAULT_REPLY))
    )


# --- errors -------------------------------------------------------------------------------------


def test_missing_key_malformed_json_and_missing_fields_are_openai_errors(fake_openai):
    base = fake_openai.base_url
    no_key = request(
        base, "POST", "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, api_key=None
    )
    assert no_key.status == 401 and no_key.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in no_key.headers
    bad_json = request(base, "POST", "/chat/completions", raw=b'{"model": "gpt-4o", ')
    assert bad_json.status == 400 and set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    no_model = request(base, "POST", "/chat/completions", {"messages": MESSAGES})
    assert no_model.status == 400 and "model" in no_model.json()["error"]["message"]
    no_messages = request(base, "POST", "/chat/completions", {"model": "gpt-4o"})
    assert no_messages.json()["error"]["param"] == "messages"
    assert no_messages.json()["error"]["code"] == "missing_required_parameter"
    unknown = request(base, "POST", "/nope", {})
    assert unknown.status == 404 and unknown.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert len(fake_openai.requests) == 5  # refused requests are recorded too


def test_wrong_key_is_refused_when_a_key_is_set(fake_openai):
    fake_openai.api_key = "sk-right"
    with pytest.raises(openai.AuthenticationError) as refused:
        client(fake_openai).models.list()
    assert refused.value.code == "invalid_api_key"
    ok = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-right", max_retries=0)
    assert ok.models.retrieve("gpt-4o").id == "gpt-4o"


def test_rate_limit_error_on_scripted_429(fake_openai):
    fake_openai.add_fault("status", status=429, retry_after=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert limited.value.status_code == 429
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    assert fake_openai.faults == []  # used up: the next request succeeds
    assert client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_sdk_honours_retry_after_before_raising(fake_openai):
    # Without Retry-After the SDK's first backoff is at most 0.5 s; with `Retry-After: 1` it must
    # wait a whole second before its one retry, which meets the second 429 and raises.
    fake_openai.add_fault("status", status=429, retry_after=1)
    fake_openai.add_fault("status", status=429)
    with pytest.raises(openai.RateLimitError):
        client(fake_openai, max_retries=1).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    first, second = fake_openai.requests
    assert second.time - first.time >= 0.95
    assert second.headers["x-stainless-retry-count"] == "1"


def test_retry_after_ms_is_preferred_and_the_measurement_discriminates(fake_openai):
    # Control for the test above: a short server-directed wait shows up as a short gap.
    fake_openai.add_fault("status", status=429, retry_after=5, retry_after_ms=50)
    completion = client(fake_openai, max_retries=1).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    first, second = fake_openai.requests
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert 0.04 <= second.time - first.time < 0.9


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, openai.InternalServerError), (503, openai.InternalServerError), (400, openai.BadRequestError)],
)
def test_scripted_status_errors(fake_openai, status, error):
    fake_openai.add_fault("status", status=status)
    with pytest.raises(error) as failed:
        client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert failed.value.status_code == status


def test_sdk_retries_through_a_500(fake_openai):
    fake_openai.add_fault("status", status=500, retry_after_ms=10)
    completion = client(fake_openai, max_retries=2).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert len(fake_openai.requests) == 2


def test_custom_error_body(fake_openai):
    fake_openai.add_fault(
        "status",
        status=400,
        body={
            "error": {
                "message": "nope",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        },
    )
    with pytest.raises(openai.BadRequestError) as failed:
        client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert failed.value.code == "model_not_found" and failed.value.param == "model"


def test_hang_makes_the_client_timeout_fire(fake_openai):
    fake_openai.add_fault("hang")
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client(fake_openai, timeout=0.5).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert 0.45 <= time.monotonic() - started < 5
    assert len(fake_openai.requests) == 1  # it was received, just never answered


def test_latency_delays_the_answer(fake_openai):
    fake_openai.add_fault("latency", seconds=0.3)
    started = time.monotonic()
    client(fake_openai).models.list()
    assert time.monotonic() - started >= 0.3


def test_cut_stream_raises_in_the_sdk_after_the_delivered_chunks(fake_openai):
    fake_openai.add_fault("cut_stream", after_events=3)
    received = []
    stream = client(fake_openai).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    # What really happens: the connection closes mid chunked body; httpx reports an incomplete read
    # and the SDK raises APIConnectionError from the iterator. No usage chunk ever arrives.
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert fake_openai.usage_log == []


def test_stream_faults_wait_for_a_stream(fake_openai):
    fake_openai.add_fault("cut_stream", after_events=1)
    client(fake_openai).chat.completions.create(model="gpt-4o", messages=MESSAGES)  # not a stream: untouched
    assert len(fake_openai.faults) == 1


def test_stall_stream_pauses_between_events(fake_openai):
    fake_openai.add_fault("stall_stream", after_events=2, seconds=0.4)
    stream = client(fake_openai).responses.create(model="gpt-4.1", input="hi", stream=True)
    arrivals = [(event.type, time.monotonic()) for event in stream]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps[1] >= 0.35  # between the 2nd and 3rd event
    assert arrivals[-1][0] == "response.completed"


def test_model_override(fake_openai):
    fake_openai.add_fault("model", model="gpt-4o-mini-2024-07-18", match="/chat/")
    sdk = client(fake_openai)
    embedded = sdk.embeddings.create(model="text-embedding-3-small", input="x")  # match: not this path
    drifted = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert embedded.model == "text-embedding-3-small"
    assert drifted.model == "gpt-4o-mini-2024-07-18"
    assert fake_openai.requests[-1].json["model"] == "gpt-4o"


def test_fault_times_and_clearing(fake_openai):
    fake_openai.add_fault("status", status=503, times=None)
    sdk = client(fake_openai)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            sdk.models.list()
    fake_openai.clear_faults()
    assert sdk.models.list().data
    with pytest.raises(FaultError):
        fake_openai.add_fault("explode")
    with pytest.raises(FaultError):
        fake_openai.add_fault("status")  # no status given


def test_recorded_requests_keep_headers_and_body(fake_openai):
    client(fake_openai, default_headers={"X-Trace": "abc"}).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, user="alice"
    )
    recorded = fake_openai.requests[0]
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == "Bearer sk-test-key"
    assert recorded.headers["X-TRACE"] == "abc"
    assert recorded.json["user"] == "alice"
    assert json.loads(recorded.body) == recorded.json


# --- the three ways to run it -------------------------------------------------------------------


async def test_fixture_serves_async_clients(fake_openai):
    sdk = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0)
    completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    stream = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    assert completion.choices[0].message.content == "".join(
        [c.choices[0].delta.content or "" async for c in stream]
    )
    await sdk.close()


async def test_running_in_process_on_the_current_loop(tiktoken_cache_dir):
    async with FakeOpenAI.running() as fake:
        sdk = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        fake.add_fault("hang")
        with pytest.raises(openai.APITimeoutError):
            await sdk.with_options(timeout=0.3).models.list()
        assert (await sdk.models.retrieve("gpt-4o")).id == "gpt-4o"
        await sdk.close()
    # stopping released the hung handler: nothing is left listening
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fake.port), timeout=1).close()


def test_standalone_process_is_quiet_and_scriptable_over_http(tiktoken_cache_dir):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openai_policy_devkit.fake_openai", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in banner
        base = f"http://127.0.0.1:{port}"
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
        for _ in range(20):
            sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert (
            request(base, "POST", "/_fake/faults", {"kind": "status", "status": 429, "retry_after": 1}).status
            == 201
        )
        with pytest.raises(openai.RateLimitError):
            sdk.models.list()
        assert request(base, "GET", "/_fake/requests").json() == []  # not recording by default
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert output.strip() == ""  # nothing per request


def test_multibyte_reply_streams_whole_characters(fake_openai):
    text = "Grüße aus dem Cluster: 你好, 🌍!"
    fake_openai.reply_text = text
    stream = client(fake_openai).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == o200k(text)


def test_admin_routes_script_the_same_server(fake_openai):
    base = fake_openai.url
    assert request(base, "POST", "/_fake/faults", {"kind": "nonsense"}).status == 400
    assert request(base, "POST", "/_fake/faults", {"kind": "status"}).status == 400  # no status
    assert (
        request(
            base, "POST", "/_fake/faults", {"kind": "model", "model": "gpt-4o-mini", "times": None}
        ).status
        == 201
    )
    sdk = client(fake_openai)
    assert sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES).model == "gpt-4o-mini"
    assert sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES).model == "gpt-4o-mini"
    assert request(base, "DELETE", "/_fake/faults").json() == {"pending": 0}
    assert [r["path"] for r in request(base, "GET", "/_fake/requests").json()] == ["/v1/chat/completions"] * 2
    assert len(request(base, "GET", "/_fake/usage").json()) == 2
    request(base, "POST", "/_fake/reset")
    assert fake_openai.requests == [] and fake_openai.usage_log == []
