"""One memory budget for everything the sidecar holds of upstream replies at once.

Each reply is capped (``spec.requests.maxResponseBytes`` for a plain body, held whole to be
metered; ``maxStreamEventBytes`` for one stream event), but a cap per call does not bound the
sum: ten concurrent replies just under their cap, each read, joined and parsed, would take a
sidecar past its 256 Mi memory limit, and an OOM kill loses every call in flight and its
bookkeeping. So the bytes held
by all calls together are counted here, and a call whose next chunk would take the total past
the budget is cut as if it had passed its own cap. A call never waits for room: replies that
wait on each other's memory could all wait forever.

The budget is at least what one call at its cap counts, so a reply at its cap always fits alone.
"""

from __future__ import annotations

# Measured: a sidecar idles at ~135 MiB RSS (tokenizers loaded); with this budget and the default
# caps, ten concurrent hostile replies (over or just under the cap) peak it at ~230 MiB.
DEFAULT_BUDGET_BYTES = 32 * 1024 * 1024


class BufferBudgetExceeded(Exception):
    """Holding this much more would take the sidecar past its budget for buffered replies."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the sidecar already holds {limit} bytes of upstream replies")
        self.limit = limit


class BufferBudget:
    """Bytes held by every call of this process (asyncio: no lock needed)."""

    def __init__(self, limit: int = DEFAULT_BUDGET_BYTES) -> None:
        self.limit = limit
        self.held = 0

    def hold(self, most: int) -> Held:
        """A counter for one call that may count up to ``most`` bytes (its cap, and the copies
        made while it is read): alone, it always fits."""
        return Held(self, max(self.limit, most))


class Held:
    """What one call holds; ``resize`` as it grows and shrinks, ``release`` when done."""

    def __init__(self, budget: BufferBudget, limit: int) -> None:
        self._budget = budget
        self._limit = limit
        self.size = 0

    def resize(self, size: int) -> None:
        grow = size - self.size
        if grow > 0 and self._budget.held + grow > self._limit:
            raise BufferBudgetExceeded(self._limit)
        self._budget.held += grow
        self.size = size

    def release(self) -> None:
        self._budget.held -= self.size
        self.size = 0


SHARED = BufferBudget()  # one process, one memory limit
