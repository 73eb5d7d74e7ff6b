"""Model policy: allow-list (fnmatch wildcards), fallback downgrade near the budget, alias pinning."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .. import refusals


@dataclass(frozen=True)
class ModelChoice:
    requested: str
    sent: str  # what goes upstream (after downgrade and pin)
    pinned: bool
    downgraded: bool


def is_allowed(model: str, allow: list[str]) -> bool:
    return any(fnmatchcase(model, pattern) for pattern in allow)


def should_downgrade(fraction_used: float, downgrade_at_percent: int | None, fallback: str | None) -> bool:
    """Above ``downgradeAtPercent`` of any budget window, requests switch to ``models.fallback``."""
    if downgrade_at_percent is None or not fallback:
        return False
    return fraction_used * 100 >= downgrade_at_percent


def choose_model(models: Any, requested: str, downgrade: bool) -> ModelChoice:
    """Apply allow, fallback and pin to a requested model; raises ``model_not_allowed``.

    The allow-list is checked against the name the caller asked for; the fallback is the policy
    author's own choice and is therefore always allowed. Pinning applies to the fallback too.
    """
    if not is_allowed(requested, list(models.allow)):
        raise refusals.model_not_allowed(requested, f"Allowed models: {', '.join(models.allow) or 'none'}.")
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
