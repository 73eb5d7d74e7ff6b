"""Stage input_limit: count the input tokens (tiktoken) and refuse inputs larger than
``requests.maxInputTokens``."""

from __future__ import annotations

import logging
from typing import Any

from .. import refusals
from ..context import RequestContext
from ..tokens import TokenCountError, count_input_tokens

log = logging.getLogger("openai_policy_sidecar.pipeline.input_limit")


def check_input_tokens(input_tokens: int, max_input_tokens: int | None) -> refusals.Refusal | None:
    if max_input_tokens is None or input_tokens <= max_input_tokens:
        return None
    return refusals.input_too_large(
        f"The input is {input_tokens} tokens, more than this policy allows "
        f"({max_input_tokens}, spec.requests.maxInputTokens).",
        status=400,
    )


def count_input(
    ctx: RequestContext,
    endpoint: str,
    body: dict[str, Any],
    model: str,
    body_size: int,
    max_input_tokens: int | None,
) -> int:
    """The request's input tokens, checked against the limit; ``body_size`` is the estimate for
    a shape the counter does not know (never under-count, never crash)."""
    try:
        input_tokens = count_input_tokens(endpoint, body, model)
    except TokenCountError as error:  # a shape no OpenAI endpoint accepts: say which field
        raise refusals.invalid_request(
            f"Invalid request body: {error}", param=error.param, code="invalid_type"
        ) from None
    except Exception as error:
        log.warning("token count failed (%s); estimating from the body size", error.__class__.__name__)
        input_tokens = body_size
    ctx.request.input_tokens = input_tokens
    ctx.enforce(check_input_tokens(input_tokens, max_input_tokens))
    return input_tokens
