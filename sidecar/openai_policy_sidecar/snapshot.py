"""The immutable snapshot of everything one request is enforced with.

A request takes the current ``PolicySnapshot`` once, at its start, and keeps it to the end: a policy
hot reload swaps the reference for new requests while requests in flight finish under the
policy they started with. Budget and rate-limit *state* lives in the store, not here, so a
reload continues the same counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from openai_policy_api import OpenAIPolicy, PolicySpec
from openai_policy_store import BudgetLedger, RateLimiter, Store, UsageWriter

from .pricing import PriceTable


@dataclass(frozen=True)
class PolicySnapshot:
    policy: OpenAIPolicy
    prices: PriceTable
    ledger: BudgetLedger
    limiter: RateLimiter
    usage_writer: UsageWriter  # kept across reloads of the same policy: nothing buffered is lost
    source: str  # "file" or "store": where this policy came from

    @property
    def spec(self) -> PolicySpec:
        return self.policy.spec

    @property
    def ref(self) -> tuple[str, str]:
        return self.policy.ref

    @property
    def generation(self) -> int:
        return int(self.policy.metadata.generation or 0)

    @property
    def dry_run(self) -> bool:
        return self.spec.mode == "dryRun"


def build_snapshot(
    policy: OpenAIPolicy, store: Store, source: str, usage_writer: UsageWriter | None = None
) -> PolicySnapshot:
    """Compile a validated policy against a store; raises when e.g. a price override is unusable."""
    ref = policy.ref
    spec = policy.spec
    return PolicySnapshot(
        policy=policy,
        prices=PriceTable.for_policy(spec),
        ledger=BudgetLedger(store, ref, spec.budget),
        limiter=RateLimiter(store, ref, spec.rate_limits),
        usage_writer=usage_writer
        if usage_writer is not None and tuple(usage_writer.ref) == ref
        else UsageWriter(store, ref),
        source=source,
    )
