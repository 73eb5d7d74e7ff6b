"""``OpenAIPolicy.status``: what the operator observed, written by it, read by people.

Money in status is written as decimal strings (``"12.345678"``), never floats, following the
Kubernetes API conventions; the short ``summary`` strings exist for ``kubectl get`` columns.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Final, Literal

from pydantic import Field

from .base import StatusModel, doc
from .spec import WINDOWS, Window

# The condition types the operator maintains, in the order it writes them.
READY: Final = "Ready"
ENFORCED: Final = "Enforced"
BUDGET_ALERT: Final = "BudgetAlert"
BUDGET_EXCEEDED: Final = "BudgetExceeded"
SUSPENDED: Final = "Suspended"
CONDITION_TYPES: Final[tuple[str, ...]] = (READY, ENFORCED, BUDGET_ALERT, BUDGET_EXCEEDED, SUSPENDED)


def _listed(items: tuple[str, ...], last: str) -> str:
    """``a, b and c`` (or ``or``): the condition types as written in descriptions."""
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


class Condition(StatusModel):
    """One condition of the policy, in the shape of Kubernetes' metav1.Condition."""

    type: str = Field(
        max_length=316,
        description=f"Condition type: {_listed(CONDITION_TYPES, 'or')}.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The policy generation the condition was computed from."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the condition last changed status."
    )
    reason: str | None = Field(
        default=None,
        max_length=1024,
        description="A CamelCase word saying why, e.g. SelectorConflict or LimitReached.",
    )
    message: str | None = Field(default=None, max_length=32768, description="A human-readable explanation.")


class GenerationCount(StatusModel):
    """How many reporting pods run one policy generation."""

    generation: int = Field(description="The policy generation (metadata.generation) applied by the pods.")
    pods: int = Field(ge=0, description="Reporting pods that run it.")


class PodsStatus(StatusModel):
    """The pods governed by the policy."""

    injected: int = Field(default=0, ge=0, description="Pods that carry the sidecar for this policy.")
    reporting: int = Field(default=0, ge=0, description="Sidecars that sent a heartbeat recently.")
    up_to_date: int = Field(
        default=0, ge=0, description="Reporting sidecars that run the policy's current generation."
    )
    generations: list[GenerationCount] = Field(
        default_factory=list, description="Reporting sidecars by the policy generation they run."
    )


# How many users and features status.spend lists per window, and how many the store keeps per
# window bucket (bounded memory; the shown top stays exact, see the store's settle).
TOP_SPENDERS_SHOWN: Final = 10
TOP_SPENDERS_KEPT: Final = 100


class Spender(StatusModel):
    """One user or feature and what it spent in a window's current bucket."""

    name: str = Field(max_length=256, description="The user (or feature) as the app named it.")
    usd: str = Field(description="Its settled spend in the bucket, in US dollars (decimal string).")


class WindowSpend(StatusModel):
    """Spend in the current bucket of one budget window."""

    window: Window = Field(description="The budget window: hour, day, week or month (in budget.timeZone).")
    bucket: str = Field(description="The current calendar bucket, e.g. 2026-11 for a month.")
    start: datetime | None = Field(default=None, description="When the bucket began (RFC 3339).")
    end: datetime | None = Field(
        default=None, description="When the bucket ends (RFC 3339): the next one begins."
    )
    usd: str = Field(description="Settled spend in the bucket, in US dollars (decimal string).")
    limit_usd: str | None = Field(
        default=None, description="The window's limit, in US dollars; absent when the window has no limit."
    )
    remaining_usd: str | None = Field(default=None, description="What is left of the limit, in US dollars.")
    percent: int | None = Field(default=None, ge=0, description="Spend as a whole percent of the limit.")
    top_users: list[Spender] | None = Field(
        default=None,
        max_length=TOP_SPENDERS_SHOWN,
        description=f"The {TOP_SPENDERS_SHOWN} users who spent most in the bucket, highest first (settled "
        f"spend; requests without a user are not listed). The store keeps the {TOP_SPENDERS_KEPT} highest "
        "per bucket: the list is exact while fewer users spent in the bucket.",
    )
    top_features: list[Spender] | None = Field(
        default=None,
        max_length=TOP_SPENDERS_SHOWN,
        description=f"The {TOP_SPENDERS_SHOWN} features (X-OpenAI-Policy-Feature) that spent most in the "
        "bucket, highest first, kept like topUsers.",
    )


class UsageStatus(StatusModel):
    """Counters summed over every pod since the policy was created."""

    requests: int = Field(default=0, ge=0, description="Requests handled, refused ones included.")
    tokens_input: int = Field(default=0, ge=0, description="Input tokens billed by OpenAI.")
    tokens_output: int = Field(default=0, ge=0, description="Output tokens billed by OpenAI.")
    tokens_cached: int = Field(
        default=0, ge=0, description="Cached input tokens (billed at the cached price)."
    )
    cache_hits: int = Field(
        default=0, ge=0, description="Requests answered from the policy's response cache."
    )
    saved_usd: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?$",
        description="What cache hits would have cost upstream, in USD (a decimal string).",
    )
    retries: int = Field(
        default=0, ge=0, description="Upstream calls the sidecars retried (429, 5xx, connection errors)."
    )
    errors: int = Field(default=0, ge=0, description="Upstream errors returned to callers.")
    over_reserved: int = Field(
        default=0,
        ge=0,
        description="Calls that cost more than the sidecar reserved for them (settled in full). Should "
        "stay 0: any other value is a bug in the price table or the estimate; the sidecar's log says "
        "which model.",
    )
    model_drift: int = Field(
        default=0, ge=0, description="Responses whose model differed from the pinned one."
    )
    blocked: int = Field(default=0, ge=0, description="Requests refused by the policy, all reasons together.")
    blocked_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="Refused requests by error code (budget_exceeded, rate_limit_exceeded, ...).",
    )
    would_block: int = Field(
        default=0,
        ge=0,
        description="In dryRun mode: requests that would have been refused, but were forwarded.",
    )
    would_block_by_reason: dict[str, int] = Field(
        default_factory=dict,
        description="In dryRun mode: requests that would have been refused, by error code.",
    )


class StatusSummary(StatusModel):
    """Short strings for `kubectl get` columns."""

    spend: str | None = Field(
        default=None, description="Spend against the tightest budget window, e.g. `$1.23/$10.00 month`."
    )
    pods: str | None = Field(default=None, description="Reporting pods over injected pods, e.g. `2/2`.")


class PolicyStatus(StatusModel):
    """What the operator observed: readiness, the pods enforcing the policy, spend and usage."""

    observed_generation: int | None = Field(
        default=None, description="The policy generation the operator last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description=f"{_listed(CONDITION_TYPES, 'and')}.",
    )
    pods: PodsStatus | None = Field(default=None, description="The pods governed by the policy.")
    spend: list[WindowSpend] = Field(
        default_factory=list, description="Spend per budget window, for the current calendar bucket."
    )
    usage: UsageStatus | None = Field(default=None, description=doc(UsageStatus))
    last_report_time: datetime | None = Field(
        default=None, description="When a sidecar last reported usage or a heartbeat."
    )
    summary: StatusSummary | None = Field(
        default=None, description="Short strings for `kubectl get` columns."
    )


def _money(value: str | Decimal) -> str:
    """``"1.5"`` -> ``"$1.50"`` (cents, rounded down so that spend is never overstated as lower)."""
    amount = Decimal(value)
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_FLOOR):,}"


def spend_summary(spend: list[WindowSpend]) -> str | None:
    """The spend column: the limited window closest to its limit, e.g. ``$1.23/$10.00 month``.

    With no limit at all, the largest unlimited window's spend alone (``$1.23 month``).
    """
    limited = [w for w in spend if w.limit_usd is not None]
    if limited:

        def used(w: WindowSpend) -> Decimal:
            return Decimal(w.usd) / Decimal(w.limit_usd or "1")

        tightest = max(limited, key=used)
        return f"{_money(tightest.usd)}/{_money(tightest.limit_usd or '0')} {tightest.window}"
    if spend:
        widest = max(spend, key=lambda w: WINDOWS.index(w.window))
        return f"{_money(widest.usd)} {widest.window}"
    return None


def pods_summary(pods: PodsStatus | None) -> str | None:
    """The pods column: ``reporting/injected``."""
    if pods is None:
        return None
    return f"{pods.reporting}/{pods.injected}"


def summarize(status: PolicyStatus) -> StatusSummary:
    """The ``summary`` strings derived from the rest of ``status``."""
    return StatusSummary(spend=spend_summary(status.spend), pods=pods_summary(status.pods))
