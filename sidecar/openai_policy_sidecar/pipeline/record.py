"""After a request: metrics, usage counters for the operator, and the one JSON access line."""

from __future__ import annotations

import logging

from openai_policy_store.money import micros_to_usd

from ..access_log import write_access_line
from ..context import RequestContext
from ..metrics import Metrics
from ..snapshot import PolicySnapshot

log = logging.getLogger("openai_policy_sidecar.accounting")


def reason_of(ctx: RequestContext) -> str:
    if ctx.refusal is not None:
        return ctx.refusal.code
    if ctx.upstream_error:
        return ctx.upstream_error
    if ctx.status == 499:  # the caller left while waiting in the queue: not the upstream's doing
        return "client_disconnected"
    if ctx.status >= 400:
        return "upstream_error"
    return "ok"


def usage_counters(ctx: RequestContext) -> dict[str, int]:
    """The increments for the shared usage hash (field names: store_keys docstring / contract)."""
    counters = {"requests": 1}
    if ctx.usage is not None:
        counters["tokens_input"] = ctx.usage.input_tokens
        counters["tokens_output"] = ctx.usage.output_tokens
        counters["tokens_cached"] = ctx.usage.cached_tokens
    if ctx.cost_micros:
        counters["cost_micros"] = ctx.cost_micros
    if ctx.refusal is not None:
        counters[f"refused:{ctx.refusal.code}"] = 1
    for code in ctx.dry_run_refusals:
        counters[f"dryrun_refused:{code}"] = counters.get(f"dryrun_refused:{code}", 0) + 1
    if ctx.upstream_error or ctx.status >= 500:
        counters["errors"] = 1
    if ctx.drift:
        counters["model_drift"] = 1
    if ctx.cache == "hit":
        counters["cache_hits"] = 1
        if ctx.saved_micros:
            counters["saved_micros"] = ctx.saved_micros
    if ctx.retries:
        counters["retries"] = ctx.retries
    return counters


def model_label(ctx: RequestContext) -> str:
    """The model as a metric label. A model the policy does not allow is any string a caller
    made up: it becomes "other", so that callers cannot grow the metrics without bound."""
    refused = ctx.refusal is not None and ctx.refusal.code == "model_not_allowed"
    if refused or "model_not_allowed" in ctx.dry_run_refusals:
        return "other"
    return ctx.model_sent or ""


def record(
    ctx: RequestContext,
    snapshot: PolicySnapshot,
    metrics: Metrics,
    attribution: dict[str, str | None] | None = None,
) -> None:
    model = model_label(ctx)
    reason = reason_of(ctx)
    child = metrics.child
    child(metrics.requests, model, str(ctx.status), reason).inc()
    if ctx.refusal is not None:
        child(metrics.refusals, ctx.refusal.code, "false").inc()
    for code in ctx.dry_run_refusals:
        child(metrics.refusals, code, "true").inc()
    if ctx.usage is not None:
        child(metrics.tokens, model, "input").inc(ctx.usage.input_tokens)
        child(metrics.tokens, model, "output").inc(ctx.usage.output_tokens)
        child(metrics.tokens, model, "cached").inc(ctx.usage.cached_tokens)
    if ctx.cost_micros:
        child(metrics.cost, model).inc(ctx.cost_micros / 1_000_000)
    if ctx.drift:
        metrics.model_drift.labels(expected=model, reported=ctx.model_reported or "").inc()
        log.warning("model drift: asked upstream for %s, the reply reports %s", model, ctx.model_reported)
    if ctx.cache == "hit":
        metrics.cache_hits.inc()
        if ctx.saved_micros:
            child(metrics.cache_saved, model).inc(ctx.saved_micros / 1_000_000)
    elif ctx.cache == "miss":
        metrics.cache_misses.inc()
    for finding in ctx.guardrails:
        child(metrics.guardrail_findings, finding["guardrail"], finding["type"], finding["action"]).inc(
            finding["count"]
        )
    endpoint = ctx.endpoint or "other"
    if ctx.upstream_seconds:
        child(metrics.upstream_latency, endpoint).observe(ctx.upstream_seconds)
    added = ctx.added_seconds
    child(metrics.added_latency, endpoint).observe(added)
    snapshot.reporter.add(usage_counters(ctx))
    write_access_line(access_fields(ctx, snapshot, added, attribution))


def access_fields(
    ctx: RequestContext,
    snapshot: PolicySnapshot,
    added_seconds: float,
    attribution: dict[str, str | None] | None = None,
) -> dict:
    if ctx.refusal is not None:
        decision = f"refused:{ctx.refusal.code}"
    elif ctx.dry_run_refusals:
        decision = "dryrun:" + ",".join(f"would_refuse:{code}" for code in ctx.dry_run_refusals)
    else:
        decision = ctx.decision
    namespace, name = snapshot.ref
    fields = {
        "request_id": ctx.request_id,
        "openai_request_id": ctx.upstream_request_id,
        "policy": f"{namespace}/{name}",
        "generation": snapshot.generation,
        "method": ctx.method,
        "path": ctx.path,
        "endpoint": ctx.endpoint,
        "stream": ctx.stream,
        "user": ctx.user,
        "feature": ctx.feature,
        "model_requested": ctx.model_requested,
        "model": ctx.model_sent,
        "model_reported": ctx.model_reported,
        "pinned": ctx.pinned,
        "downgraded": ctx.downgraded,
        "drift": ctx.drift,
        "status": ctx.status,
        "decision": decision,
        "input_tokens_estimated": ctx.input_tokens,
        "max_output_tokens": ctx.max_output_tokens,
        "tokens_input": ctx.usage.input_tokens if ctx.usage else None,
        "tokens_cached": ctx.usage.cached_tokens if ctx.usage else None,
        "tokens_output": ctx.usage.output_tokens if ctx.usage else None,
        "cost_usd": micros_to_usd(ctx.cost_micros) if ctx.cost_micros is not None else None,
        "latency_ms": round((ctx.upstream_seconds + added_seconds) * 1000, 3),
        "upstream_ms": round(ctx.upstream_seconds * 1000, 3),
        "added_ms": round(added_seconds * 1000, 3),
        "cache": ctx.cache,
        "retries": ctx.retries,
        # Kinds and actions only: the matched text never reaches a log line.
        "guardrails": ctx.guardrails or None,
    }
    if ctx.retry_reasons:
        fields["retry_reasons"] = ctx.retry_reasons
    if ctx.saved_micros:
        fields["saved_usd"] = micros_to_usd(ctx.saved_micros)
    if attribution:
        fields.update(attribution)
    if ctx.prompt is not None:
        fields["prompt"] = ctx.prompt
    return fields
