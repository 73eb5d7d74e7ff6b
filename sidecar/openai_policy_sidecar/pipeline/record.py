"""Stage record, after a request: metrics, usage counters for the operator, and the one JSON
access line."""

from __future__ import annotations

import logging
from typing import Any

from openai_policy_store import UsageCounts
from openai_policy_store.money import micros_to_usd

from ..access_log import write_access_line
from ..context import RequestContext
from ..metrics import Metrics
from ..pricing import base_model_id
from ..snapshot import PolicySnapshot

log = logging.getLogger("openai_policy_sidecar.pipeline.record")


def reason_of(ctx: RequestContext) -> str:
    outcome = ctx.outcome
    if outcome.refusal is not None:
        return outcome.refusal.code
    if ctx.upstream.error:
        return ctx.upstream.error
    if outcome.status == 499:  # the caller left while waiting in the queue: not the upstream's doing
        return "client_disconnected"
    if outcome.status >= 400:
        return "upstream_error"
    return "ok"


def usage_counters(ctx: RequestContext) -> UsageCounts:
    """This request's increments of the shared usage hash."""
    counts = UsageCounts(requests=1)
    usage = ctx.upstream.usage
    if usage is not None:
        counts.tokens_input = usage.input_tokens
        counts.tokens_output = usage.output_tokens
        counts.tokens_cached = usage.cached_tokens
    counts.cost_micros = ctx.budget.cost_micros or 0
    if ctx.outcome.refusal is not None:
        counts.refused[ctx.outcome.refusal.code] += 1
    counts.dry_run_refused.update(ctx.outcome.dry_run_refusals)
    if ctx.upstream.error or ctx.outcome.status >= 500:
        counts.errors = 1
    if ctx.model.drift:
        counts.model_drift = 1
    if ctx.budget.over_reserved:
        counts.over_reserved = 1
    if ctx.cache.state == "hit":
        counts.cache_hits = 1
        counts.saved_micros = ctx.cache.saved_micros
    counts.retries = ctx.retries
    return counts


def model_label(ctx: RequestContext, snapshot: PolicySnapshot | None = None) -> str:
    """The model as a metric label. A model the policy does not allow is any string a caller
    made up: it becomes "other", so that callers cannot grow the metrics without bound; so does
    an allowed one the policy and the price table do not name (a wildcard lets through any
    string, and pass-through paths are not priced)."""
    refusal = ctx.outcome.refusal
    refused = refusal is not None and refusal.code == "model_not_allowed"
    if refused or "model_not_allowed" in ctx.outcome.dry_run_refusals:
        return "other"
    sent = ctx.model.sent or ""
    return bounded_model(sent, snapshot) if snapshot is not None else sent


def bounded_model(model: str, snapshot: PolicySnapshot, *, keep_dated: bool = False) -> str:
    """``model`` when the policy or the price table names it, else "other". A dated snapshot of
    a known model counts as its base id, or as itself with ``keep_dated`` (the model an upstream
    reports: which snapshot answered is the point of the drift metric, and the date format
    bounds it)."""
    if not model:
        return ""
    known = _known_models(snapshot)
    if model in known:
        return model
    base = base_model_id(model)
    if base is None or base not in known:
        return "other"
    return model if keep_dated else base


_known_cache: tuple[PolicySnapshot, frozenset[str]] | None = None


def _known_models(snapshot: PolicySnapshot) -> frozenset[str]:
    """The model ids a label may carry: a bounded set fixed by the policy in force."""
    global _known_cache
    if _known_cache is not None and _known_cache[0] is snapshot:
        return _known_cache[1]
    models = snapshot.spec.models
    names = {pattern for pattern in models.allow if not any(c in pattern for c in "*?[")}
    names.update(models.pin)
    names.update(models.pin.values())
    if models.fallback:
        names.add(models.fallback)
    names.update(snapshot.prices.models())
    known = frozenset(names)
    _known_cache = (snapshot, known)
    return known


