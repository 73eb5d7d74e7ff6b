"""Stage clamp: cap the caller's max output tokens at ``requests.maxOutputTokens``; set it when absent.

The clamp bounds both cost and the budget reservation, which is taken for the worst case.
"""

from __future__ import annotations

from typing import Any

from ..context import RequestContext

# The field each endpoint reads; chat accepts both, max_completion_tokens being the current one.
_FIELDS = {
    "chat.completions": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
    "completions": ("max_tokens",),
}


def clamp_output(endpoint: str, body: dict[str, Any], limit: int) -> int:
    """Rewrite ``body`` in place; return the per-choice output cap the upstream will honour (0: none)."""
    fields = _FIELDS.get(endpoint)
    if not fields:
        return 0
    present = [name for name in fields if body.get(name) is not None]
    if not present:
        body[fields[0]] = limit
        return limit
    cap = 0
    for name in present:
        body[name] = min(int(body[name]), limit)
        cap = max(cap, body[name])
    return cap


def choices(endpoint: str, body: dict[str, Any]) -> int:
    """How many completions one request produces (``n``, or ``best_of`` for legacy completions)."""
    if endpoint not in ("chat.completions", "completions"):
        return 1
    n = body.get("n") or 1
    if endpoint == "completions":
        n = max(n, body.get("best_of") or 1)
    return int(n)


def clamp(ctx: RequestContext, endpoint: str, body: dict[str, Any], limit: int) -> int:
    """Clamp ``body`` in place; return the output tokens the worst case covers (every choice)."""
    max_out = clamp_output(endpoint, body, limit)
    ctx.request.max_output_tokens = max_out
    return max_out * choices(endpoint, body)
