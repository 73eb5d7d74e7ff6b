"""Budget: reserve a call's worst-case cost before it runs, settle to the real cost after.

Reservations make the hard budget hold under concurrency: a call only goes upstream when its
worst case fits in what is left after settled spend *and* every reservation in flight.
"""

from __future__ import annotations

from typing import Any

from .. import errors
from ..money import micros_to_usd
from ..state import BudgetExceeded


async def reserve(ledger: Any, amount_micros: int) -> Any:
    """Reserve ``amount_micros``; raises an OpenAI-shaped ``budget_exceeded`` refusal."""
    try:
        return await ledger.reserve(amount_micros)
    except BudgetExceeded as exceeded:
        raise refusal_for(exceeded) from None


def refusal_for(exceeded: BudgetExceeded) -> errors.Refusal:
    return errors.budget_exceeded(
        exceeded.window,
        micros_to_usd(exceeded.limit_micros),
        micros_to_usd(exceeded.spent_micros),
        micros_to_usd(exceeded.reserved_micros),
    )
