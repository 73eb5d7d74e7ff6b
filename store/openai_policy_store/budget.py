"""Budget ledger: reserve a call's worst-case cost before it runs, settle the real cost after.

Windows are calendar buckets (hour, day, week, month) in ``spec.budget.timeZone`` (``windows``).
A reservation is all-or-none across every window, and across the caller's user and feature
buckets where ``perUser`` / ``perFeature`` limit them: the store checks ``spent + reserved +
amount <= limit`` for each limited bucket and reserves in all of them atomically, in one call.
Spend is tracked in every policy window even without a limit (the operator reports it); a user's
or feature's only in the windows it is limited in (bounded keys), while the settle also counts it
among the window's top spenders. A call that was swept (see ``hold_seconds``) still settles its
real cost.

When the shared store is unreachable, ``spec.budget.onStoreUnavailable`` decides:

* ``failClosed`` (the default): :meth:`BudgetLedger.reserve` raises :class:`StoreUnavailable`
  and the proxy refuses the call. The budget is a hard limit on money; while the shared ledger
  is unreachable no pod can know what the others spent, so the only way to keep the promise
  "concurrent requests can never spend past a limit" is to stop spending. An outage of Redis
  costs availability, never money.
* ``localShare``: each pod keeps serving from an in-memory ledger limited to
  ``localSharePercent`` of every limit (per pod, per window), and pushes the spend it recorded
  to the shared ledger when the store is back. N pods can overspend by at most
  N x localSharePercent of a limit during an outage: availability bought with bounded money.

With ``failClosed`` the ledger raises and leaves the decision to its caller (the proxy maps it
to a refusal); with ``localShare`` it falls back by itself, so callers see no StoreUnavailable.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING

from .exceptions import BudgetExceeded, StoreUnavailable
from .keyspace import MAX_NAME_LENGTH, scope_kind, scope_part
from .memory import MemoryStore
from .money import usd_to_micros
from .protocol import BucketLimit, BucketSpend, Ref, ReserveOutcome, Store
from .windows import current_buckets, scoped_buckets

if TYPE_CHECKING:
    from openai_policy_api import BudgetSpec
    from openai_policy_api.spec import BudgetLimit

log = logging.getLogger(__name__)

DEFAULT_HOLD_SECONDS = 900.0
_MAX_UNSYNCED = 10_000


@dataclass
class Reservation:
    """Money held for one call in flight. ``local``: held in the fallback ledger (store was down)."""

    id: str
    amount_micros: int
    buckets: tuple[BucketLimit, ...] = ()  # empty: nothing held; a settle books into the current buckets
    local: bool = False
    done: bool = field(default=False, repr=False)
    # Who the call is for (top spenders; their budget buckets are among ``buckets`` when limited).
    user: str | None = None
    feature: str | None = None
    # Per bucket, what a new reservation may still take after this one (None: unlimited).
    remaining: tuple[int | None, ...] = ()

    @property
    def windows(self) -> dict[str, str]:
        return {b.window: b.bucket for b in self.buckets if not b.scope}

    @property
    def spenders(self) -> tuple[tuple[str, str], ...]:
        """``(kind, name)`` of the top-spender sets this call's cost counts in."""
        named = (("users", self.user), ("features", self.feature))
        return tuple((kind, name) for kind, name in named if name)


class _ReservationIds:
    """Unique reservation ids without a uuid4 per request: a random per-process prefix and a counter.

    Ids share one Redis hash per policy across every pod, so they must not collide between
    processes: 64 random bits per process (re-drawn in a forked child) make that as unlikely as
    with uuid4, and the counter keeps them unique within the process. Short ids also keep the
    reservations hash small.
    """

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = secrets.token_hex(8) + "."
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


_ids = _ReservationIds()


def new_reservation_id() -> str:
    """A reservation id unique across processes (cheap: no uuid4, no syscall)."""
    return _ids.next()


def limits_from_spec(entries: Sequence[BudgetLimit], percent: int = 100) -> dict[str, int]:
    """``{window: limit micros}`` from one list of ``spec.budget`` (``limits``, ``perUser`` or
    ``perFeature``), the smallest if a window repeats."""
    limits: dict[str, int] = {}
    for entry in entries:
        micros = usd_to_micros(entry.usd) * percent // 100
        limits[entry.window] = min(micros, limits.get(entry.window, micros))
    return limits


