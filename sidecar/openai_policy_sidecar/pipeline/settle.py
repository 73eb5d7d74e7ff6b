"""Stage settle: turn the usage a reply reported into the real cost, and settle the budget hold
with it exactly once.

Retries and the budget: the worst-case hold taken before the first attempt is kept through every
retry and settled once, with the real usage of the attempt that answered. Attempts are strictly
sequential, so at most one attempt's worst case is ever in flight and the one hold covers it; an
attempt that failed (429, 5xx, connection error) is billed nothing by OpenAI, so its real usage
is zero. This is exactly "each attempt reserved and settled at its real usage", without a store
round trip per retry, and it keeps the hard budget: a retry can never spend money that was not
held.
"""

from __future__ import annotations

import json
import logging

from openai_policy_store import StoreUnavailable

from ..context import RequestContext
from ..metrics import Metrics
from ..pricing import PriceTable, UnknownModelPrice
from ..reported_usage import Usage, from_response
from .model_choice import is_drift

log = logging.getLogger("openai_policy_sidecar.pipeline.settle")


def meter_usage(ctx: RequestContext, prices: PriceTable, usage: Usage | None, model: str | None) -> None:
    """The cost of what the upstream reported; without usage, the worst case is charged."""
    ctx.model.reported = model
    ctx.model.drift = bool(ctx.model.sent) and is_drift(ctx.model.sent or "", model)
    worst = ctx.budget.worst_micros
    if usage is None:
        ctx.budget.cost_micros = worst  # spend is never unmetered: no usage, assume the worst case
        ctx.outcome.decision = "forwarded:usage_missing"
        return
    ctx.upstream.usage = usage
    if worst is None:
        return  # unpriced model forwarded in dry-run mode
    try:
        ctx.budget.cost_micros = prices.cost_micros(
            ctx.model.sent or "", usage.input_tokens, usage.cached_tokens, usage.output_tokens
        )
    except (ValueError, UnknownModelPrice):
        # Never an exception on the way out (the hold must still be settled): charge the worst case.
        log.warning("could not price the reported usage; charging the worst case")
        ctx.budget.cost_micros = worst
        ctx.outcome.decision = "forwarded:usage_missing"


def meter_body(ctx: RequestContext, prices: PriceTable, payload: bytes) -> None:
    """``meter_usage`` for a plain (non-streamed) reply body."""
    try:
        usage, model = from_response(json.loads(payload))
    except ValueError:
        usage, model = None, None
    meter_usage(ctx, prices, usage, model)


async def finish_budget(ctx: RequestContext, metrics: Metrics) -> None:
    """Settle the hold to the real cost, or release it when the upstream billed nothing."""
    hold = ctx.budget
    if hold.reservation is None or hold.settled or hold.ledger is None:
        return
    hold.settled = True
    try:
        if hold.cost_micros is not None:
            await hold.ledger.settle(hold.reservation, hold.cost_micros)
        else:
            await hold.ledger.release(hold.reservation)
    except StoreUnavailable:
        metrics.store_errors.labels(operation="budget_settle").inc()
        log.error("could not settle reservation %s: the shared store is unavailable", hold.reservation.id)


def usage_dict(usage: Usage | None) -> dict[str, int] | None:
    """Usage as a cache entry stores it (what a later hit saves)."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }
