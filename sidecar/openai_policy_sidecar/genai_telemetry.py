"""Optional export of OpenTelemetry's GenAI client metrics over OTLP (``--otlp-endpoint``).

Prometheus stays the sidecar's own metrics; a platform that collects OpenTelemetry instead gets
the two metrics the GenAI semantic conventions define for a client of a model API, named and
attributed as they are there, so its GenAI dashboards work unchanged:

- ``gen_ai.client.token.usage`` (histogram, ``{token}``), one record per token type of a call;
- ``gen_ai.client.operation.duration`` (histogram, ``s``), the upstream time of a call.

Off by default and free when off: the OpenTelemetry SDK is an optional extra
(``openai-policy-operator[otel]``) imported only when an endpoint is given. Attributes are the
operation, provider, models and token type, and ``error.type`` on failures: never a prompt, a
user or anything of the key.
"""

from __future__ import annotations

import importlib
from typing import Any

from .context import RequestContext

# The conventions' operation names for the metered endpoints (embeddings keep their own name).
OPERATIONS = {
    "chat.completions": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
PROVIDER = "openai"
# The conventions' advised bucket boundaries.
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class TelemetryUnavailable(RuntimeError):
    """An OTLP endpoint was given but the optional OpenTelemetry extra is not installed."""


def _modules() -> tuple[Any, Any, Any, Any]:
    try:
        return (
            importlib.import_module("opentelemetry.sdk.metrics"),
            importlib.import_module("opentelemetry.sdk.metrics.export"),
            importlib.import_module("opentelemetry.sdk.metrics.view"),
            importlib.import_module("opentelemetry.exporter.otlp.proto.http.metric_exporter"),
        )
    except ImportError as error:
        raise TelemetryUnavailable(
            f"--otlp-endpoint needs the OpenTelemetry extra: pip install 'openai-policy-operator[otel]' ({error})"
        ) from None


def call_attributes(ctx: RequestContext) -> dict[str, str] | None:
    """The conventions' attributes of one call, or None when the call is not a model operation."""
    operation = OPERATIONS.get(ctx.request.endpoint or "")
    if operation is None or ctx.upstream.attempts == 0:
        return None  # refused before any upstream call, a cache hit, or not a model API call
    attributes = {"gen_ai.operation.name": operation, "gen_ai.provider.name": PROVIDER}
    if ctx.model.sent:
        attributes["gen_ai.request.model"] = ctx.model.sent
    if ctx.model.reported:
        attributes["gen_ai.response.model"] = ctx.model.reported
    return attributes


class GenAITelemetry:
    """The two GenAI metrics, exported every ``interval_seconds`` to an OTLP/HTTP endpoint."""

    def __init__(
        self, endpoint: str, interval_seconds: float = 30.0, resource: dict[str, str] | None = None
    ) -> None:
        sdk, export, view, exporter = _modules()
        resources = importlib.import_module("opentelemetry.sdk.resources")
        reader = export.PeriodicExportingMetricReader(
            exporter.OTLPMetricExporter(endpoint=endpoint.rstrip("/") + "/v1/metrics"),
            export_interval_millis=interval_seconds * 1000,
        )
        views = [
            view.View(
                instrument_name="gen_ai.client.token.usage",
                aggregation=view.ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
            ),
            view.View(
                instrument_name="gen_ai.client.operation.duration",
                aggregation=view.ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
            ),
        ]
        self._provider = sdk.MeterProvider(
            metric_readers=[reader],
            views=views,
            resource=resources.Resource.create({"service.name": "openai-policy-sidecar", **(resource or {})}),
        )
        meter = self._provider.get_meter("openai_policy_sidecar")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used."
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration."
        )

    def record(self, ctx: RequestContext) -> None:
        attributes = call_attributes(ctx)
        if attributes is None:
            return
        usage = ctx.upstream.usage
        failed = ctx.outcome.status >= 400 or ctx.upstream.error is not None
        if usage is not None:
            self._tokens.record(usage.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            self._tokens.record(usage.output_tokens, {**attributes, "gen_ai.token.type": "output"})
        if failed:
            attributes["error.type"] = ctx.upstream.error or str(ctx.outcome.status)
        self._duration.record(ctx.upstream.seconds, attributes)

    def shutdown(self) -> None:
        """Export what is pending, then stop (at sidecar shutdown)."""
        self._provider.shutdown()