def name_problem(kind: str, name: str | None) -> str | None:
    """Why a user or feature name cannot have a budget (too long), or None when it can."""
    if name is not None and len(name) > MAX_NAME_LENGTH:
        return f"the {kind} name is {len(name)} characters long; at most {MAX_NAME_LENGTH} may have a budget"
    return None


class BudgetLedger:
    """Budget enforcement for one policy over a :class:`Store`.

    ``hold_seconds`` is how long a reservation may stay unsettled before the store sweeps it
    back into the budget (a pod that crashed mid-call). 15 minutes by default: longer than any
    call the policy lets run (timeouts, retries up to ``maxRetryDurationSeconds``, streams kept
    alive by ``streamIdleTimeoutSeconds``), short enough that a dead pod's money returns soon.
    """

    def __init__(
        self,
        store: Store,
        ref: Ref,
        budget: BudgetSpec | None,
        *,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        fallback: MemoryStore | None = None,
    ) -> None:
        self.store = store
        self.ref = ref
        self.budget = budget
        self.hold_seconds = hold_seconds
        self.limits = limits_from_spec(budget.limits if budget is not None else ())
        self.time_zone = budget.time_zone if budget is not None else "UTC"
        self.fail_closed = budget is None or budget.on_store_unavailable != "localShare"
        share = budget.local_share_percent if budget is not None else 10
        self.local_limits = limits_from_spec(budget.limits if budget is not None else (), share)
        # kind -> (shared limits, local-share limits) of each user's / feature's own buckets
        self.scoped_limits = {
            kind: (limits_from_spec(entries), limits_from_spec(entries, share))
            for kind, entries in (
                ("user", budget.per_user if budget is not None else ()),
                ("feature", budget.per_feature if budget is not None else ()),
            )
        }
        self._fallback = (
            fallback if fallback is not None else (store if isinstance(store, MemoryStore) else MemoryStore())
        )
        # (reservation id or "", ((window, bucket), ...)) -> (buckets, micros not yet in the store)
        self._unsynced: dict[
            tuple[str, tuple[tuple[str, str], ...]], tuple[tuple[BucketLimit, ...], int]
        ] = {}
        self._bucket_cache: dict[bool, tuple[int, tuple[BucketLimit, ...]]] = {}
        self.last_fraction_used = 0.0
        # (window, bucket) -> the highest settled spend this ledger has seen the store hold (every
        # settle and read returns it). Sent with each reservation as the bucket's floor: a store that
        # lost its counters (wiped, restarted empty) gets them back at the next reservation of any
        # pod, before any budget is handed out again.
        self._floors: dict[tuple[str, str], int] = {}

    def _buckets(self, now: datetime | None, local: bool = False) -> tuple[BucketLimit, ...]:
        """The current buckets; for the real clock, computed at most once per second (hot path)."""
        limits = self.local_limits if local else self.limits
        if now is not None:
            return current_buckets(limits, now, self.time_zone)
        second = int(time.time())
        cached = self._bucket_cache.get(local)
        if cached is not None and cached[0] == second:
            return cached[1]
        buckets = current_buckets(limits, None, self.time_zone)
        self._bucket_cache[local] = (second, buckets)
        return buckets

    def buckets(
        self,
        now: datetime | None = None,
        *,
        local: bool = False,
        user: str | None = None,
        feature: str | None = None,
    ) -> tuple[BucketLimit, ...]:
        """The current buckets with this ledger's limits (``local``: the local-share limits) and,
        for the shared store, the floors this ledger has seen; then those of ``user`` and
        ``feature`` for the windows ``perUser`` / ``perFeature`` limit."""
        policy = self._buckets(now, local) if local else self._with_floors(self._buckets(now))
        return policy + self._scoped(policy, local, user, feature)

    def _scoped(
        self, policy: tuple[BucketLimit, ...], local: bool, user: str | None, feature: str | None
    ) -> tuple[BucketLimit, ...]:
        out: tuple[BucketLimit, ...] = ()
        for kind, name in (("user", user), ("feature", feature)):
            limits = self.scoped_limits[kind][1 if local else 0]
            if name and limits:
                out += scoped_buckets(scope_part(kind, name), limits, policy)
        return out

    def exceeded(
        self, outcome: ReserveOutcome, buckets: tuple[BucketLimit, ...], user: str | None, feature: str | None
    ) -> BudgetExceeded:
        """The refusal of ``outcome``, naming whose budget it was (never anyone else's figures)."""
        assert outcome.window is not None
        refused = buckets[outcome.index] if outcome.index is not None else None
        kind = scope_kind(refused.scope) if refused is not None and refused.scope else None
        if kind is None:  # one user's spent budget must not downgrade everyone's model
            self.last_fraction_used = max(self.last_fraction_used, 1.0)
        return BudgetExceeded(
            outcome.window,
            outcome.limit_micros,
            outcome.spent_micros,
            outcome.reserved_micros,
            kind,
            {"user": user, "feature": feature}.get(kind or ""),
        )

    def _with_floors(self, buckets: tuple[BucketLimit, ...]) -> tuple[BucketLimit, ...]:
        if not self._floors:
            return buckets
        return tuple(
            replace(b, floor_micros=floor)
            if (floor := self._floors.get((b.window, b.bucket), 0)) > b.floor_micros
            else b
            for b in buckets
        )

    def _note(self, window: str, bucket: str, spent_micros: int) -> None:
        key = (window, bucket)
        if spent_micros > self._floors.get(key, 0):
            if len(self._floors) > 32:  # old buckets: only the current ones are ever sent
                self._floors.clear()
            self._floors[key] = spent_micros

    def floors(self) -> dict[tuple[str, str], int]:
        """(window, bucket) -> the highest settled spend seen (for tests and diagnostics)."""
        return dict(self._floors)

    @property
    def has_limits(self) -> bool:
        return bool(self.limits)

    def _may_fall_back(self) -> bool:
        return not self.fail_closed and self._fallback is not self.store

    @property
    def may_fall_back(self) -> bool:
        """True when an unreachable store makes this ledger use its local share (``localShare``)."""
        return self._may_fall_back()

    @property
    def fallback(self) -> MemoryStore:
        return self._fallback

    async def reserve(
        self,
        amount_micros: int,
        now: datetime | None = None,
        *,
        user: str | None = None,
        feature: str | None = None,
    ) -> Reservation:
        """Hold ``amount_micros`` in every window (the policy's, and ``user``'s and ``feature``'s
        where they have limits), or raise :class:`BudgetExceeded` (nothing held).

        Raises :class:`StoreUnavailable` when the store is down and the policy fails closed.
        """
        if amount_micros < 0:
            raise ValueError("a reservation cannot be negative")
        buckets = self.buckets(now, user=user, feature=feature)
        reservation_id = _ids.next()
        try:
            outcome = await self.store.budget_reserve(
                self.ref, buckets, amount_micros, reservation_id, self.hold_seconds
            )
            local = False
        except StoreUnavailable:
            if not self._may_fall_back():
                raise
            buckets = self.buckets(now, local=True, user=user, feature=feature)
            outcome = await self._fallback.budget_reserve(
                self.ref, buckets, amount_micros, reservation_id, self.hold_seconds
            )
            local = True
        else:
            if self._unsynced:
                await self._push_unsynced()
        booked = self.book(outcome, reservation_id, amount_micros, buckets, user, feature, local=local)
        if isinstance(booked, BudgetExceeded):
            raise booked
        return booked

    def book(
        self,
        outcome: ReserveOutcome,
        reservation_id: str,
        amount_micros: int,
        buckets: tuple[BucketLimit, ...],
        user: str | None,
        feature: str | None,
        *,
        local: bool,
    ) -> Reservation | BudgetExceeded:
        """What an attempted reservation's outcome means: the money held, or the refusal."""
        if outcome.ok:
            return Reservation(
                reservation_id,
                amount_micros,
                buckets,
                local=local,
                user=user,
                feature=feature,
                remaining=outcome.remaining,
            )
        refused = buckets[outcome.index] if outcome.index is not None else None
        if not local and refused is not None and not refused.scope:
            self._note(refused.window, refused.bucket, outcome.spent_micros)
        return self.exceeded(outcome, buckets, user, feature)

    async def settle(self, reservation: Reservation, actual_micros: int) -> None:
        """Turn the reservation into ``actual_micros`` of spend (which may exceed what was held).

        Never raises for an unreachable store: the spend is kept and pushed on a later success
        (a finished call's cost must not be lost), and the hold expires by itself.
        """
        if reservation.done:
            return
        reservation.done = True
        actual = max(0, int(actual_micros))
        if not reservation.buckets:  # holds nothing (e.g. a dry-run refusal): only book the spend
            reservation.buckets = self.buckets(user=reservation.user, feature=reservation.feature)
        if reservation.local:
            await self._fallback.budget_settle(
                self.ref, reservation.buckets, reservation.id, actual, reservation.spenders
            )
            self._remember("", reservation.buckets, actual)
            return
        try:
            spent = await self.store.budget_settle(
                self.ref, reservation.buckets, reservation.id, actual, reservation.spenders
            )
        except StoreUnavailable as error:
            log.warning("budget settle deferred, store unavailable: %s", error)
            self._remember(reservation.id, reservation.buckets, actual)
            return
        self._note_all(reservation.buckets, spent)

    def _note_all(self, buckets: Sequence[BucketLimit], spent: Sequence[int]) -> None:
        # Floors are kept for the policy's buckets only: one per window, however many users.
        for b, value in zip(buckets, spent, strict=False):
            if not b.scope:
                self._note(b.window, b.bucket, int(value))

    async def release(self, reservation: Reservation) -> None:
        """Give the held money back (the call failed before costing anything). Never raises."""
        if reservation.done:
            return
        reservation.done = True
        if not reservation.buckets:
            return
        target = self._fallback if reservation.local else self.store
        try:
            await target.budget_release(self.ref, reservation.buckets, reservation.id)
        except StoreUnavailable as error:
            log.warning("budget release skipped, store unavailable (the hold will expire): %s", error)

    def _remember(self, reservation_id: str, buckets: tuple[BucketLimit, ...], actual: int) -> None:
        """Keep spend the shared store has not seen, to push on a later success.

        Spend of local reservations (unknown to the shared store) merges per bucket, so however long
        an outage lasts this stays a handful of entries. A deferred shared settle keeps its id (so the
        push also drops the shared hold) until too many pile up; then it merges too, and its hold is
        left to expire. Nothing is ever dropped.
        """
        if len(self._unsynced) >= _MAX_UNSYNCED:
            reservation_id = ""
        key = (reservation_id, tuple((b.window, b.bucket) for b in buckets))
        previous = self._unsynced.get(key)
        self._unsynced[key] = (buckets, actual + (previous[1] if previous else 0))

    async def push_unsynced(self, batch: int = 50) -> None:
        """Push spend the shared store has not seen yet (after a success, so it is reachable)."""
        await self._push_unsynced(batch)

    async def _push_unsynced(self, batch: int = 50) -> None:
        """Push up to ``batch`` pending entries (bounded: this runs on a request's path)."""
        for key in list(islice(self._unsynced, batch)):
            buckets, actual = self._unsynced[key]
            try:
                spent = await self.store.budget_settle(self.ref, buckets, key[0], actual)
            except StoreUnavailable:
                return
            del self._unsynced[key]
            self._note_all(buckets, spent)

    @property
    def unsynced_count(self) -> int:
        return len(self._unsynced)

    async def top_spenders(
        self, count: int, now: datetime | None = None
    ) -> dict[tuple[str, str], list[tuple[str, int]]]:
        """``(kind, window) -> [(name, micros)...]``: the users and features that spent most in the
        current bucket of each window, highest first (see ``Store.top_spenders``)."""
        return await self.store.top_spenders(self.ref, self._buckets(now), count)

    async def usage(self, now: datetime | None = None) -> list[BucketSpend]:
        """Spent and reserved in the current bucket of each window (hour, day, week, month), with its limit.

        Falls back to the local ledger (with local limits) when the store is down and the policy
        allows falling back; otherwise raises :class:`StoreUnavailable`.
        """
        try:
            usage = await self.store.budget_read(self.ref, self._buckets(now))
        except StoreUnavailable:
            if not self._may_fall_back():
                raise
            usage = await self._fallback.budget_read(self.ref, self._buckets(now, local=True))
        else:
            for u in usage:
                self._note(u.window, u.bucket, u.spent_micros)
        self.last_fraction_used = _fraction(usage)
        return usage

    async def fraction_used(self, now: datetime | None = None) -> float:
        """The largest (spent + reserved) / limit over the limited windows; 0.0 without limits."""
        return _fraction(await self.usage(now))


def _fraction(usage: list[BucketSpend]) -> float:
    fractions = [(u.spent_micros + u.reserved_micros) / u.limit_micros for u in usage if u.limit_micros]
    return max(fractions, default=0.0)
