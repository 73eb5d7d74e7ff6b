"""Budget: reserve a call's worst-case cost before it runs, settle to the real cost after.

The reservation itself is taken by ``state.admit`` (one round trip with the rate limits); this
stage turns a refusal into what the caller sees. Reservations make the hard budget hold under concurrency: a call only goes upstream when its
worst case fits in what is left after settled spend *and* every reservation in flight.
"""

from __future__ import annotations

from openai_policy_store import BudgetExceeded
from openai_policy_store.money import micros_to_usd

from .. import refusals


def refusal_for(exceeded: BudgetExceeded) -> refusals.Refusal:
    return refusals.budget_exceeded(
        exceeded.window,
        micros_to_usd(exceeded.limit_micros),
        micros_to_usd(exceeded.spent_micros),
        micros_to_usd(exceeded.reserved_micros),
    )
