"""Read the token usage OpenAI reports, whatever the endpoint calls the fields.

A usage block the sidecar cannot trust (a count that is negative, not an integer, missing, or a
cached count larger than the input) is treated as no usage at all: the caller then charges the
worst case. Reading it as zero would let a broken or hostile upstream make calls free, and
raising would lose the request's bookkeeping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("openai_policy_sidecar.reported_usage")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


class _Malformed(ValueError):
    pass


def _count(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(field)
    return value


def _details_cached(details: object, field: str) -> int:
    if details is None:
        return 0
    if not isinstance(details, dict):
        raise _Malformed(field)
    cached = details.get("cached_tokens")
    return 0 if cached is None else _count(cached, f"{field}.cached_tokens")


def _parse(usage: dict[str, Any]) -> Usage:
    if "input_tokens" in usage or "output_tokens" in usage:
        input_tokens = _count(usage.get("input_tokens"), "input_tokens")
        output_tokens = _count(usage.get("output_tokens"), "output_tokens")
        cached = _details_cached(usage.get("input_tokens_details"), "input_tokens_details")
    else:
        input_tokens = _count(usage.get("prompt_tokens"), "prompt_tokens")
        if "completion_tokens" in usage:
            output_tokens = _count(usage["completion_tokens"], "completion_tokens")
        elif usage.get("total_tokens") == input_tokens:
            output_tokens = 0  # embeddings report only prompt and total tokens
        else:
            raise _Malformed("completion_tokens")
        cached = _details_cached(usage.get("prompt_tokens_details"), "prompt_tokens_details")
    if cached > input_tokens:
        raise _Malformed("cached_tokens")
    return Usage(input_tokens, cached, output_tokens)


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


def from_response(body: Any) -> tuple[Usage | None, str | None]:
    """(usage, model) of a non-streamed reply body."""
    if not isinstance(body, dict):
        return None, None
    model = body.get("model")
    return parse_usage(body.get("usage")), model if isinstance(model, str) else None
