"""The usage hash, both sides of it: what a sidecar adds after a request and what the operator
reads back into ``status.usage``. Every field name is written here once.

The hash (``keyspace.usage_key``) holds only monotonically increasing integers, so increments
from many pods add up with HINCRBY and a reader never sees a figure go backwards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

_REFUSED = "refused:"
_DRY_RUN_REFUSED = "dryrun_refused:"


@dataclass
class UsageCounts:
    """Counters of one request (an increment) or of a whole policy (the hash as read)."""

    requests: int = 0
    tokens_input: int = 0
    tokens_output: int = 0
    tokens_cached: int = 0
    cost_micros: int = 0
    cache_hits: int = 0
    saved_micros: int = 0  # what cache hits would have cost upstream
    retries: int = 0
    errors: int = 0
    model_drift: int = 0
    over_reserved: int = 0  # calls settled above their reservation (a bug in prices or estimates)
    refused: Counter[str] = field(default_factory=Counter)  # by error code
    dry_run_refused: Counter[str] = field(default_factory=Counter)  # what dryRun would have refused

    def to_fields(self) -> dict[str, int]:
        """The hash fields to increment (zeros left out: HINCRBY by 0 is a wasted write)."""
        out = {
            f.name: value for f in fields(self) if isinstance(value := getattr(self, f.name), int) and value
        }
        out.update({_REFUSED + code: n for code, n in self.refused.items() if n})
        out.update({_DRY_RUN_REFUSED + code: n for code, n in self.dry_run_refused.items() if n})
        return out

    @classmethod
    def from_fields(cls, raw: Mapping[str, int | str | bytes]) -> UsageCounts:
        """Read the hash as stored (values may come back as strings or bytes); unknown fields are
        ignored so that a newer sidecar can add counters before the operator knows them."""
        counts = cls()
        scalars = {f.name for f in fields(cls) if f.name not in ("refused", "dry_run_refused")}
        for name, value in raw.items():
            number = int(value)
            if name.startswith(_REFUSED):
                counts.refused[name[len(_REFUSED) :]] += number
            elif name.startswith(_DRY_RUN_REFUSED):
                counts.dry_run_refused[name[len(_DRY_RUN_REFUSED) :]] += number
            elif name in scalars:
                setattr(counts, name, number)
        return counts
