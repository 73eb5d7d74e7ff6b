"""Stage suspend: ``spec.suspend``, the kill switch, refuses every request with ``policy_suspended``.

It holds in dryRun mode too: it is an explicit order, not a verdict, so it raises instead of
going through ``ctx.enforce``. dryRun itself is read once per request into ``ctx.dry_run``.
"""

from __future__ import annotations

from openai_policy_api import PolicySpec

from .. import refusals


def check_suspend(suspended: bool) -> refusals.Refusal | None:
    return refusals.policy_suspended() if suspended else None


def stop_if_suspended(spec: PolicySpec) -> None:
    refusal = check_suspend(spec.suspend)
    if refusal is not None:
        raise refusal
