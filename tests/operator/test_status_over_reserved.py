"""A settle above its reservation, counted by the sidecars in the usage hash, is shown in the
policy's status (status.usage.overReserved): it is a bug in the price table or an estimate."""

from __future__ import annotations

from openai_policy_operator.status import usage_status
from openai_policy_store import UsageCounts


def test_over_reserved_calls_reach_the_status():
    counts = UsageCounts.from_fields({"requests": "7", "over_reserved": "2", "cost_micros": "10"})
    assert counts.over_reserved == 2
    status = usage_status(counts).model_dump(mode="json", by_alias=True, exclude_none=True)
    assert status["overReserved"] == 2 and status["requests"] == 7


def test_a_request_counts_over_reserved_once():
    assert UsageCounts(requests=1, over_reserved=1).to_fields() == {"requests": 1, "over_reserved": 1}
    assert "over_reserved" not in UsageCounts(requests=1).to_fields()
