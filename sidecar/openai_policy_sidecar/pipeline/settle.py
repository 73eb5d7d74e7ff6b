"""Stage settle: turn the usage a reply reported into the real cost, and settle the budget hold
with it exactly once.

Retries and the budget: the worst-case hold taken before the first attempt is kept through every
retry and settled once, with the real usage of the attempt that answered. Attempts are strictly
sequential, so at most one attempt's worst case is ever in flight and the one hold covers it; an
attempt that failed (429, 5xx, connection error) is billed nothing by OpenAI, so its real usage
is zero. This is exactly "each attempt reserved and settled at its real usage", without a store
round trip per retry, and it keeps the hard budget: a retry can never spend money that was not
held.

Settlement never releases money that may have been spent: an attempt that timed out or lost its
connection after its body was sent (``forward.may_have_reached_upstream``) may have been billed
in full, so it is charged its worst case; only a call refused before anything was sent is
released. A settle above the hold (the reservation was too low: a bug in the price table or the
estimate) is still settled in full, and counted and logged (``status.usage.overReserved``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from openai_policy_store import StoreUnavailable

from .. import media
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
    hold = ctx.budget
    if hold.fixed_fees:
        usage = replace(usage, tool_calls=usage.tool_calls + hold.fixed_fees)
    if hold.web_search_tool != "web_search" and usage.tool_calls:
        usage = replace(
            usage,
            tool_calls=tuple(
                (hold.web_search_tool if tool == "web_search" else tool, n) for tool, n in usage.tool_calls
            ),
        )
    try:
        ctx.budget.cost_micros = prices.usage_cost_micros(ctx.model.sent or "", usage, tier=hold.tier)
    except (ValueError, UnknownModelPrice):
        # Never an exception on the way out (the hold must still be settled): charge the worst case.
        log.warning("could not price the reported usage; charging the worst case")
        ctx.budget.cost_micros = worst
        ctx.outcome.decision = "forwarded:usage_missing"


def meter_body(ctx: RequestContext, prices: PriceTable, payload: bytes) -> None:
    """``meter_usage`` for a plain (non-streamed) reply body."""
    if ctx.request.endpoint in media.MEDIA_ENDPOINTS:
        # Images and audio name no model in their answer; speech's answer is audio bytes.
        meter_usage(ctx, prices, media.settled_usage(ctx, payload), ctx.model.sent)
        return
    try:
        usage, model = from_response(json.loads(payload))
    except ValueError:
        usage, model = None, None
    meter_usage(ctx, prices, usage, model)


def final_cost(ctx: RequestContext) -> int | None:
    """What the call is settled at: its metered cost plus the worst case of every attempt that
    may have been billed without an answer; None when nothing can have been billed."""
    hold = ctx.budget
    cost = hold.cost_micros
    if hold.maybe_billed:
        cost = (cost or 0) + hold.maybe_billed * (hold.worst_micros or 0)
    if cost is None and (hold.attempt_open or hold.answered):
        # Cut off mid-call (the handler cancelled at shutdown): the work may be done and billed.
        cost = hold.worst_micros
    return cost


def check_over_reservation(ctx: RequestContext, cost: int) -> None:
    """A settle above its hold means the reservation was too low: say so, loudly, once."""
    hold = ctx.budget
    if hold.reservation is None or hold.reservation.id.startswith("dryrun-") or not hold.reserved_micros:
        return
    if cost > hold.reserved_micros and ctx.server_input.soft_kinds:
        # The policy chose a soft budget for these inputs (softBudgetInputs): expected, not a bug.
        log.info(
            "request %s settled at %d micro-dollars, above its reservation of %d: %s not reserved "
            "(spec.endpoints.softBudgetInputs)",
            ctx.request_id,
            cost,
            hold.reserved_micros,
            ", ".join(ctx.server_input.soft_kinds),
        )
        return
    if cost > hold.reserved_micros:
        hold.over_reserved = True
        log.error(
            "request %s (model %s) settled at %d micro-dollars, above its reservation of %d: "
            "the price table or the estimate is wrong",
            ctx.request_id,
            ctx.model.sent,
            cost,
            hold.reserved_micros,
        )


async def finish_budget(ctx: RequestContext, metrics: Metrics) -> None:
    """Settle the hold to the real cost, or release it when the upstream billed nothing."""
    hold = ctx.budget
    if hold.reservation is None or hold.settled or hold.ledger is None:
        return
    hold.settled = True
    cost = final_cost(ctx)
    if cost is not None and cost != hold.cost_micros:
        hold.cost_micros = cost  # what record counts as spent too
    try:
        if cost is not None:
            check_over_reservation(ctx, cost)
            await hold.ledger.settle(hold.reservation, cost)
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
