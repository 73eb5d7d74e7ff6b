"""Budget ledger: all-or-none reservations over UTC windows, settle, release, crash leaks,
fail-closed / local-share, and concurrency (one event loop, and three processes on one Redis)."""

import asyncio
import multiprocessing
import random
import time
from datetime import UTC, datetime

import pytest

from openai_policy_api import BudgetLimit, BudgetSpec
from openai_policy_store import (
    BudgetExceeded,
    BudgetLedger,
    MemoryStore,
    RedisStore,
    Reservation,
    StoreUnavailable,
    keyspace,
)

REF = ("team-a", "chatbot")
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=UTC)


def budget(**limits: float) -> BudgetSpec:
    return BudgetSpec.model_validate({"limits": [{"window": w, "usd": usd} for w, usd in limits.items()]})


def by_window(usage):
    return {u.window: u for u in usage}


async def test_reserve_settle_and_usage(store):
    ledger = BudgetLedger(store, REF, budget(hour=1, day=5))
    reservation = await ledger.reserve(300_000, now=NOW)
    usage = by_window(await ledger.usage(now=NOW))
    assert usage["hour"].reserved_micros == 300_000 and usage["hour"].spent_micros == 0
    assert usage["hour"].limit_micros == 1_000_000 and usage["day"].limit_micros == 5_000_000
    assert usage["month"].limit_micros is None and usage["month"].reserved_micros == 300_000
    assert usage["hour"].bucket == "2026-11-22T14" and usage["month"].bucket == "2026-11"
    await ledger.settle(reservation, 120_000)
    usage = by_window(await ledger.usage(now=NOW))
    for window in ("hour", "day", "month"):
        assert (usage[window].spent_micros, usage[window].reserved_micros) == (120_000, 0)
    assert usage["hour"].remaining_micros == 880_000
    assert await ledger.fraction_used(now=NOW) == pytest.approx(0.12)


async def test_refusal_names_the_window_and_reserves_nothing_anywhere(store):
    ledger = BudgetLedger(store, REF, budget(hour=10, day=0.5))
    held = await ledger.reserve(400_000, now=NOW)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(200_000, now=NOW)
    error = refused.value
    assert (error.window, error.limit_micros, error.spent_micros, error.reserved_micros) == (
        "day",
        500_000,
        0,
        400_000,
    )
    assert "day budget of this policy ($0.50)" in str(error)
    # all or none: the hour window (which had room) did not keep the refused amount
    usage = by_window(await ledger.usage(now=NOW))
    assert usage["hour"].reserved_micros == 400_000
    await ledger.release(held)
    assert by_window(await ledger.usage(now=NOW))["hour"].reserved_micros == 0
    await ledger.reserve(500_000, now=NOW)  # exactly the limit fits


async def test_actual_above_reserved_is_booked_as_spent(store):
    ledger = BudgetLedger(store, REF, budget(hour=1))
    reservation = await ledger.reserve(100_000, now=NOW)
    await ledger.settle(reservation, 130_000)  # our estimate was short: spent is the truth
    usage = by_window(await ledger.usage(now=NOW))["hour"]
    assert (usage.spent_micros, usage.reserved_micros) == (130_000, 0)


async def test_settle_and_release_are_idempotent(store):
    ledger = BudgetLedger(store, REF, budget(hour=1))
    reservation = await ledger.reserve(100_000, now=NOW)
    await ledger.settle(reservation, 50_000)
    await ledger.settle(reservation, 50_000)
    await ledger.release(reservation)
    usage = by_window(await ledger.usage(now=NOW))["hour"]
    assert (usage.spent_micros, usage.reserved_micros) == (50_000, 0)


async def test_settle_lands_in_the_buckets_it_reserved_in(store):
    ledger = BudgetLedger(store, REF, budget(hour=1, month=100))
    before = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    after = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
    reservation = await ledger.reserve(200_000, now=before)
    await ledger.settle(reservation, 150_000)  # settled after midnight at the month's end
    old = by_window(await ledger.usage(now=before))
    new = by_window(await ledger.usage(now=after))
    assert old["month"].spent_micros == 150_000 and old["hour"].reserved_micros == 0
    assert new["month"].bucket == "2026-12"
    # Monday 2026-11-30 and Tuesday 2026-12-01 share their ISO week: that bucket carries on.
    assert new["week"].bucket == old["week"].bucket == "2026-W49"
    assert new["week"].spent_micros == 150_000
    assert all(u.spent_micros == 0 and u.reserved_micros == 0 for w, u in new.items() if w != "week")


