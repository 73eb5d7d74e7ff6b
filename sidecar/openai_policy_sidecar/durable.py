"""The resilience and safety state that outlives a policy reload: one of each per sidecar.

A ``PolicySnapshot`` is immutable, taken by each request at its start and rebuilt on every
policy change; the upstream queue (who is waiting), the circuit breakers (how the upstream has
been doing), the response cache and the moderation verdict cache must survive that rebuild.
``DurableState.sync`` is called with the snapshot a request starts with: the first time it sees
a new snapshot it applies that policy's ``spec.queue`` / ``spec.circuitBreaker``
(``update_spec``, state kept) and points the shared cache at the policy's own keys.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

from openai_policy_store import Store

from .guardrails import ModerationClient
from .metrics import Metrics
from .policy_source import KeySource
from .resilience import CircuitBreakers, CircuitState, UpstreamQueue
from .response_cache import MemoryLRUBackend, ResponseCache, StoreBackend
from .snapshot import PolicySnapshot
from .upstream import Upstream, join_url, upstream_headers

log = logging.getLogger("openai_policy_sidecar.durable")

# The gauge's numbers (the chart's alert fires at >= 2): 0 closed, 1 half-open, 2 open.
CIRCUIT_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
MODERATION_TIMEOUT_SECONDS = 10.0


class DurableState:
    def __init__(
        self, store: Store, metrics: Metrics, upstream: Upstream, keys: KeySource, *, shared_cache: bool
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.upstream = upstream
        self.keys = keys  # the key is read at call time (it may rotate)
        self.shared_cache = shared_cache  # True with Redis: the cache is shared by every pod of the policy
        self.queue: UpstreamQueue | None = None
        self.breakers: CircuitBreakers | None = None
        self.cache: ResponseCache | None = None
        self.moderation = ModerationClient(self._moderation_post, timeout_seconds=MODERATION_TIMEOUT_SECONDS)
        self._snapshot: PolicySnapshot | None = None
        self._cache_ref: tuple[str, str] | None = None
        metrics.queue_depth.set_function(lambda: float(self.queue.depth) if self.queue is not None else 0.0)
        metrics.upstream_in_flight.set_function(
            lambda: float(self.queue.in_flight) if self.queue is not None else 0.0
        )
        metrics.circuit_state.set_function(lambda: float(CIRCUIT_GAUGE[self.worst_circuit()]))

    def sync(self, snapshot: PolicySnapshot) -> None:
        """Apply a policy the first time a request brings it (cheap identity check otherwise)."""
        if snapshot is self._snapshot:
            return
        spec = snapshot.spec
        if self.queue is None:
            self.queue = UpstreamQueue(spec.queue)
        else:
            self.queue.update_spec(spec.queue)
        if self.breakers is None:
            self.breakers = CircuitBreakers(spec.circuit_breaker, on_change=self._circuit_changed)
        else:
            self.breakers.update_spec(spec.circuit_breaker)
        if self.cache is None or (self.shared_cache and snapshot.ref != self._cache_ref):
            backend = (
                StoreBackend(self.store, snapshot.ref, lambda: self.keys.key)
                if self.shared_cache
                else MemoryLRUBackend()
            )
            self.cache = ResponseCache(backend, on_forged=self.metrics.cache_forged.inc)
            self._cache_ref = snapshot.ref
        self._snapshot = snapshot

    def worst_circuit(self) -> CircuitState:
        """The heartbeat's ``circuit`` and the gauge: open beats half-open beats closed."""
        return self.breakers.worst_state() if self.breakers is not None else CircuitState.CLOSED

    def _circuit_changed(self, upstream: str, old: CircuitState, new: CircuitState) -> None:
        self.metrics.child(self.metrics.circuit_transitions, new.value).inc()
        log.warning("circuit breaker for %s: %s -> %s", upstream, old.value, new.value)

    async def _moderation_post(self, payload: dict[str, Any]) -> tuple[int, Any]:
        """POST /v1/moderations upstream with the policy's key (free; not metered, not queued)."""
        snapshot = self._snapshot
        key = self.keys.key
        if snapshot is None or not key:
            raise RuntimeError("no policy or key loaded")
        spec = snapshot.spec
        headers = upstream_headers((), key, spec.upstream.organization, spec.upstream.project)
        headers["Content-Type"] = "application/json"
        url = join_url(spec.upstream.base_url, "/v1/moderations", "")
        timeout = aiohttp.ClientTimeout(total=MODERATION_TIMEOUT_SECONDS)
        try:
            response = await self.upstream.request(
                "POST", url, headers, json.dumps(payload).encode(), timeout
            )
            try:
                status = response.status
                body = await response.json(content_type=None) if status == 200 else None
            finally:
                response.release()
        except Exception:
            self.metrics.child(self.metrics.moderation_calls, "error").inc()
            raise
        self.metrics.child(self.metrics.moderation_calls, "ok" if status == 200 else "error").inc()
        return status, body
