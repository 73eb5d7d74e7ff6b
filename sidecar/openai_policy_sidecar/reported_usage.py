"""Read the token usage OpenAI reports, whatever the endpoint calls the fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def parse_usage(usage: Any) -> Usage | None:
    """Chat/completions/embeddings say prompt/completion tokens; Responses says input/output tokens."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        return Usage(
            _int(usage.get("input_tokens")),
            _int(details.get("cached_tokens")),
            _int(usage.get("output_tokens")),
        )
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        _int(usage.get("prompt_tokens")),
        _int(details.get("cached_tokens")),
        _int(usage.get("completion_tokens")),
    )


def from_response(body: Any) -> tuple[Usage | None, str | None]:
    """(usage, model) of a non-streamed reply body."""
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    return parse_usage(body.get("usage")), model if isinstance(model, str) else None