async def test_new_window_starts_empty(store):
    ledger = BudgetLedger(store, REF, budget(hour=1, day=1.5))
    await ledger.settle(await ledger.reserve(900_000, now=NOW), 900_000)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(200_000, now=NOW)
    assert refused.value.window == "hour"
    next_hour = datetime(2026, 11, 22, 15, 0, tzinfo=UTC)
    await ledger.reserve(200_000, now=next_hour)  # new hour; the day still has room
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(500_000, now=next_hour)
    assert refused.value.window == "day"


async def test_budget_without_limits_tracks_spend_and_never_refuses(store):
    ledger = BudgetLedger(store, REF, BudgetSpec())
    reservation = await ledger.reserve(10**12, now=NOW)
    await ledger.settle(reservation, 10**12)
    usage = await ledger.usage(now=NOW)
    assert all(u.limit_micros is None and u.spent_micros == 10**12 for u in usage)
    assert await ledger.fraction_used(now=NOW) == 0.0
    assert (await store.read_spend(REF, now=NOW))["day"].spent_micros == 10**12


def test_repeated_window_uses_the_smallest_limit():
    # The policy model refuses a repeated window; the ledger stays safe if handed one anyway.
    spec = BudgetSpec.model_construct(
        limits=[
            BudgetLimit.model_construct(window="day", usd=5),
            BudgetLimit.model_construct(window="day", usd=2),
        ]
    )
    ledger = BudgetLedger(MemoryStore(), REF, spec)
    assert ledger.limits == {"day": 2_000_000}
    assert ledger.fail_closed  # no onStoreUnavailable given: the default applies


async def test_placeholder_reservation_books_spend_only(store):
    """A reservation that holds nothing (the proxy's dry-run path) still books its real cost."""
    ledger = BudgetLedger(store, REF, budget(hour=1))
    await ledger.settle(Reservation(id="dryrun-1", amount_micros=0), 42)
    await ledger.release(Reservation(id="dryrun-2", amount_micros=0))
    usage = by_window(await ledger.usage())["hour"]
    assert (usage.spent_micros, usage.reserved_micros) == (42, 0)


async def test_policies_do_not_share_budgets(store):
    one = BudgetLedger(store, ("team-a", "one"), budget(hour=1))
    two = BudgetLedger(store, ("team-b", "one"), budget(hour=1))
    await one.reserve(1_000_000, now=NOW)
    await two.reserve(1_000_000, now=NOW)


async def test_crashed_reservations_are_swept_after_the_hold(store):
    """A pod that dies mid-call never settles; its hold expires and the money returns."""
    ledger = BudgetLedger(store, REF, budget(hour=1), hold_seconds=0.3)
    lost = await ledger.reserve(700_000, now=NOW)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(700_000, now=NOW)
    await asyncio.sleep(0.45)
    assert by_window(await ledger.usage(now=NOW))["hour"].reserved_micros == 0  # reading sweeps too
    fresh = await ledger.reserve(700_000, now=NOW)
    # the slow call finally settles: its cost counts, and it does not free money it no longer holds
    await ledger.settle(lost, 100_000)
    usage = by_window(await ledger.usage(now=NOW))["hour"]
    assert (usage.spent_micros, usage.reserved_micros) == (100_000, 700_000)
    await ledger.release(fresh)


async def test_negative_reservation_is_refused(store):
    with pytest.raises(ValueError):
        await BudgetLedger(store, REF, budget(hour=1)).reserve(-1)


# -- concurrency --------------------------------------------------------------------------------

LIMIT_MICROS = 1_000_000
PROCESS_LIMIT_MICROS = 3_000_000  # ~660 calls: enough that all three processes get a share
MAX_WORST = 9_000


