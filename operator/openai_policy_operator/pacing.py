"""How often each policy's status is refreshed, so that many policies do not swamp the API server.

Every policy has a status timer ticking every ``--status-interval`` seconds (3 by default). A
refresh reads the policy's figures from the store and, when its sidecars reported anything since,
writes the status: one PATCH, which the API server then sends to every watcher of policies (the
operator itself among them). At 1,000 policies every 3 s that is 333 writes a second, more than
the API server of the bench's cluster could take (status writes timed out, and statuses went
stale for over a minute: bench/operator_bench.py). So the refreshes of all policies together are
held to ``--status-max-refreshes`` a second: past ``interval x max`` policies (300 by default),
each policy's refresh is stretched to ``policies / max`` seconds (10 s at 1,000 policies), and a
tick that comes before that does nothing. A reconcile of a new or changed policy is never held.

The sidecars' heartbeats (every second) move ``status.lastReportTime`` on every refresh, so without
more every refresh of a policy with live pods would write, even when nothing else changed. A
status whose only change is that time is written once it has moved by ``report_time_step`` seconds
(:func:`worth_writing`; the operator uses ``--heartbeat-stale-seconds``, 30 s): the time shown is
as precise as the staleness that decides whether a pod counts as reporting, and an idle fleet
costs the API server a write per policy every 30 s instead of one per refresh (at 1,000 policies
the refresh period is ~10 s, so a shorter step saved nothing). Any other change is written at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .status import comparable

Ref = tuple[str, str]


class StatusPacer:
    def __init__(
        self, interval: float, max_per_second: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval <= 0 or max_per_second <= 0:
            raise ValueError("the status interval and the refresh rate must be positive")
        self.interval = interval
        self.max_per_second = max_per_second
        self.clock = clock
        self._last: dict[Ref, float] = {}  # ref -> when it was last refreshed

    def period(self) -> float:
        """Seconds between two refreshes of one policy, for the policies known now."""
        return max(self.interval, len(self._last) / self.max_per_second)

    def due(self, ref: Ref) -> bool:
        """Whether this tick refreshes ``ref``. Half a tick of tolerance: ticks drift, and a
        refresh due a moment after a tick would otherwise wait for the next one."""
        last = self._last.get(ref)
        return last is None or self.clock() - last >= self.period() - self.interval / 2

    def refreshed(self, ref: Ref) -> None:
        """``ref`` was refreshed (by its timer, or by the reconcile of a new or changed policy); a
        refresh that failed is not recorded, so the next tick tries again."""
        self._last[ref] = self.clock()

    def forget(self, ref: Ref) -> None:
        self._last.pop(ref, None)


REPORT_TIME = "lastReportTime"


def _epoch(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def worth_writing(
    previous: Mapping[str, Any] | None, new: Mapping[str, Any], report_time_step: float
) -> bool:
    """Whether a status that differs from ``previous`` is written now (see the module's docstring)."""
    before, after = comparable(previous), comparable(new)
    was, now = before.pop(REPORT_TIME, None), after.pop(REPORT_TIME, None)
    if before != after:
        return True
    if was == now:
        return False
    was_at, now_at = _epoch(was), _epoch(now)
    if was_at is None or now_at is None:
        return True
    return abs(now_at - was_at) >= report_time_step
