"""Usage counters and heartbeats written for the operator to aggregate.

``add`` only touches a dict (no I/O on the request path); ``flush`` writes the buffered
increments with one HINCRBY pipeline. A failed flush puts the counts back, so an outage delays
counts but never loses them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .protocol import Ref, Store


class UsageWriter:
    """Buffers one policy's usage increments and writes them, with heartbeats, to the store."""

    def __init__(self, store: Store, ref: Ref) -> None:
        self.store = store
        self.ref = ref
        self._pending: dict[str, int] = {}

    def add(self, counters: Mapping[str, int]) -> None:
        """Buffer increments, e.g. ``{"requests": 1, "tokens_input": 812, "cost_micros": 2030}``."""
        pending = self._pending
        for field, amount in counters.items():
            if amount:
                pending[field] = pending.get(field, 0) + int(amount)

    @property
    def pending(self) -> dict[str, int]:
        return dict(self._pending)

    async def flush(self) -> None:
        """Write buffered counters; on failure they stay buffered and the error propagates."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.store.incr_usage(self.ref, batch)
        except BaseException:
            for field, amount in batch.items():  # merge back with whatever arrived meanwhile
                self._pending[field] = self._pending.get(field, 0) + amount
            raise

    async def heartbeat(self, pod: str, payload: Mapping[str, Any]) -> None:
        """Write this pod's heartbeat (``pod`` and ``time`` are filled in unless given)."""
        beat = {"pod": pod, "time": time.time(), **payload}
        await self.store.write_heartbeat(self.ref, pod, beat)
