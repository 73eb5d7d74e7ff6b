"""Stage rate_and_budget: count the request against the rate limits (requests and tokens per
minute, for the policy and per user), then hold its worst-case cost on the budget.

Reservations make the hard budget hold under concurrency: a call only goes upstream when its
worst case fits in what is left after settled spend *and* every reservation in flight. With a
priced model both are asked with one ``admit`` call (one store round trip instead of two); the
price is that a request the budget refuses still counts towards the rate limit, as OpenAI counts
its own refused requests. A reservation taken for a request the rate limit then refuses is
released by ``settle.finish_budget``.
"""

from __future__ import annotations

from typing import Any

from openai_policy_store import (
    AdmitOutcome,
    BudgetExceeded,
    BudgetLedger,
    RateDecision,
    RateLimiter,
    Reservation,
    StoreUnavailable,
    admit,
    new_reservation_id,
)
from openai_policy_store.budget import name_problem
from openai_policy_store.keyspace import scope_kind
from openai_policy_store.money import micros_to_usd

from .. import refusals
from ..context import RequestContext
from ..metrics import Metrics
from ..pricing import PriceTable, normal_tier
from ..rate_headers import budget_headers
from ..reported_usage import Usage


async def check_rate(
    limiter: RateLimiter, user: str | None, tokens: int
) -> tuple[refusals.Refusal | None, dict[str, str]]:
    """Ask the limiter; return (refusal or None, the x-ratelimit-* headers to send back)."""
    return refusal_for_decision(await limiter.check(user, tokens))


def refusal_for_decision(decision: RateDecision) -> tuple[refusals.Refusal | None, dict[str, str]]:
    """(refusal or None, the x-ratelimit-* headers to send back) for a RateDecision."""
    # Retry-After is set by the refusal itself (with retry-after-ms); keep one spelling only.
    headers = {k: v for k, v in decision.headers().items() if k.lower() != "retry-after"}
    if decision.allowed:
        return None, headers
    scope = "per user" if str(decision.scope).startswith("user") else "for this policy"
    if not decision.retryable:
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


def budget_refusal(exceeded: BudgetExceeded) -> refusals.Refusal:
    return refusals.budget_exceeded(
        exceeded.window,
        micros_to_usd(exceeded.limit_micros),
        micros_to_usd(exceeded.spent_micros),
        micros_to_usd(exceeded.reserved_micros),
        exceeded.owner if exceeded.kind else None,
    )


def unheld(ledger: BudgetLedger, user: str | None = None, feature: str | None = None) -> Reservation:
    """A dry-run stand-in for a refused reservation: holds nothing, but settling it still adds the
    real cost to spent (the store settles an id it does not hold as pure spend), the user's and
    feature's included."""
    buckets = ledger.buckets(user=user, feature=feature)
    return Reservation("dryrun-" + new_reservation_id(), 0, buckets, user=user, feature=feature)


def check_names(user: str | None, feature: str | None) -> None:
    """A user or feature name too long to key a budget or to show in the status is refused (400)."""
    for kind, name, param in (("user", user, "user"), ("feature", feature, None)):
        problem = name_problem(kind, name)
        if problem is not None:
            source = (
                "the user field or the X-OpenAI-Policy-User header"
                if kind == "user"
                else "X-OpenAI-Policy-Feature"
            )
            raise refusals.invalid_request(f"{problem} ({source}); send a shorter one.", param=param)


def remaining_headers(outcome: AdmitOutcome) -> dict[str, str]:
    """The remaining-budget headers from what the admitting store call read (no call of their own)."""
    return budget_headers(
        (scope_kind(b.scope), b.window, left)
        for b, left in zip(outcome.buckets, outcome.remaining, strict=False)
    )


async def check_and_reserve(
    ctx: RequestContext,
    limiter: RateLimiter,
    ledger: BudgetLedger,
    tokens: int,
    worst_micros: int | None,
    metrics: Metrics,
) -> None:
    """Rate limits for ``tokens``, then a hold of ``worst_micros`` (None: an unpriced model,
    forwarded in dryRun, holds nothing). Fills ``ctx.budget`` and ``ctx.outcome.rate_headers``."""
    hold = ctx.budget
    hold.ledger, hold.worst_micros = ledger, worst_micros
    reservation: Reservation | None = None
    budget_refused: refusals.Refusal | None = None
    user, feature = ctx.request.user, ctx.request.feature
    check_names(user, feature)
    if worst_micros is None:
        rate_refused, headers = await rate_only(limiter, user, tokens, metrics)
    else:
        outcome = await admit(
            limiter,
            ledger,
            user,
            tokens,
            worst_micros,
            feature=feature,
            reserve_when_rate_refused=ctx.dry_run,
        )
        if outcome.rate_error is not None or outcome.rate is None:
            metrics.child(metrics.store_errors, "rate_limit").inc()
            rate_refused, headers = refusals.store_unavailable(), {}
        else:
            rate_refused, headers = refusal_for_decision(outcome.rate)
        headers = {**headers, **remaining_headers(outcome)}
        if outcome.budget_error is not None:
            metrics.child(metrics.store_errors, "budget_reserve").inc()
            budget_refused = refusals.store_unavailable()
        elif outcome.budget_exceeded is not None:
            budget_refused = budget_refusal(outcome.budget_exceeded)
        else:
            reservation = outcome.reservation
    ctx.outcome.rate_headers = headers
    if reservation is not None:
        hold.reservation, hold.reserved_micros = reservation, worst_micros or 0
    ctx.enforce(rate_refused)
    if budget_refused is not None:
        ctx.enforce(budget_refused)
        # Dry run: no money held, but the real cost is still settled into spent afterwards.
        hold.reservation = unheld(ledger, user, feature)


async def rate_only(
    limiter: RateLimiter, user: str | None, tokens: int, metrics: Metrics
) -> tuple[refusals.Refusal | None, dict[str, str]]:
    try:
        return await check_rate(limiter, user, tokens)
    except StoreUnavailable:  # the limiter falls back to local counters unless it fails closed
        metrics.child(metrics.store_errors, "rate_limit").inc()
        return refusals.store_unavailable(), {}


# Endpoints whose requests choose a service tier (the others are always served at default).
_TIERED = frozenset({"chat.completions", "responses"})


def reserve_tier(endpoint: str, body: dict[str, Any], auto_tier: str) -> str | None:
    """The tier a request is reserved at: the one it asks for; for auto (or none) the policy's
    ``pricing.autoServiceTier``, whose default ``highest`` is None here (the dearest tier the
    model is offered at: the project's settings may make auto mean priority)."""
    if endpoint not in _TIERED:
        return "default"
    requested = normal_tier(body.get("service_tier"))
    if requested is None:
        return None if auto_tier == "highest" else auto_tier
    return requested


def worst_case(
    ctx: RequestContext,
    prices: PriceTable,
    auto_tier: str,
    endpoint: str,
    body: dict[str, Any],
    model: str,
    input_tokens: int,
    output_tokens: int,
    extra: Usage | None = None,
) -> int:
    """The hold for a metered request: its worst case at the tier it may be served at, with
    whatever else it may bill (``extra``: built-in tool calls, images, audio)."""
    tier = reserve_tier(endpoint, body, auto_tier)
    ctx.budget.tier = tier
    worst = prices.worst_case_micros(model, input_tokens, output_tokens, tier=tier, extra=extra)
    if tier not in (None, "default"):
        # A tier the model is not offered at (or has no capacity for) may be served at default.
        worst = max(worst, prices.worst_case_micros(model, input_tokens, output_tokens, extra=extra))
    return worst
