"""The fake's images and audio endpoints: generations (JSON), edits and variations (multipart),
speech (JSON in, audio bytes out), transcriptions and translations (multipart).

Answers are shaped like OpenAI's (ImagesResponse, CreateTranscriptionResponseJson, ...) and every
answered call is billed (fake_openai_billing) from what the fake did, as OpenAI bills it:
gpt-image models by tokens (reported in ``usage``), dall-e models per image of a quality and
size, tts-1 per input character, gpt-4o-mini-tts by text and audio tokens (not reported: the
answer is audio), whisper-1 per second of audio, gpt-4o(-mini)-transcribe by tokens (reported).
The fake's audio is ``AUDIO_BYTES_PER_SECOND`` bytes per second of any file it is sent.
"""

from __future__ import annotations

import base64
import email
import email.policy
import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from aiohttp import web

from openai_policy_devkit import fake_openai_tokens as tokens
from openai_policy_devkit.fake_openai_requests import RequestError, require_model
from openai_policy_sidecar.reported_usage import Usage

if TYPE_CHECKING:
    from openai_policy_devkit.fake_openai import FakeOpenAI, _Call

AUDIO_BYTES_PER_SECOND = 16_000  # 128 kbit/s
INPUT_IMAGE_TOKENS = 323  # what the fake counts for one input image (gpt-image models)
TRANSCRIPT = "This is what the fake heard."
_PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image").decode()


async def form_of(call: _Call) -> dict[str, Any]:
    """A multipart or urlencoded body: text fields as strings, files as their size in bytes.

    Parsed from the bytes the handler already read (the request's stream is consumed)."""
    raw = await call.request.read()
    content_type = call.request.headers.get("Content-Type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        raise RequestError(400, "Could not parse the form body: expected multipart/form-data.")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if not isinstance(name, str):
            raise RequestError(400, "Could not parse the form body: a part has no name.")
        if part.get_filename() is not None:
            fields.setdefault("_files", []).append((name, len(payload)))
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields


def _count(value: object, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(str(value))
    except ValueError:
        raise RequestError(400, f"Invalid '{name}': expected an integer.", name, "invalid_type") from None


def _image_usage(
    fake: FakeOpenAI, model: str, body: dict[str, Any], inputs: int
) -> tuple[Usage, dict[str, Any]]:
    """(what the images bill, the answer's extra fields)."""
    price = fake.billing.prices.price(model)
    n = _count(body.get("n"), "n", 1)
    if price.per_image:
        quality = str(body.get("quality") or "standard")
        quality = "standard" if quality == "auto" else quality
        size = str(body.get("size") or "1024x1024")
        return Usage(images=((f"{quality}:{size}", n),)), {}
    quality = str(body.get("quality") or "auto")
    size = str(body.get("size") or "auto")
    quality = "medium" if quality == "auto" else quality
    size = "1024x1024" if size == "auto" else size
    per_image = dict(price.image_output_tokens)[f"{quality}:{size}"]
    text = tokens.count_text(str(body.get("prompt") or ""), model)
    image = inputs * INPUT_IMAGE_TOKENS
    usage = Usage(text + image, 0, n * per_image, image_input_tokens=image)
    reported = {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": n * per_image,
        "total_tokens": text + image + n * per_image,
    }
    return usage, {
        "quality": quality,
        "size": size,
        "output_format": "png",
        "background": "opaque",
        "usage": reported,
    }


async def images(fake: FakeOpenAI, call: _Call, endpoint: str) -> web.StreamResponse:
    body = call.body if endpoint == "images.generations" else await form_of(call)
    model = require_model(body)
    inputs = sum(1 for name, _ in body.get("_files", []) if name.rstrip("[]") in ("image", "mask"))
    try:
        usage, extra = _image_usage(fake, model, body, inputs)
    except LookupError:
        raise RequestError(400, f"Invalid model {model!r} for images.", "model", "invalid_value") from None
    fake.billing.charge(endpoint, model, usage)
    n = _count(body.get("n"), "n", 1)
    answer = {"created": int(time.time()), "data": [{"b64_json": _PIXEL} for _ in range(n)], **extra}
    if "usage" in extra:
        answer["usage"] = call.usage(extra["usage"])
    return fake._json(answer, call.started)


async def speech(fake: FakeOpenAI, call: _Call) -> web.StreamResponse:
    body = call.body
    model = require_model(body)
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise RequestError(400, "Missing required parameter: 'input'.", "input", "missing_required_parameter")
    speed = float(body.get("speed") or 1.0)
    price = fake.billing.prices.price(model)
    if price.per_million_characters is not None:
        usage = Usage(characters=len(text))
    else:
        audio = math.ceil(len(text) / speed)  # the fake speaks one audio token per character
        prompt = tokens.count_text(text, model)
        usage = Usage(prompt, 0, audio, audio_output_tokens=audio)
    fake.billing.charge("audio.speech", model, usage)
    audio_bytes = b"ID3" + b"\x00" * (len(text) * 8)
    return web.Response(
        body=audio_bytes, headers={**fake._headers(call.started, 0), "Content-Type": "audio/mpeg"}
    )


async def transcription(fake: FakeOpenAI, call: _Call, endpoint: str) -> web.StreamResponse:
    form = await form_of(call)
    model = require_model(form)
    size = sum(n for name, n in form.get("_files", []) if name == "file")
    if not size:
        raise RequestError(400, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
    seconds = max(size / AUDIO_BYTES_PER_SECOND, 0.1)
    price = fake.billing.prices.price(model)
    answer: dict[str, Any] = {"text": TRANSCRIPT}
    if price.per_minute is not None:
        usage = Usage(audio_milliseconds=math.ceil(seconds * 1000))
        if endpoint == "audio.transcriptions":  # translations report no usage
            answer["usage"] = {"type": "duration", "seconds": math.ceil(seconds)}
            usage = Usage(audio_milliseconds=math.ceil(seconds) * 1000)
    else:
        audio = math.ceil(seconds * 5)  # five audio tokens a second
        prompt = tokens.count_text(str(form.get("prompt") or ""), model)
        output = tokens.count_text(TRANSCRIPT, model)
        usage = Usage(prompt + audio, 0, output, audio_input_tokens=audio)
        answer["usage"] = {
            "type": "tokens",
            "input_tokens": prompt + audio,
            "input_token_details": {"text_tokens": prompt, "audio_tokens": audio},
            "output_tokens": output,
            "total_tokens": prompt + audio + output,
        }
    fake.billing.charge(endpoint, model, usage)
    if "usage" in answer:
        answer["usage"] = call.usage(answer["usage"])
    return fake._json(answer, call.started)
