"""Model policy: allow-list (fnmatch wildcards), fallback downgrade near the budget, alias pinning."""

from __future__ import annotations

from dataclasses import dataclass

from openai_policy_api import ModelsSpec

from .. import refusals


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
