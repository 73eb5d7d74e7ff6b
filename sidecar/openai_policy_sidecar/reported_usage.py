"""Read the token usage OpenAI reports, whatever the endpoint calls the fields.

A usage block the sidecar cannot trust (a count that is negative, not an integer, missing, or a
cached count larger than the input) is treated as no usage at all: the caller then charges the
worst case. Reading it as zero would let a broken or hostile upstream make calls free, and
raising would lose the request's bookkeeping.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger("openai_policy_sidecar.reported_usage")


@dataclass(frozen=True)
class Usage:
    """What one call consumed. Token kinds are parts of ``input_tokens`` / ``output_tokens`` as
    OpenAI reports them; the rest is billed beside tokens (tool calls, images, characters,
    audio duration) at the tier the response names."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    image_input_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    service_tier: str | None = None
    tool_calls: tuple[tuple[str, int], ...] = ()  # (tool, calls) of Responses built-in tools
    images: tuple[tuple[str, int], ...] = ()  # ("quality:size", images) of per-image models
    characters: int = 0  # speech billed per input character
    audio_milliseconds: int = 0  # audio billed per minute of input


class _Malformed(ValueError):
    pass


def _count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(field)
    return value


def _detail(details: object, field: str, name: str) -> int:
    if details is None:
        return 0
    if not isinstance(details, dict):
        raise _Malformed(field)
    value = details.get(name)
    return 0 if value is None else _count(value, f"{field}.{name}")


def _parse(usage: dict[str, Any]) -> Usage:
    if usage.get("type") == "duration":  # transcriptions billed by the minute of audio
        seconds = usage.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e7:
            raise _Malformed("seconds")
        return Usage(audio_milliseconds=math.ceil(seconds * 1000))
    if "input_tokens" in usage or "output_tokens" in usage:
        input_tokens = _count(usage.get("input_tokens"), "input_tokens")
        output_tokens = _count(usage.get("output_tokens"), "output_tokens")
        in_details = usage.get("input_tokens_details", usage.get("input_token_details"))
        details_field = "input_tokens_details"
    else:
        input_tokens = _count(usage.get("prompt_tokens"), "prompt_tokens")
        if "completion_tokens" in usage:
            output_tokens = _count(usage["completion_tokens"], "completion_tokens")
        elif usage.get("total_tokens") == input_tokens:
            output_tokens = 0  # embeddings report only prompt and total tokens
        else:
            raise _Malformed("completion_tokens")
        in_details = usage.get("prompt_tokens_details")
        details_field = "prompt_tokens_details"
    out_details = usage.get("output_tokens_details", usage.get("completion_tokens_details"))
    cached = _detail(in_details, details_field, "cached_tokens")
    written = _detail(in_details, details_field, "cache_write_tokens")
    image = _detail(in_details, details_field, "image_tokens")
    audio = _detail(in_details, details_field, "audio_tokens")
    audio_out = _detail(out_details, "output_tokens_details", "audio_tokens")
    if cached + written > input_tokens or image + audio > input_tokens:
        raise _Malformed("cached_tokens")
    if audio_out > output_tokens:
        raise _Malformed("output_tokens_details.audio_tokens")
    return Usage(
        input_tokens,
        cached,
        output_tokens,
        cache_write_tokens=written,
        image_input_tokens=image,
        audio_input_tokens=audio,
        audio_output_tokens=audio_out,
    )


def parse_usage(usage: Any) -> Usage | None:
    """Chat/completions/embeddings say prompt/completion tokens; Responses says input/output tokens.

    None when absent or untrustworthy (see the module's docstring)."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        log.warning("the upstream reported usage that is not an object; charging the worst case")
        return None
    try:
        return _parse(usage)
    except _Malformed as bad:
        # The field's name only: the value came from the upstream and is not ours to print.
        log.warning("the upstream reported a malformed usage.%s; charging the worst case", bad)
        return None


# Output items of the Responses API that are billed per call, beside tokens, by tool name. A
# code interpreter is billed per container, so its calls count once per container id.
TOOL_CALL_ITEMS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
}


def tool_calls(output: object, web_search_tool: str = "web_search") -> tuple[tuple[str, int], ...]:
    """(tool, calls) from a Responses ``output`` list; ``web_search_tool`` names the fee a
    ``web_search_call`` is billed at (the request's tool: web_search or web_search_preview)."""
    if not isinstance(output, list):
        return ()
    counts: dict[str, int] = {}
    containers: set[str] = set()
    for item in output:
        if not isinstance(item, dict):
            continue
        tool = TOOL_CALL_ITEMS.get(str(item.get("type")))
        if tool is None:
            continue
        if tool == "code_interpreter":
            container = item.get("container_id")
            key = container if isinstance(container, str) else f"item:{len(containers)}"
            if key in containers:
                continue
            containers.add(key)
        if tool == "web_search":
            tool = web_search_tool
        counts[tool] = counts.get(tool, 0) + 1
    return tuple(sorted(counts.items()))


def with_response_facts(usage: Usage, body: dict[str, Any], web_search_tool: str = "web_search") -> Usage:
    """``usage`` with what the rest of a response body bills: its service tier and tool calls."""
    tier = body.get("service_tier")
    calls = tool_calls(body.get("output"), web_search_tool)
    return replace(usage, service_tier=tier if isinstance(tier, str) else None, tool_calls=calls)


def from_response(body: Any, web_search_tool: str = "web_search") -> tuple[Usage | None, str | None]:
    """(usage, model) of a non-streamed reply body (a Responses object or a chat completion)."""
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    usage = parse_usage(body.get("usage"))
    if usage is not None:
        usage = with_response_facts(usage, body, web_search_tool)
    return usage, model if isinstance(model, str) else None
