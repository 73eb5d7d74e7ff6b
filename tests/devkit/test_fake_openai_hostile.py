"""The fake upstream's hostile faults, seen directly through the SDK (no sidecar in between)."""

from __future__ import annotations

import openai
import pytest

from openai_policy_devkit.fake_openai import FakeOpenAI
from openai_policy_devkit.fake_openai_faults import FaultError

KEY = "sk-proj-FAKEFAULTS-0123456789abcdzz99"
HELLO = [{"role": "user", "content": "hi"}]


def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)


def test_huge_body_is_the_size_asked_for(fake_openai):
    fake_openai.add_fault("huge_body", bytes=3 * 1024 * 1024 + 7)
    raw = client(fake_openai).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert len(raw.content) == 3 * 1024 * 1024 + 7 and "content-length" not in raw.headers
    fake_openai.add_fault("huge_body", bytes=4096, declare_length=True)
    raw = client(fake_openai).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert raw.headers["content-length"] == "4096" and len(raw.content) == 4096


def _stream_bytes(fake: FakeOpenAI) -> bytes:
    with client(fake).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    ) as response:
        return response.read()


def test_stream_without_separators_and_huge_event(fake_openai):
    fake_openai.add_fault("stream_no_separators", bytes=200_000)
    body = _stream_bytes(fake_openai)
    assert len(body) == 200_000 and b"\n\n" not in body
    fake_openai.add_fault("huge_event", bytes=300_000)
    events = _stream_bytes(fake_openai).split(b"\n\n")
    assert max(len(e) for e in events) == 300_000 - 2 and events[-2] == b"data: [DONE]"


def test_usage_fault_replaces_the_reported_usage(fake_openai):
    fake_openai.add_fault("usage", usage={"prompt_tokens": -5, "completion_tokens": 1, "total_tokens": -4})
    raw = client(fake_openai).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert raw.http_response.json()["usage"]["prompt_tokens"] == -5
    assert fake_openai.usage_log[-1]["prompt_tokens"] > 0  # what the fake really "billed"


def test_key_echoing_faults(fake_openai):
    fake_openai.add_fault("echo_key_header")
    raw = client(fake_openai).models.with_raw_response.list()
    assert raw.headers["x-upstream-debug-auth"] == KEY
    fake_openai.add_fault("masked_key_401")
    with pytest.raises(openai.AuthenticationError) as raised:
        client(fake_openai).models.list()
    assert (
        "sk-proj-" in raised.value.message
        and "*zz99." in raised.value.message
        and KEY not in raised.value.message
    )
    fake_openai.add_fault("key_in_stream")
    assert f"the key is {KEY}!".encode() in _stream_bytes(fake_openai)


def test_hostile_faults_check_their_parameters(fake_openai):
    with pytest.raises(FaultError):
        fake_openai.add_fault("huge_body")
    with pytest.raises(FaultError):
        fake_openai.add_fault("usage", usage={}, extra=1)
