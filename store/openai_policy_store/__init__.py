"""Shared state: budgets, rate limits, usage, heartbeats, policy publication and cache.

``MemoryStore`` (one replica, standalone) and ``RedisStore`` (shared, atomic by Lua scripts)
implement the same :class:`Store` protocol with identical semantics.

On the request path, :func:`admit` checks the rate limits and reserves the budget in one store
call (one Redis round trip, one Lua script) with the outcomes of ``RateLimiter.check`` followed
by ``BudgetLedger.reserve``; both of those remain available on their own.
"""

from .admit import AdmitOutcome, admit
from .budget import BudgetLedger, Reservation, new_reservation_id
from .exceptions import BudgetExceeded, StoreUnavailable
from .memory import MemoryStore
from .protocol import BucketSpend, Store
from .rate_limits import RateDecision, RateLimiter
from .redis_store import RedisStore
from .usage_counts import UsageCounts
from .usage_writer import UsageWriter

__all__ = [
    "AdmitOutcome",
    "BucketSpend",
    "BudgetExceeded",
    "BudgetLedger",
    "MemoryStore",
    "RateDecision",
    "RateLimiter",
    "RedisStore",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "UsageCounts",
    "UsageWriter",
    "admit",
    "new_reservation_id",
]
