"""The usage hash's one definition: what a request adds is what the reader gets back."""

from __future__ import annotations

import asyncio
from collections import Counter

from openai_policy_store import MemoryStore, UsageCounts, UsageWriter

REF = ("team", "p")


def test_fields_round_trip_through_a_store_as_increments() -> None:
    one = UsageCounts(requests=1, tokens_input=12, cost_micros=30, refused=Counter({"budget_exceeded": 1}))
    two = UsageCounts(requests=1, cache_hits=1, saved_micros=7, dry_run_refused=Counter({"pii_detected": 2}))
    assert "tokens_output" not in one.to_fields()  # zeros are not written

    async def run() -> UsageCounts:
        store = MemoryStore()
        writer = UsageWriter(store, REF)
        writer.add(one.to_fields())
        writer.add(two.to_fields())
        await writer.flush()
        return UsageCounts.from_fields(await store.read_usage(REF))

    total = asyncio.run(run())
    assert (total.requests, total.tokens_input, total.cost_micros, total.cache_hits) == (2, 12, 30, 1)
    assert total.refused == {"budget_exceeded": 1} and total.dry_run_refused == {"pii_detected": 2}


def test_reading_tolerates_strings_bytes_and_fields_it_does_not_know() -> None:
    counts = UsageCounts.from_fields({"requests": b"3", "errors": "2", "someday_new_counter": 9})
    assert (counts.requests, counts.errors) == (3, 2)
