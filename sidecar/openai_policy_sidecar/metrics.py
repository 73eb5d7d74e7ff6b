"""Prometheus metrics of one sidecar (prefix ``openai_policy_``), on a registry of its own.

A registry per sidecar instance (not the global default) lets tests run several sidecars in one
process. Labels never carry the key, a prompt or a user id (unbounded cardinality).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Sub-millisecond buckets for the latency we add, seconds-long ones for the upstream.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "openai_policy_requests",
            "Requests handled, by model sent upstream, HTTP status and decision reason.",
            ["model", "status", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "openai_policy_tokens", "Tokens reported by upstream usage.", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "openai_policy_cost_usd", "Real cost of settled requests in USD.", ["model"], registry=r
        )
        self.refusals = Counter(
            "openai_policy_refusals",
            "Refusals by reason (dry_run=true: would have refused).",
            ["reason", "dry_run"],
            registry=r,
        )
        self.spend = Gauge(
            "openai_policy_budget_spend_usd",
            "Settled spend in the current window bucket.",
            ["window"],
            registry=r,
        )
        self.remaining = Gauge(
            "openai_policy_budget_remaining_usd",
            "Budget left in the current window bucket (limit - spent - reserved).",
            ["window"],
            registry=r,
        )
        self.limit = Gauge(
            "openai_policy_budget_limit_usd", "Budget limit per window.", ["window"], registry=r
        )
        self.upstream_latency = Histogram(
            "openai_policy_upstream_latency_seconds",
            "Time from sending upstream to the full reply (or stream end).",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.added_latency = Histogram(
            "openai_policy_added_latency_seconds",
            "Time the sidecar itself spent on a request, upstream excluded.",
            ["endpoint"],
            buckets=ADDED_BUCKETS,
            registry=r,
        )
        self.model_drift = Counter(
            "openai_policy_model_drift",
            "Replies reporting another model than the one pinned/sent.",
            ["expected", "reported"],
            registry=r,
        )
        self.reload_errors = Counter(
            "openai_policy_policy_reload_errors",
            "Policy or key updates refused (the last good one stays).",
            ["source"],
            registry=r,
        )
        self.policy_generation = Gauge(
            "openai_policy_policy_generation", "Generation of the policy in force.", registry=r
        )
        self.key_loaded = Gauge(
            "openai_policy_api_key_loaded", "1 when an upstream API key is loaded.", registry=r
        )
        self.store_errors = Counter(
            "openai_policy_store_errors", "Shared-store operations that failed.", ["operation"], registry=r
        )
        self.in_flight = Gauge("openai_policy_requests_in_flight", "Requests being handled now.", registry=r)
        # -- resilience, cache, guardrails -----------------------------------------------------
        # The two gauges the chart's alerts and dashboard use; their values are read at scrape
        # time from the live queue and breakers (see ``DurableState.__init__``).
        self.queue_depth = Gauge(
            "openai_policy_queue_depth", "Requests waiting for an upstream slot (spec.queue).", registry=r
        )
        self.circuit_state = Gauge(
            "openai_policy_circuit_state",
            "Worst upstream circuit: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.upstream_in_flight = Gauge(
            "openai_policy_upstream_in_flight", "Upstream calls holding a queue slot now.", registry=r
        )
        self.queue_wait = Histogram(
            "openai_policy_queue_wait_seconds",
            "Time a request that found no free slot waited for one.",
            buckets=ADDED_BUCKETS + (2.5, 5, 10, 30),
            registry=r,
        )
        self.circuit_transitions = Counter(
            "openai_policy_circuit_transitions",
            "Circuit-breaker state changes, by the state entered.",
            ["state"],
            registry=r,
        )
        self.retries = Counter(
            "openai_policy_retries",
            "Upstream attempts retried by the sidecar, by what failed (status or error).",
            ["reason"],
            registry=r,
        )
        self.cache_hits = Counter(
            "openai_policy_cache_hits", "Requests answered from the response cache.", registry=r
        )
        self.over_reserved = Counter(
            "openai_policy_over_reserved",
            "Requests settled above their reservation: the price table or the estimate is wrong.",
            ["model"],
            registry=r,
        )
        self.cache_forged = Counter(
            "openai_policy_cache_forged",
            "Shared cache entries refused (and missed) because their MAC does not verify.",
            registry=r,
        )
        self.cache_misses = Counter(
            "openai_policy_cache_misses", "Cacheable requests not found in the response cache.", registry=r
        )
        self.cache_saved = Counter(
            "openai_policy_cache_saved_usd",
            "Spend saved by cache hits (what the original call cost), in USD.",
            ["model"],
            registry=r,
        )
        self.guardrail_findings = Counter(
            "openai_policy_guardrail_findings",
            "Guardrail findings by guardrail, type and action taken.",
            ["guardrail", "type", "action"],
            registry=r,
        )
        self.moderation_calls = Counter(
            "openai_policy_moderation_calls",
            "Calls to the upstream moderation endpoint, by result.",
            ["result"],
            registry=r,
        )

        # -- listeners ------------------------------------------------------------------------
        self.runtime_info = Gauge(
            "openai_policy_sidecar_runtime_info",
            "Always 1: the event loop (uvloop or asyncio) and HTTP parser (c or python) in use.",
            ["event_loop", "http_parser"],
            registry=r,
        )
        self.connections_open = Gauge(
            "openai_policy_connections_open",
            "Open client connections, by listener (proxy, admin).",
            ["listener"],
            registry=r,
        )
        self.connections_closed = Counter(
            "openai_policy_connections_closed",
            "Connections the sidecar closed itself, by listener and reason (header_timeout: no "
            "whole request head in time; evicted: idle, closed to make room at the cap; refused: "
            "at the cap with every connection busy).",
            ["listener", "reason"],
            registry=r,
        )

    def runtime(self, event_loop: str, http_parser: str) -> None:
        """The loop and HTTP parser this process runs on (runtime.py): the fast paths, or not."""
        self.runtime_info.labels(event_loop=event_loop, http_parser=http_parser).set(1)

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: labels() takes a lock and builds a tuple each time."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
