"""The immutable snapshot of everything one request is enforced with.

A request takes the current ``PolicySnapshot`` once, at its start, and keeps it to the end: a policy
hot reload swaps the reference for new requests while requests in flight finish under the
policy they started with. Budget and rate-limit *state* lives in the store, not here, so a
reload continues the same counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openai_policy_store import BudgetLedger, RateLimiter, UsageWriter as UsageReporter

from .pricing import PriceTable


@dataclass(frozen=True)
class PolicySnapshot:
    policy: Any  # OpenAIPolicy
    prices: PriceTable
    ledger: BudgetLedger
    limiter: RateLimiter
    reporter: UsageReporter
    source: str  # "file" or "store": where this policy came from

    @property
    def spec(self) -> Any:
        return self.policy.spec

    @property
    def ref(self) -> tuple[str, str]:
        return tuple(self.policy.ref)  # type: ignore[return-value]

    @property
    def generation(self) -> int:
        return int(self.policy.metadata.generation or 0)

    @property
    def dry_run(self) -> bool:
        return self.spec.mode == "dryRun"


def build_snapshot(
    policy: Any, store: Any, source: str, reporter: UsageReporter | None = None
) -> PolicySnapshot:
    """Compile a validated policy against a store; raises when e.g. a price override is unusable."""
    ref = tuple(policy.ref)
    spec = policy.spec
    return PolicySnapshot(
        policy=policy,
        prices=PriceTable.for_policy(spec),
        ledger=BudgetLedger(store, ref, spec.budget),
        limiter=RateLimiter(store, ref, spec.rate_limits),
        reporter=reporter
        if reporter is not None and tuple(reporter.ref) == ref
        else UsageReporter(store, ref),
        source=source,
    )
