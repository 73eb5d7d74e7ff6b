"""Stage safety: the guardrails of ``spec.safety`` on the request, and moderation of a plain answer.

On the request: PII (flag / redact in place / block), prompt injection, input moderation; in
that order, so that moderation judges the redacted text and a blocked prompt costs no
moderation call. Findings are recorded by kind and action, never with the matched text.
"""

from __future__ import annotations

import json
from typing import Any

from openai_policy_api import ModerationSpec, SafetySpec

from .. import refusals
from ..context import RequestContext
from ..guardrails import (
    ModerationClient,
    ModerationOutcome,
    check_injection,
    check_input_moderation,
    check_output_moderation,
    check_pii,
)


async def check_request(
    ctx: RequestContext,
    safety: SafetySpec,
    moderation: ModerationClient,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    pii = check_pii(endpoint, body, safety.pii, dry_run=ctx.dry_run)
    for kind, count in sorted(pii.counts.items()):
        ctx.finding("pii", kind, pii.action, count)
    if pii.blocked:
        ctx.enforce(refusals.from_stage_error(pii.exception()))
    injection = check_injection(endpoint, body, safety.prompt_injection)
    if injection.found:
        ctx.finding("prompt_injection", "prompt_injection", injection.action, len(injection.matches))
    if injection.blocked:
        ctx.enforce(refusals.from_stage_error(injection.exception()))
    outcome = await check_input_moderation(moderation, endpoint, body, safety.moderation)
    record_moderation(ctx, outcome)
    if outcome.blocked:
        ctx.enforce(refusals.from_stage_error(outcome.exception()))


async def check_answer(
    ctx: RequestContext, spec: ModerationSpec, moderation: ModerationClient, payload: bytes
) -> None:
    """Output moderation of a plain answer (streams are not held back to be judged)."""
    endpoint = ctx.request.endpoint
    if spec.action == "off" or not spec.output or not endpoint:
        return
    try:
        answer = json.loads(payload)
    except ValueError:
        return
    if not isinstance(answer, dict):
        return
    outcome = await check_output_moderation(moderation, endpoint, answer, spec)
    record_moderation(ctx, outcome)
    if outcome.blocked:
        ctx.cache.key = None  # a refused answer is never cached
        ctx.enforce(refusals.from_stage_error(outcome.exception()))


# OpenAI's moderation categories (omni-moderation and text-moderation). Category names come from
# the upstream's answer and become a metric label: any other name is counted as "other".
MODERATION_CATEGORIES = frozenset(
    {
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "illicit",
        "illicit/violent",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    }
)


def record_moderation(ctx: RequestContext, outcome: ModerationOutcome) -> None:
    if outcome.error is not None:
        ctx.finding("moderation", "unavailable", "block" if outcome.fail_closed else "allow")
    if outcome.flagged:
        kinds = {c if c in MODERATION_CATEGORIES else "other" for c in outcome.categories}
        for category in sorted(kinds) or ["unspecified"]:
            ctx.finding("moderation", f"{outcome.direction}:{category}", outcome.action)
