"""Metering images and audio: what a request may bill beyond the text tokens the sidecar counts,
and what an answer without a usage block billed.

- Images. gpt-image models bill tokens and report them: the worst case is ``n`` images of the
  asked quality and size (``auto``: the dearest) from the table's ``imageOutputTokens``, plus
  ``maxImageInputTokens`` per input image (and, with ``input_fidelity: high``, the tokens of the
  largest image on top); settled from the reported usage. dall-e models bill
  per image of a quality and size: reserved for ``n`` and settled on the images returned.
- Speech. tts-1 bills input characters: exact before the call. gpt-4o-mini-tts bills text tokens
  and audio output tokens, and its answer (audio bytes) reports neither: it is charged its worst
  case, ``maxAudioOutputTokensPerCharacter`` per character divided by ``speed``.
- Transcriptions and translations. The audio's length is not known before the call; it is
  bounded by the file's size at ``MIN_AUDIO_BYTES_PER_SECOND`` (a rate below any speech codec's),
  and token-billed models by their context window too. whisper-1 is settled on the reported
  duration (usage ``seconds``, or ``duration`` of a verbose answer), token-billed models on the
  reported usage; an answer with neither (text, srt, vtt) is charged its worst case.

Streaming answers of these endpoints are refused: their usage arrives in events the sidecar
does not meter yet, and a hard budget cannot forward what it cannot meter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import refusals
from .context import RequestContext
from .form_body import FormBody
from .pricing import ModelPrice, PriceTable, UnknownModelPrice
from .reported_usage import Usage, parse_usage

IMAGE_ENDPOINTS = frozenset({"images.generations", "images.edits", "images.variations"})
AUDIO_ENDPOINTS = frozenset({"audio.speech", "audio.transcriptions", "audio.translations"})
MEDIA_ENDPOINTS = IMAGE_ENDPOINTS | AUDIO_ENDPOINTS
# 4 kbit/s: below the bitrate of any codec OpenAI accepts speech in, so a file of N bytes holds
# at most N / 500 seconds of audio.
MIN_AUDIO_BYTES_PER_SECOND = 500
# Bounds per second of audio for token-billed transcription (both far above what speech yields).
AUDIO_TOKENS_PER_SECOND = 10
TEXT_TOKENS_PER_SECOND = 10
MAX_IMAGES = 10


def _int_field(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise refusals.invalid_request(
            f"Invalid '{name}': expected an integer from {low} to {high}.", param=name, code="invalid_value"
        )
    return value


def _speed(body: Mapping[str, Any]) -> float:
    value = body.get("speed", 1.0)
    try:
        speed = float(value)
    except (TypeError, ValueError):
        speed = math.nan
    if isinstance(value, bool) or not 0.25 <= speed <= 4.0:
        raise refusals.invalid_request(
            "Invalid 'speed': expected a number from 0.25 to 4.0.", param="speed", code="invalid_value"
        )
    return speed


def refuse_stream(endpoint: str, body: Mapping[str, Any]) -> None:
    """Streamed images and audio are not metered yet: refused rather than forwarded unmetered."""
    streamed = body.get("stream") in (True, "true") or body.get("stream_format") == "sse"
    if endpoint in MEDIA_ENDPOINTS and streamed:
        raise refusals.invalid_request(
            f"Streaming is not supported through this sidecar for {endpoint}: its cost could not be "
            "metered. Send the request without stream (or stream_format: sse).",
            param="stream",
            code="unsupported_value",
        )


def demand(
    ctx: RequestContext,
    endpoint: str,
    body: Mapping[str, Any],
    form: FormBody | None,
    model: str,
    prices: PriceTable,
) -> Usage | None:
    """What a media request may bill beyond the text tokens counted, for its worst case; also
    sets ``ctx.budget.expected``, what it bills when the answer reports no usage (None: the
    worst case). None for other endpoints and for an unpriced model."""
    if endpoint not in MEDIA_ENDPOINTS:
        return None
    refuse_stream(endpoint, body)
    try:
        price = prices.price(model)
    except UnknownModelPrice:
        return None
    files = form.files if form is not None else []
    if endpoint in IMAGE_ENDPOINTS:
        return _image_demand(ctx, endpoint, body, form, price)
    if endpoint == "audio.speech":
        return _speech_demand(ctx, body, price)
    size = sum(part.size for part in files) if form is not None else 0
    seconds = max(1, math.ceil(size / MIN_AUDIO_BYTES_PER_SECOND))
    if price.per_minute is not None:
        return Usage(audio_milliseconds=seconds * 1000)
    window = price.context_window or seconds * AUDIO_TOKENS_PER_SECOND
    audio = min(seconds * AUDIO_TOKENS_PER_SECOND, window)
    text = min(seconds * TEXT_TOKENS_PER_SECOND, window)
    return Usage(input_tokens=audio, audio_input_tokens=audio, output_tokens=text)


def _image_demand(
    ctx: RequestContext, endpoint: str, body: Mapping[str, Any], form: FormBody | None, price: ModelPrice
) -> Usage:
    n = _int_field(body, "n", 1, 1, MAX_IMAGES)
    size = str(body.get("size") or "auto")
    quality = str(body.get("quality") or "auto")
    if price.per_image:
        quality = "standard" if quality in ("auto", "standard") else quality
        size = "1024x1024" if size == "auto" else size
        images = ((f"{quality}:{size}", n),)
        ctx.budget.expected = Usage(images=images)
        return Usage(images=images)
    per_image = dict(price.image_output_tokens)
    kinds = [
        tokens
        for kind, tokens in per_image.items()
        if quality in ("auto", kind.split(":")[0]) and size in ("auto", kind.split(":")[1])
    ]
    output = n * max(kinds or per_image.values() or [0])
    inputs = 0
    if endpoint != "images.generations":
        if form is not None:
            inputs = len(form.files_named("image", "mask"))
        else:
            given = body.get("images")
            inputs = (len(given) if isinstance(given, list) else 0) + (1 if body.get("mask") else 0)
    per_input = price.max_image_input_tokens
    if body.get("input_fidelity") == "high":  # high fidelity bills up to one more large image's tokens
        per_input += max(per_image.values() or [0])
    image_tokens = inputs * per_input
    return Usage(input_tokens=image_tokens, image_input_tokens=image_tokens, output_tokens=output)


def _speech_demand(ctx: RequestContext, body: Mapping[str, Any], price: ModelPrice) -> Usage:
    text = body.get("input")
    characters = len(text) if isinstance(text, str) else 0
    if price.per_million_characters is not None:
        ctx.budget.expected = Usage(characters=characters)
        return Usage(characters=characters)
    audio = math.ceil(characters * price.max_audio_output_tokens_per_character / _speed(body))
    return Usage(output_tokens=audio, audio_output_tokens=audio)


def settled_usage(ctx: RequestContext, payload: bytes) -> Usage | None:
    """The usage of a media answer: reported usage, else what the request fixed (images
    returned, characters), else a whisper duration; None: charge the worst case."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if isinstance(body, dict):
        usage = parse_usage(body.get("usage"))
        if usage is not None:
            return usage
        duration = body.get("duration")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and 0 <= duration < 1e7:
            return Usage(audio_milliseconds=math.ceil(duration * 1000))
    expected = ctx.budget.expected
    if expected is None:
        return None
    if expected.images and isinstance(body, dict) and isinstance(body.get("data"), list):
        returned = len(body["data"])
        return replace(expected, images=tuple((kind, min(n, returned)) for kind, n in expected.images))
    if expected.images:
        return None  # an answer without its images: charge what was reserved
    return expected