def record(
    ctx: RequestContext,
    snapshot: PolicySnapshot,
    metrics: Metrics,
    attribution: dict[str, str | None] | None = None,
) -> None:
    model = model_label(ctx, snapshot)
    outcome = ctx.outcome
    child = metrics.child
    child(metrics.requests, model, str(outcome.status), reason_of(ctx)).inc()
    if outcome.refusal is not None:
        child(metrics.refusals, outcome.refusal.code, "false").inc()
    for code in outcome.dry_run_refusals:
        child(metrics.refusals, code, "true").inc()
    usage = ctx.upstream.usage
    if usage is not None:
        child(metrics.tokens, model, "input").inc(usage.input_tokens)
        child(metrics.tokens, model, "output").inc(usage.output_tokens)
        child(metrics.tokens, model, "cached").inc(usage.cached_tokens)
    if ctx.budget.cost_micros:
        child(metrics.cost, model).inc(ctx.budget.cost_micros / 1_000_000)
    if ctx.budget.over_reserved:
        child(metrics.over_reserved, model).inc()
    if ctx.model.drift:
        reported = bounded_model(ctx.model.reported or "", snapshot, keep_dated=True)
        metrics.model_drift.labels(expected=model, reported=reported).inc()
        log.warning("model drift: asked upstream for %s, the reply reports %s", model, ctx.model.reported)
    if ctx.cache.state == "hit":
        metrics.cache_hits.inc()
        if ctx.cache.saved_micros:
            child(metrics.cache_saved, model).inc(ctx.cache.saved_micros / 1_000_000)
    elif ctx.cache.state == "miss":
        metrics.cache_misses.inc()
    for finding in ctx.findings:
        child(metrics.guardrail_findings, finding["guardrail"], finding["type"], finding["action"]).inc(
            finding["count"]
        )
    endpoint = ctx.request.endpoint or "other"
    if ctx.upstream.seconds:
        child(metrics.upstream_latency, endpoint).observe(ctx.upstream.seconds)
    added = ctx.added_seconds
    child(metrics.added_latency, endpoint).observe(added)
    snapshot.usage_writer.add(usage_counters(ctx).to_fields())
    write_access_line(access_fields(ctx, snapshot, added, attribution))


def access_fields(
    ctx: RequestContext,
    snapshot: PolicySnapshot,
    added_seconds: float,
    attribution: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    outcome, request, model, usage = ctx.outcome, ctx.request, ctx.model, ctx.upstream.usage
    if outcome.refusal is not None:
        decision = f"refused:{outcome.refusal.code}"
    elif outcome.dry_run_refusals:
        decision = "dryrun:" + ",".join(f"would_refuse:{code}" for code in outcome.dry_run_refusals)
    else:
        decision = outcome.decision
    namespace, name = snapshot.ref
    cost = ctx.budget.cost_micros
    upstream_seconds = ctx.upstream.seconds
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "openai_request_id": ctx.upstream.request_id,
        "policy": f"{namespace}/{name}",
        "generation": snapshot.generation,
        "method": request.method,
        "path": request.path,
        "endpoint": request.endpoint,
        "stream": request.stream,
        "user": request.user,
        "feature": request.feature,
        "model_requested": request.model,
        "model": model.sent,
        "model_reported": model.reported,
        "pinned": model.pinned,
        "downgraded": model.downgraded,
        "drift": model.drift,
        "status": outcome.status,
        "decision": decision,
        "input_tokens_estimated": request.input_tokens,
        "max_output_tokens": request.max_output_tokens,
        "tokens_input": usage.input_tokens if usage else None,
        "tokens_cached": usage.cached_tokens if usage else None,
        "tokens_output": usage.output_tokens if usage else None,
        "cost_usd": micros_to_usd(cost) if cost is not None else None,
        "latency_ms": round((upstream_seconds + added_seconds) * 1000, 3),
        "upstream_ms": round(upstream_seconds * 1000, 3),
        "added_ms": round(added_seconds * 1000, 3),
        "cache": ctx.cache.state,
        "retries": ctx.retries,
        # Kinds and actions only: the matched text never reaches a log line.
        "guardrails": ctx.findings or None,
    }
    if outcome.refusal is not None:
        # What the caller was told (it names the policy field to change; never a prompt or the key):
        # `kubectl oaip explain-refusal` shows it.
        fields["refusal"] = outcome.refusal.message
    if ctx.upstream.retry_reasons:
        fields["retry_reasons"] = ctx.upstream.retry_reasons
    if ctx.cache.saved_micros:
        fields["saved_usd"] = micros_to_usd(ctx.cache.saved_micros)
    if attribution:
        fields.update(attribution)
    if request.prompt is not None:
        fields["prompt"] = request.prompt
    return fields
