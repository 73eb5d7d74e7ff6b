"""Every ~1 s: flush usage counters to the store, write this pod's heartbeat, refresh budget gauges.

Counting happens in memory on the request path (``UsageWriter.add`` does no I/O); this loop
is the only writer of usage to the store, so a slow or absent store never slows a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from openai_policy_store import BucketSpend

from .cancellation import raise_if_cancelling
from .durable import DurableState
from .metrics import Metrics
from .policy_source import PolicySource

log = logging.getLogger("openai_policy_sidecar.report_loop")


class ReportLoop:
    def __init__(
        self,
        source: PolicySource,
        metrics: Metrics,
        pod: str,
        interval: float = 1.0,
        *,
        durable: DurableState | None = None,
        attribution: dict[str, str | None] | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.pod = pod
        self.interval = interval
        self.durable = durable  # the circuit breakers: the heartbeat's ``circuit``
        self.attribution = attribution or {}  # workload and namespace of this pod
        self.last_error: str | None = None  # the last store error, for the heartbeat and /readyz

    def heartbeat_payload(self) -> dict[str, Any]:
        snapshot = self.source.snapshot
        assert snapshot is not None
        return {
            "pod": self.pod,
            "generation": snapshot.generation,
            "keyLoaded": bool(self.source.keys.key),
            "lastError": self.source.error or self.source.keys.error or self.last_error,
            "untrustedDocument": self.source.untrusted_document,
            "time": int(time.time()),
            "mode": snapshot.spec.mode,
            "suspended": bool(snapshot.spec.suspend),
            "circuit": self.durable.worst_circuit().value if self.durable is not None else "closed",
            **{k: v for k, v in self.attribution.items() if v},
        }

    async def tick(self) -> None:
        snapshot = self.source.snapshot
        if snapshot is None:
            return
        try:
            await snapshot.usage_writer.flush()
            await self.source.flush_replaced()
            await snapshot.usage_writer.heartbeat(self.pod, self.heartbeat_payload())
            for window in await snapshot.ledger.usage():
                self._gauges(window)
            self.last_error = None
        except Exception as error:  # StoreUnavailable mostly: counters stay buffered for the next tick
            self.metrics.store_errors.labels(operation="report").inc()
            message = f"usage report failed: {error.__class__.__name__}: {error}"
            if message != self.last_error:
                log.warning("%s", message)
            self.last_error = message

    def _gauges(self, window: BucketSpend) -> None:
        spent = window.spent_micros / 1_000_000
        self.metrics.spend.labels(window=window.window).set(spent)
        if window.limit_micros is not None:
            self.metrics.limit.labels(window=window.window).set(window.limit_micros / 1_000_000)
            left = window.limit_micros - window.spent_micros - window.reserved_micros
            self.metrics.remaining.labels(window=window.window).set(max(0, left) / 1_000_000)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()
            raise_if_cancelling()
