"""Images and audio metered like text: 100 concurrent SDK requests per surface against a $0.05
hour limit keep the real bill (the fake's, at the bundled prices) within it, and the recorded
spend equals the bill where the answer says what it cost (gpt-image and transcription usage,
dall-e images, tts-1 characters). Where it does not (gpt-4o-mini-tts audio, translations) the
sidecar charges its worst case: never less than the bill. Multipart uploads meet the model
allow-list exactly as their JSON twins do.
"""

from __future__ import annotations

import io

import openai
import pytest

from openai_policy_devkit.sidecar import (
    async_client,
    running_sidecar,
    upstream_spec,
    write_policy,
)
from tests.sidecar.test_metering_tiers_tools import LIMIT_USD, _budget_holds, _spent

AUDIO = b"RIFF" + b"\x00" * 32_000  # two seconds at the fake's 16 kB/s
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2_000


def _spec(fake, **extra) -> dict:
    return upstream_spec(
        fake,
        budget={"limits": [{"window": "hour", "usd": LIMIT_USD}]},
        endpoints={"allow": ["chatCompletions", "responses", "images", "audio"]},
        **extra,
    )


async def _run(tmp_path, fake, call, *, exact: bool = True, **spec) -> int:
    ok, _ = await _budget_holds(tmp_path, fake, call, policy=_spec(fake, **spec), exact=exact)
    return ok


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("gpt-image-1", {"quality": "low", "size": "1024x1024"}),
        ("gpt-image-1-mini", {}),
        ("dall-e-3", {"size": "1024x1024"}),
        ("dall-e-2", {"size": "256x256", "n": 2}),
    ],
)
async def test_image_generations(tmp_path, fake_openai, model, options):
    async def call(client, index):
        await client.images.generate(model=model, prompt=f"a cat number {index}", **options)

    await _run(tmp_path, fake_openai, call)


async def test_image_edits_multipart(tmp_path, fake_openai):
    async def call(client, index):
        await client.images.edit(
            model="gpt-image-1",
            image=("cat.png", io.BytesIO(PNG), "image/png"),
            prompt=f"hat {index}",
            quality="low",
        )

    await _run(tmp_path, fake_openai, call)
    assert {c.usage.image_input_tokens for c in fake_openai.billing.charges()} == {323}


async def test_image_variations_multipart(tmp_path, fake_openai):
    async def call(client, index):
        await client.images.create_variation(
            model="dall-e-2", image=("cat.png", io.BytesIO(PNG), "image/png"), size="512x512"
        )

    await _run(tmp_path, fake_openai, call)


async def test_speech_per_character(tmp_path, fake_openai):
    async def call(client, index):
        await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello there. " * 20 + str(index)
        )

    await _run(tmp_path, fake_openai, call)


async def test_speech_by_tokens_is_charged_its_worst_case(tmp_path, fake_openai):
    async def call(client, index):
        await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello there. " * 50)

    await _run(tmp_path, fake_openai, call, exact=False)


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
async def test_transcriptions_multipart(tmp_path, fake_openai, model):
    async def call(client, index):
        await client.audio.transcriptions.create(
            model=model, file=("talk.wav", io.BytesIO(AUDIO), "audio/wav")
        )

    await _run(tmp_path, fake_openai, call)


async def test_translations_without_usage_are_charged_their_worst_case(tmp_path, fake_openai):
    async def call(client, index):
        await client.audio.translations.create(
            model="whisper-1", file=("talk.wav", io.BytesIO(AUDIO), "audio/wav")
        )

    await _run(tmp_path, fake_openai, call, exact=False)


@pytest.mark.parametrize("multipart", [False, True])
async def test_model_allow_list_applies_to_multipart_like_json(tmp_path, fake_openai, multipart):
    spec = _spec(fake_openai, models={"allow": ["dall-e-2"]})
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            if multipart:
                await client.images.edit(
                    model="gpt-image-1", image=("cat.png", io.BytesIO(PNG), "image/png"), prompt="hat"
                )
            else:
                await client.images.generate(model="gpt-image-1", prompt="hat")
        assert refused.value.code == "model_not_allowed"
        # dall-e-2 is allowed, as a form too, and metered
        await client.images.create_variation(
            model="dall-e-2", image=("cat.png", io.BytesIO(PNG), "image/png")
        )
        assert await _spent(sidecar) == fake_openai.billed_micros() > 0
    assert [r.path for r in fake_openai.requests] == ["/v1/images/variations"]


async def test_a_pinned_model_is_rewritten_in_the_form(tmp_path, fake_openai):
    spec = _spec(fake_openai, models={"allow": ["whisper-1"], "pin": {"gpt-4o-transcribe": "whisper-1"}})
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("talk.wav", io.BytesIO(AUDIO), "audio/wav")
        )
    sent = fake_openai.requests[-1]
    assert b'name="model"\r\n\r\nwhisper-1\r\n' in sent.body and b"gpt-4o-transcribe" not in sent.body
    assert sent.body.count(AUDIO) == 1  # the file went through untouched


async def test_streamed_media_is_refused(tmp_path, fake_openai):
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", _spec(fake_openai))) as sidecar:
        client = async_client(base_url=sidecar.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError):
            await client.images.generate(model="gpt-image-1", prompt="hat", stream=True)
        with pytest.raises(openai.BadRequestError):
            await client.audio.speech.create(
                model="gpt-4o-mini-tts", voice="alloy", input="hi", stream_format="sse"
            )
    assert fake_openai.requests == []
