"""Input limit: refuse inputs larger than ``requests.maxInputTokens`` (counted with tiktoken)."""

from __future__ import annotations

from .. import refusals


def check_input_tokens(input_tokens: int, max_input_tokens: int | None) -> refusals.Refusal | None:
    if max_input_tokens is None or input_tokens <= max_input_tokens:
        return None
    return refusals.input_too_large(
        f"The input is {input_tokens} tokens, more than this policy allows "
        f"({max_input_tokens}, spec.requests.maxInputTokens).",
        status=400,
    )
