"""Rate limits: requests and tokens per minute, for the policy and per user (state.RateLimiter)."""

from __future__ import annotations

from typing import Any

from .. import refusals


async def check_rate(
    limiter: Any, user: str | None, tokens: int
) -> tuple[refusals.Refusal | None, dict[str, str]]:
    """Ask the limiter; return (refusal or None, the x-ratelimit-* headers to send back)."""
    return refusal_for_decision(await limiter.check(user, tokens))


def refusal_for_decision(decision: Any) -> tuple[refusals.Refusal | None, dict[str, str]]:
    """(refusal or None, the x-ratelimit-* headers to send back) for a RateDecision."""
    # Retry-After is set by the refusal itself (with retry-after-ms); keep one spelling only.
    headers = {k: v for k, v in decision.headers().items() if k.lower() != "retry-after"}
    if decision.allowed:
        return None, headers
    scope = "per user" if str(decision.scope).startswith("user") else "for this policy"
    retryable = getattr(decision, "retryable", True)
    if not retryable:
        # The request alone is over a per-minute limit: waiting cannot help, so no SDK retry.
        return refusals.Refusal(
            429,
            "rate_limit_exceeded",
            f"This request alone exceeds the rate limit {scope}: {decision.limit} {decision.unit} per minute "
            "(spec.rateLimits).",
            type=refusals.RATE_LIMIT,
            headers=headers,
        ), headers
    message = (
        f"Rate limit reached {scope}: {decision.limit} {decision.unit} per minute "
        f"(spec.rateLimits). Please try again in {float(decision.reset_seconds):.3g}s."
    )
    return refusals.rate_limit_exceeded(message, float(decision.reset_seconds), headers), headers