async def _spend_until_refused(ledger: BudgetLedger, seed: int) -> tuple[int, int]:
    """One client: reserve a worst case, 'call', settle a real cost <= worst; stop only when refused
    while nothing else is in flight (so the budget really is used up, not refused early)."""
    rng = random.Random(seed)
    spent = calls = 0
    while True:
        worst = rng.randint(3_000, MAX_WORST)
        try:
            reservation = await ledger.reserve(worst, now=NOW)  # fixed: no hour boundary mid-test
        except BudgetExceeded as refused:
            if refused.reserved_micros == 0:
                return spent, calls
            await asyncio.sleep(rng.uniform(0, 0.003))
            continue
        await asyncio.sleep(rng.uniform(0, 0.002))
        actual = rng.randint(worst // 2, worst)
        await ledger.settle(reservation, actual)
        spent += actual
        calls += 1


async def test_200_concurrent_clients_never_overspend(store):
    ledger = BudgetLedger(store, REF, budget(hour=LIMIT_MICROS / 1_000_000))
    results = await asyncio.wait_for(
        asyncio.gather(*(_spend_until_refused(ledger, seed) for seed in range(200))), timeout=60
    )
    total = sum(spent for spent, _ in results)
    usage = by_window(await ledger.usage(now=NOW))["hour"]
    assert usage.spent_micros == total  # every settle counted exactly once
    assert usage.reserved_micros == 0
    assert total <= LIMIT_MICROS
    assert LIMIT_MICROS - total < MAX_WORST  # used up to within one request's cost
    assert sum(calls for _, calls in results) > 100


def _process_worker(url: str, seeds: list[int], queue, start) -> None:  # noqa: ANN001
    async def main() -> tuple[int, int]:
        store = RedisStore(url)
        ledger = BudgetLedger(store, REF, budget(hour=PROCESS_LIMIT_MICROS / 1_000_000))
        try:
            await store.ping()  # connected before the start line
            start.wait(timeout=60)  # all three processes contend from the same moment
            results = await asyncio.gather(*(_spend_until_refused(ledger, seed) for seed in seeds))
        finally:
            await store.close()
        return sum(s for s, _ in results), sum(c for _, c in results)

    queue.put(asyncio.run(main()))


def test_three_processes_sharing_redis_never_overspend(redis):
    context = multiprocessing.get_context("spawn")
    queue, start = context.Queue(), context.Barrier(3)
    processes = [
        context.Process(
            target=_process_worker, args=(redis.url, list(range(i * 70, i * 70 + 70)), queue, start)
        )
        for i in range(3)
    ]
    for process in processes:
        process.start()
    try:
        results = [queue.get(timeout=90) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)
    total = sum(spent for spent, _ in results)
    bucket = keyspace.window_bucket("hour", NOW)
    stored = int(redis.client().get(keyspace.spend_key(*REF, "hour", bucket)) or 0)
    assert stored == total
    assert int(redis.client().get(keyspace.reserved_key(*REF, "hour", bucket)) or 0) == 0
    assert total <= PROCESS_LIMIT_MICROS
    assert PROCESS_LIMIT_MICROS - total < MAX_WORST
    assert all(calls > 0 for _, calls in results), results  # every process really took part


# -- store unavailable --------------------------------------------------------------------------


async def test_fail_closed_raises_store_unavailable_promptly(redis):
    store = RedisStore(redis.url)
    ledger = BudgetLedger(store, REF, budget(hour=1))
    try:
        await ledger.reserve(1000)
        redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await ledger.reserve(1000)
        with pytest.raises(StoreUnavailable):
            await ledger.usage()
        assert time.monotonic() - started < 3
    finally:
        await store.close()


async def test_local_share_falls_back_and_pushes_spend_when_redis_returns(redis):
    spec = BudgetSpec.model_validate(
        {
            "limits": [{"window": "hour", "usd": 1}],
            "onStoreUnavailable": "localShare",
            "localSharePercent": 10,
        }
    )
    store = RedisStore(redis.url)
    ledger = BudgetLedger(store, REF, spec)
    try:
        shared = await ledger.reserve(50_000)  # held in Redis when it goes down
        redis.stop()
        local = await ledger.reserve(60_000)  # 10% of $1 = 100_000 local micros
        assert local.local
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve(60_000)
        assert refused.value.limit_micros == 100_000
        await ledger.settle(local, 55_000)
        for _ in range(3):  # local spend merges per bucket: an outage cannot grow the backlog
            await ledger.settle(await ledger.reserve(1_000), 1_000)
        await ledger.settle(shared, 40_000)  # cannot reach Redis: deferred, not lost, not raised
        assert ledger.unsynced_count == 2
        usage = by_window(await ledger.usage())["hour"]
        assert (usage.limit_micros, usage.spent_micros) == (100_000, 58_000)
        redis.start()  # comes back empty (no persistence)
        again = await ledger.reserve(1_000)
        assert not again.local
        assert ledger.unsynced_count == 0
        await ledger.release(again)
        usage = by_window(await ledger.usage())["hour"]
        assert (usage.limit_micros, usage.spent_micros, usage.reserved_micros) == (1_000_000, 98_000, 0)
    finally:
        await store.close()


async def test_memory_store_never_falls_back_to_itself():
    ledger = BudgetLedger(MemoryStore(), REF, budget(hour=1))
    assert not ledger._may_fall_back()


async def test_memory_store_bookkeeping_stays_flat():
    store = MemoryStore()
    ledger = BudgetLedger(store, REF, budget(hour=1000))
    for _ in range(5000):
        await ledger.settle(await ledger.reserve(10), 10)
    assert sum(len(records) for records in store._reservations.values()) == 0
    assert sum(len(heap) for heap in store._deadlines.values()) <= 1100
    assert store.key_count() == 8  # spend + reserved for hour, day, week and month
