"""After a request: metrics, usage counters for the operator, and the one JSON access line."""

from __future__ import annotations

import logging

from .access_log import write_access_line
from .context import RequestContext
from .metrics import Metrics
from .money import micros_to_usd
from .runtime import Runtime

log = logging.getLogger("openai_policy_sidecar.accounting")


def reason_of(ctx: RequestContext) -> str:
    if ctx.refusal is not None:
        return ctx.refusal.code
    if ctx.upstream_error:
        return ctx.upstream_error
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
    return counters


def model_label(ctx: RequestContext) -> str:
    """The model as a metric label. A model the policy does not allow is any string a caller
    made up: it becomes "other", so that callers cannot grow the metrics without bound."""
    refused = ctx.refusal is not None and ctx.refusal.code == "model_not_allowed"
    if refused or "model_not_allowed" in ctx.dry_run_refusals:
        return "other"
    return ctx.model_sent or ""


def record(ctx: RequestContext, runtime: Runtime, metrics: Metrics) -> None:
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
    endpoint = ctx.endpoint or "other"
    if ctx.upstream_seconds:
        child(metrics.upstream_latency, endpoint).observe(ctx.upstream_seconds)
    added = ctx.added_seconds
    child(metrics.added_latency, endpoint).observe(added)
    runtime.reporter.add(usage_counters(ctx))
    write_access_line(access_fields(ctx, runtime, added))


def access_fields(ctx: RequestContext, runtime: Runtime, added_seconds: float) -> dict:
    if ctx.refusal is not None:
        decision = f"refused:{ctx.refusal.code}"
    elif ctx.dry_run_refusals:
        decision = "dryrun:" + ",".join(f"would_refuse:{code}" for code in ctx.dry_run_refusals)
    else:
        decision = ctx.decision
    namespace, name = runtime.ref
    fields = {
        "request_id": ctx.request_id,
        "openai_request_id": ctx.upstream_request_id,
        "policy": f"{namespace}/{name}",
        "generation": runtime.generation,
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
    }
    if ctx.prompt is not None:
        fields["prompt"] = ctx.prompt
    return fields
