"""Kill switch: ``spec.suspend`` refuses every request with ``policy_suspended``."""

from __future__ import annotations

from .. import errors


def check_suspend(suspended: bool) -> errors.Refusal | None:
    return errors.policy_suspended() if suspended else None
