"""Kill switch: ``spec.suspend`` refuses every request with ``policy_suspended``."""

from __future__ import annotations

from .. import refusals


def check_suspend(suspended: bool) -> refusals.Refusal | None:
    return refusals.policy_suspended() if suspended else None
