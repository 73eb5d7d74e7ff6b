"""The fake's images, audio, service tiers and built-in tool calls: shaped like OpenAI's answers
(checked against OpenAI's own schema) and billed from what the fake did."""

from __future__ import annotations

import io
import json

import openai
import pytest

from openai_policy_devkit.fake_openai_schema import OpenAISchemas, openai_schemas
from openai_policy_sidecar.pricing import PriceTable
from openai_policy_sidecar.reported_usage import Usage

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 500
AUDIO = b"RIFF" + b"\x00" * (48_000 - 4)  # three seconds at the fake's 16 kB/s


@pytest.fixture(scope="module")
def schema() -> OpenAISchemas:
    return openai_schemas()


@pytest.fixture
def client(fake_openai) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0)


def _json(raw) -> dict:
    return json.loads(raw.http_response.content)


def test_images_are_schema_valid_and_billed(fake_openai, client, schema):
    prices = PriceTable.bundled()
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a cat", quality="low", n=2)
    body = _json(raw)
    schema.validate("ImagesResponse", body)
    [charge] = fake_openai.billing.charges()
    assert body["usage"]["output_tokens"] == 2 * 272 == charge.usage.output_tokens
    assert charge.micros == prices.usage_cost_micros("gpt-image-1", charge.usage, tier="default")

    body = _json(client.images.with_raw_response.generate(model="dall-e-3", prompt="a cat", quality="hd"))
    schema.validate("ImagesResponse", body)
    assert fake_openai.billing.charges()[-1].micros == 80_000  # $0.08 an hd 1024x1024 image

    edit = client.images.with_raw_response.edit(
        model="gpt-image-1", image=("cat.png", io.BytesIO(PNG), "image/png"), prompt="a hat"
    )
    schema.validate("ImagesResponse", _json(edit))
    assert fake_openai.billing.charges()[-1].usage.image_input_tokens == 323


def test_audio_is_schema_valid_and_billed(fake_openai, client, schema):
    whisper = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.wav", io.BytesIO(AUDIO), "audio/wav")
    )
    schema.validate("CreateTranscriptionResponseJson", _json(whisper))
    assert fake_openai.billing.charges()[-1].micros == 300  # three seconds at $0.006 a minute
    tokens = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("a.wav", io.BytesIO(AUDIO), "audio/wav")
    )
    schema.validate("CreateTranscriptionResponseJson", _json(tokens))
    assert fake_openai.billing.charges()[-1].usage.audio_input_tokens == 15
    translation = client.audio.translations.with_raw_response.create(
        model="whisper-1", file=("a.wav", io.BytesIO(AUDIO), "audio/wav")
    )
    schema.validate("CreateTranslationResponseJson", _json(translation))
    speech = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="hello")
    assert speech.http_response.headers["content-type"] == "audio/mpeg"
    assert fake_openai.billing.charges()[-1].usage == Usage(characters=5)


def test_tiers_and_tool_calls_are_schema_valid_and_billed(fake_openai, client, schema):
    chat = client.chat.completions.with_raw_response.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], service_tier="priority"
    )
    body = _json(chat)
    schema.validate("CreateChatCompletionResponse", body)
    assert body["service_tier"] == "priority" == fake_openai.billing.charges()[-1].usage.service_tier
    # A tier the model is not offered at is served (and billed) at default.
    chat = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], service_tier="priority"
    )
    assert _json(chat)["service_tier"] == "default"

    response = client.responses.with_raw_response.create(
        model="gpt-5",
        input="search",
        tools=[{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}],
        max_tool_calls=3,
    )
    body = _json(response)
    schema.validate("Response", body)
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["web_search_call", "web_search_call", "code_interpreter_call", "message"]
    charge = fake_openai.billing.charges()[-1]
    assert charge.usage.tool_calls == (("code_interpreter", 1), ("web_search", 2))
    fees = 2 * 10_000 + 30_000
    assert (
        charge.micros
        == PriceTable.bundled().usage_cost_micros(
            "gpt-5", Usage(charge.usage.input_tokens, 0, charge.usage.output_tokens, service_tier="default")
        )
        + fees
    )


def test_a_late_answer_is_billed_even_when_nobody_waits(fake_openai, client):
    fake_openai.add_fault("latency", seconds=1.0)
    quick = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        quick.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert fake_openai.billed_micros() > 0


def test_a_streamed_response_lists_its_tool_calls(fake_openai, client, schema):
    stream = client.responses.create(
        model="gpt-5",
        input="search",
        tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}],
        stream=True,
    )
    events = [event.model_dump(mode="json", exclude_unset=True) for event in stream]
    for event in events:
        schema.validate(schema.stream_event_schema(event["type"]), event)
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["file_search_call", "file_search_call", "message"]
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == added
    assert fake_openai.billing.charges()[-1].usage.tool_calls == (("file_search", 2),)
