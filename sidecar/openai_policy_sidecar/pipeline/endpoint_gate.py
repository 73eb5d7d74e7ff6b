"""Stage endpoint_gate: ``spec.endpoints``, deny by default, on the normalised path.

Runs after suspend and before the key is attached or anything is forwarded. A path the surfaces
table does not know, a surface the policy does not list, a read of stored objects without
``readStoredObjects``, or a metered route whose metering the pipeline lacks: 403
endpoint_not_allowed naming the field to change. A call that can spend but that the pipeline
does not meter (an ``allowUnmetered`` surface) counts as one request against the rate limits
and is refused once any budget window is exhausted: the budget cannot be reserved for it, but it
is never spent past its end.
"""

from __future__ import annotations

from openai_policy_api import UNMETERED_SURFACES, EndpointsSpec
from openai_policy_store import BudgetLedger, RateLimiter, StoreUnavailable
from openai_policy_store.money import micros_to_usd

from .. import refusals
from ..context import RequestContext
from ..metrics import Metrics
from ..surfaces import Route
from .parse import METERED_ENDPOINTS, ParsedRequest
from .rate_and_budget import rate_only  # the same rate check, without a hold


def refusal_for(
    endpoints: EndpointsSpec, method: str, path: str, route: Route | None
) -> refusals.Refusal | None:
    """Why the policy refuses this call, or None when it may go on."""
    if route is None:
        return refusals.endpoint_not_allowed(
            f"{method} {path} is not an OpenAI API path this sidecar knows, so it is refused "
            "(deny by default): only the surfaces listed in spec.endpoints can be reached."
        )
    surface = route.surface
    if not endpoints.allows(surface):
        if surface in UNMETERED_SURFACES:
            how = (
                f"it spends money the sidecar cannot meter, so only add `{surface}` to "
                "spec.endpoints.allowUnmetered if a soft budget for it is acceptable"
            )
        else:
            how = f"add `{surface}` to spec.endpoints.allow to allow it"
        return refusals.endpoint_not_allowed(
            f"{method} {path} belongs to the `{surface}` API surface, which this policy does not allow: {how}."
        )
    if route.access == "read" and not endpoints.read_stored_objects:
        return refusals.endpoint_not_allowed(
            f"{method} {path} reads stored objects of the whole OpenAI project (`{surface}`), which this "
            "policy does not allow: set spec.endpoints.readStoredObjects to true to allow it."
        )
    if route.cost == "metered" and route.endpoint not in METERED_ENDPOINTS:
        return refusals.endpoint_not_allowed(
            f"{method} {path} spends money this sidecar version cannot meter yet, so it is refused to keep "
            "the budget hard."
        )
    return None


def check(ctx: RequestContext, endpoints: EndpointsSpec, parsed: ParsedRequest) -> None:
    """Refuse (or, in dryRun, record) what the policy's endpoints section does not allow."""
    if parsed.route is not None:
        ctx.request.surface, ctx.request.route = parsed.route.surface, parsed.route.label
    ctx.enforce(refusal_for(endpoints, parsed.method, parsed.path, parsed.route))


def spends_unmetered(parsed: ParsedRequest) -> bool:
    """A call that can spend and that no reservation covers (rate_and_budget never sees it)."""
    route = parsed.route
    return route is not None and route.spends and not parsed.metered


async def admit_unmetered(
    ctx: RequestContext, limiter: RateLimiter, ledger: BudgetLedger, metrics: Metrics
) -> None:
    """An unmetered spending call: one request (no tokens the sidecar can count) against the rate
    limits, then refused once any budget window has nothing left."""
    refused, ctx.outcome.rate_headers = await rate_only(limiter, ctx.request.user, 0, metrics)
    ctx.enforce(refused)
    await stop_if_exhausted(ctx, ledger, metrics)


async def stop_if_exhausted(ctx: RequestContext, ledger: BudgetLedger, metrics: Metrics) -> None:
    """Refuse an unmetered spending call once any budget window has nothing left."""
    if not ledger.has_limits:
        return
    try:
        usage = await ledger.usage()
    except StoreUnavailable:
        metrics.child(metrics.store_errors, "budget_read").inc()
        ctx.enforce(refusals.store_unavailable())
        return
    for window in usage:
        if window.limit_micros is not None and window.remaining_micros == 0:
            ctx.enforce(
                refusals.budget_exceeded(
                    window.window,
                    micros_to_usd(window.limit_micros),
                    micros_to_usd(window.spent_micros),
                    micros_to_usd(window.reserved_micros),
                )
            )
            return
