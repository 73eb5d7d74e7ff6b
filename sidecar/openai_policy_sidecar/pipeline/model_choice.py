"""Stage model_choice: allow-list (fnmatch wildcards), fallback downgrade near the budget, alias
pinning, and a known price for the model that is sent (an unpriced model cannot be metered)."""

from __future__ import annotations

from dataclasses import dataclass

from openai_policy_api import ModelsSpec, PolicySpec

from .. import refusals
from ..context import RequestContext
from ..pricing import PriceTable, UnknownModelPrice
from .parse import ParsedRequest, encode_body


@dataclass(frozen=True)
class ModelChoice:
    requested: str
    sent: str  # what goes upstream (after downgrade and pin)
    pinned: bool
    downgraded: bool


def should_downgrade(fraction_used: float, downgrade_at_percent: int | None, fallback: str | None) -> bool:
    """Above ``downgradeAtPercent`` of any budget window, requests switch to ``models.fallback``."""
    if downgrade_at_percent is None or not fallback:
        return False
    return fraction_used * 100 >= downgrade_at_percent


def choose_model(models: ModelsSpec, requested: str, downgrade: bool) -> ModelChoice:
    """Apply allow, fallback and pin to a requested model; raises ``model_not_allowed``.

    The allow-list is matched after pinning (``ModelsSpec.permits``): what may be sent is what
    is allowed. The fallback is the policy author's own choice and always allowed (the CRD
    checks it against the allow-list); pinning applies to it too.
    """
    if not models.permits(requested):
        resolved = models.resolve(requested)
        sent_as = f" ({requested} is pinned to {resolved})" if resolved != requested else ""
        raise refusals.model_not_allowed(
            requested, f"Allowed models{sent_as}: {', '.join(models.allow) or 'none'}."
        )
    chosen = models.fallback if downgrade and models.fallback else requested
    pinned_to = models.pin.get(chosen)
    return ModelChoice(
        requested=requested,
        sent=pinned_to or chosen,
        pinned=pinned_to is not None,
        downgraded=chosen != requested,
    )


def is_drift(sent: str, reported: str | None) -> bool:
    """Did the reply come from another model than the one we asked for?

    An unpinned alias (``gpt-4o``) legitimately comes back dated (``gpt-4o-2024-08-06``); any
    other difference is drift.
    """
    if not reported or reported == sent:
        return False
    return not reported.startswith(sent + "-")


def choose(ctx: RequestContext, spec: PolicySpec, fraction_used: float, requested: str) -> ModelChoice:
    """The model a metered request is sent with; in dryRun a refused model is sent as asked.

    ``fraction_used`` is the budget fraction the report loop last read (every ~1 s) or a refusal
    set: no store round trip on the request path for a threshold that moves slowly.
    """
    downgrade = should_downgrade(fraction_used, spec.budget.downgrade_at_percent, spec.models.fallback)
    try:
        choice = choose_model(spec.models, requested, downgrade)
    except refusals.Refusal as refusal:
        ctx.enforce(refusal)
        choice = ModelChoice(requested=requested, sent=requested, pinned=False, downgraded=False)
    ctx.model.sent, ctx.model.pinned, ctx.model.downgraded = choice.sent, choice.pinned, choice.downgraded
    return choice


def require_price(ctx: RequestContext, prices: PriceTable, model: str) -> bool:
    """False (after ``ctx.enforce``) when the model has no price: its spend could not be metered."""
    try:
        prices.price(model)
    except UnknownModelPrice:
        ctx.enforce(
            refusals.model_not_allowed(
                model,
                "It has no known price, so its spend could not be metered: add it to spec.pricing.models.",
            )
        )
        return False
    return True


def pin_passthrough(ctx: RequestContext, models: ModelsSpec, parsed: ParsedRequest) -> bytes:
    """Other /v1 paths: allow + pin when the JSON body names a model (counted, not metered);
    returns the body to send."""
    if parsed.body is None or parsed.model is None:
        return parsed.raw
    try:
        choice = choose_model(models, parsed.model, downgrade=False)
    except refusals.Refusal as refusal:
        ctx.enforce(refusal)
        ctx.model.sent = parsed.model
        return parsed.raw
    ctx.model.sent, ctx.model.pinned = choice.sent, choice.pinned
    if choice.sent == parsed.model:
        return parsed.raw
    parsed.body["model"] = choice.sent
    return encode_body(parsed.body)
