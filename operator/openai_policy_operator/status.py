"""The policy's status from the field: pure aggregation and conditions (no I/O here).

Inputs are what :class:`~.field_reports.StatusReader` read (usage counters, heartbeats and per-window spend from the state
store, the number of injected pods from the API) plus the reconcile outcome; the output is the new
``status`` mapping and the condition transitions to announce as Events. The caller patches the
status only when :func:`status_changed` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from openai_policy_api import OpenAIPolicy
from openai_policy_api.base import StatusModel
from openai_policy_api.status import (
    BUDGET_ALERT,
    BUDGET_EXCEEDED,
    CONDITION_TYPES,
    ENFORCED,
    READY,
    SUSPENDED,
    GenerationCount,
    PodsStatus,
    Spender,
    StatusSummary,
    UsageStatus,
    WindowSpend,
    pods_summary,
    spend_summary,
)
from openai_policy_store import BucketSpend, UsageCounts
from openai_policy_store.money import micros_to_usd

# The status value of each condition that needs a person's attention (announced as a Warning).
_ABNORMAL = {
    READY: "False",
    ENFORCED: "False",
    BUDGET_ALERT: "True",
    BUDGET_EXCEEDED: "True",
    SUSPENDED: "True",
}


@dataclass(frozen=True)
class ReadyState:
    """The reconcile outcome: Ready, or why not (reason + message a person can act on)."""

    ready: bool
    reason: str
    message: str


@dataclass(frozen=True)
class PolicyFacts:
    """The parts of the policy spec the status depends on."""

    generation: int
    suspended: bool = False
    mode: str = "enforce"
    alert_at_percent: int = 80

    @classmethod
    def of(cls, policy: OpenAIPolicy, generation: int) -> PolicyFacts:
        spec = policy.spec
        return cls(
            generation=generation,
            suspended=bool(spec.suspend),
            mode=str(spec.mode),
            alert_at_percent=int(spec.budget.alert_at_percent),
        )


@dataclass(frozen=True)
class Transition:
    """A condition that changed status: announced as an Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def event_type(self) -> str:
        return "Warning" if _ABNORMAL.get(self.type) == self.status else "Normal"


@dataclass
class StatusReport:
    status: dict[str, Any]
    transitions: list[Transition] = field(default_factory=list)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump(model: StatusModel) -> dict[str, Any]:
    """A status model as written into the resource: camelCase, absent fields left out."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def usage_status(counts: UsageCounts) -> UsageStatus:
    """``status.usage`` from the usage hash's counters, refusals grouped by error code."""
    return UsageStatus(
        requests=counts.requests,
        tokens_input=counts.tokens_input,
        tokens_output=counts.tokens_output,
        tokens_cached=counts.tokens_cached,
        cache_hits=counts.cache_hits,
        saved_usd=micros_to_usd(counts.saved_micros),
        retries=counts.retries,
        errors=counts.errors,
        model_drift=counts.model_drift,
        over_reserved=counts.over_reserved,
        blocked=sum(counts.refused.values()),
        blocked_by_reason=dict(sorted(counts.refused.items())),
        would_block=sum(counts.dry_run_refused.values()),
        would_block_by_reason=dict(sorted(counts.dry_run_refused.items())),
    )


# (kind "users" or "features", window) -> [(name, micro-dollars)...], highest first
Spenders = Mapping[tuple[str, str], Sequence[tuple[str, int]]]


def window_spend(spend: BucketSpend, spenders: Spenders | None = None) -> WindowSpend:
    """One window's entry of ``status.spend``: where the store's record becomes the status shape."""
    spenders = spenders or {}

    def top(kind: str) -> list[Spender] | None:  # absent rather than empty: a short status
        named = spenders.get((kind, spend.window), ())
        return [Spender(name=name, usd=micros_to_usd(micros)) for name, micros in named] or None

    entry = WindowSpend(
        window=spend.window,
        bucket=spend.bucket,
        start=spend.start,
        end=spend.end,
        usd=micros_to_usd(spend.spent_micros),
        top_users=top("users"),
        top_features=top("features"),
    )
    if spend.limit_micros:
        entry.limit_usd = micros_to_usd(spend.limit_micros)
        # What is left of the limit after settled spend (calls in flight are not spend yet).
        entry.remaining_usd = micros_to_usd(max(0, spend.limit_micros - spend.spent_micros))
        entry.percent = spend.percent
    return entry


@dataclass(frozen=True)
class PodFigures:
    injected: int
    reporting: int
    enforcing: int
    stale_generation: int
    key_missing: int
    errors: list[str]
    last_report: float | None
    generations: dict[int, int]
    untrusted: list[str] = field(default_factory=list)  # pods that refused an unsigned/forged document


def pod_figures(
    heartbeats: Mapping[str, Mapping[str, Any]],
    injected: int,
    facts: PolicyFacts,
    now: float,
    stale_after: float,
) -> PodFigures:
    """Which reporting pods run the current generation with their key loaded."""
    reporting = stale = key_missing = enforcing = 0
    errors: list[str] = []
    untrusted: list[str] = []
    last: float | None = None
    generations: dict[int, int] = {}
    for pod, beat in sorted(heartbeats.items()):
        when = _number(beat.get("time"))
        if when is not None:
            last = when if last is None else max(last, when)
        if when is None or now - when > stale_after:
            continue
        reporting += 1
        generation = int(_number(beat.get("generation")) or 0)
        generations[generation] = generations.get(generation, 0) + 1
        current = generation == facts.generation
        key_loaded = bool(beat.get("keyLoaded", True))
        stale += not current
        key_missing += not key_loaded
        if beat.get("lastError"):
            errors.append(f"{pod}: {beat['lastError']}")
        if beat.get("untrustedDocument"):
            untrusted.append(f"{pod}: {beat['untrustedDocument']}")
        enforcing += current and key_loaded
    return PodFigures(
        max(injected, reporting),
        reporting,
        enforcing,
        stale,
        key_missing,
        errors,
        last,
        generations,
        untrusted,
    )


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _enforced(facts: PolicyFacts, pods: PodFigures) -> tuple[str, str, str]:
    if facts.suspended:
        return "False", "Suspended", "the policy is suspended: sidecars refuse every call"
    if pods.reporting == 0:
        return "False", "NoPodsReporting", f"{pods.injected} pod(s) injected, none reporting"
    if pods.key_missing:
        return (
            "False",
            "KeyNotLoaded",
            f"{pods.key_missing} of {pods.reporting} pod(s) could not load the API key",
        )
    if pods.untrusted:
        # Someone wrote a policy document the operator did not sign (into the ConfigMap or the store);
        # the pods refused it and keep their last good policy, but the platform team must hear of it.
        return (
            "False",
            "UntrustedPolicyDocument",
            f"{len(pods.untrusted)} of {pods.reporting} pod(s) refused a policy document not signed by "
            f"the operator and keep their last good policy: " + "; ".join(pods.untrusted[:3]),
        )
    if pods.stale_generation:
        return (
            "False",
            "PodsNotCurrent",
            f"{pods.stale_generation} of {pods.reporting} pod(s) still run an older generation than "
            f"{facts.generation}",
        )
    if facts.mode == "dryRun":
        return "False", "DryRun", f"{pods.reporting} pod(s) report decisions in dry-run mode without blocking"
    return "True", "Enforcing", f"{pods.enforcing} pod(s) enforce generation {facts.generation}"


@dataclass(frozen=True)
class BudgetRefusals:
    """Whether sidecars refuse calls for budget although settled spend is still under the limit.

    A sidecar reserves a call's worst-case cost before making it, so it starts refusing
    (``budget_exceeded``) once the *next* call cannot fit: settled spend may stay just below the
    limit for the rest of the window. The operator sees this as the ``budget_exceeded`` refusal
    counter growing, and keeps the condition until the window's bucket rolls over or the policy
    changes (the refusals say nothing about a new bucket or a new limit).
    """

    refusing_now: bool = False  # the counter grew since the last report
    sticky_buckets: frozenset[tuple[str, str]] = frozenset()  # (window, bucket) already marked exceeded

    @classmethod
    def observe(cls, previous: Mapping[str, Any], usage: UsageCounts, generation: int) -> BudgetRefusals:
        before_usage = previous.get("usage") or {}
        refusing = False
        if before_usage:  # no previous report: no baseline to compare with (e.g. a re-created policy)
            before = int((before_usage.get("blockedByReason") or {}).get("budget_exceeded", 0))
            refusing = usage.refused["budget_exceeded"] > before
        old = next((c for c in previous.get("conditions") or [] if c.get("type") == BUDGET_EXCEEDED), None)
        sticky: frozenset[tuple[str, str]] = frozenset()
        if old and old.get("status") == "True" and old.get("observedGeneration") == generation:
            sticky = frozenset(
                (str(w.get("window")), str(w.get("bucket")))
                for w in previous.get("spend") or []
                if w.get("limitUsd")
            )
        return cls(refusing, sticky)


def _budget(
    facts: PolicyFacts, windows: Sequence[BucketSpend], refusals: BudgetRefusals = BudgetRefusals()
) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    limited = [w for w in windows if w.limit_micros]
    if not limited:
        none = ("False", "NoBudget", "no budget limits are set")
        return none, none
    exceeded = [w for w in limited if w.spent_micros >= (w.limit_micros or 0)]
    alerting = [w for w in limited if w.spent_micros * 100 >= facts.alert_at_percent * (w.limit_micros or 0)]
    tightest = max(limited, key=lambda w: Fraction(w.spent_micros, w.limit_micros or 1))
    refusing = refusals.refusing_now or (tightest.window, tightest.bucket) in refusals.sticky_buckets

    def describe(ws: Sequence[BucketSpend]) -> str:
        return "; ".join(
            f"{w.window} {w.bucket}: ${micros_to_usd(w.spent_micros)} of "
            f"${micros_to_usd(w.limit_micros or 0)} ({w.percent}%)"
            for w in ws
        )

    if exceeded:
        exceeded_c = (
            "True",
            "LimitReached",
            f"{describe(exceeded)}; calls are refused until the window rolls over",
        )
    elif refusing:
        exceeded_c = (
            "True",
            "LimitReached",
            f"{describe([tightest])}; calls are refused (budget_exceeded): the next call's worst-case "
            "cost does not fit in what is left, until the window rolls over",
        )
    else:
        exceeded_c = ("False", "WithinBudget", describe(limited))
    if alerting:
        alert_c = (
            "True",
            "AlertThresholdReached",
            f"{describe(alerting)} (alert at {facts.alert_at_percent}%)",
        )
    else:
        alert_c = ("False", "WithinBudget", describe(limited))
    return alert_c, exceeded_c


def conditions_for(
    facts: PolicyFacts,
    ready: ReadyState,
    pods: PodFigures,
    windows: Sequence[BucketSpend],
    refusals: BudgetRefusals = BudgetRefusals(),
) -> dict[str, tuple[str, str, str]]:
    """Each condition type -> (status, reason, message)."""
    alert, exceeded = _budget(facts, windows, refusals)
    return {
        READY: ("True" if ready.ready else "False", ready.reason, ready.message),
        ENFORCED: _enforced(facts, pods),
        BUDGET_ALERT: alert,
        BUDGET_EXCEEDED: exceeded,
        SUSPENDED: ("True", "SuspendedBySpec", "spec.suspend is true: every call is refused")
        if facts.suspended
        else ("False", "Active", "the policy is active"),
    }


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    wanted: Mapping[str, tuple[str, str, str]],
    generation: int,
    now: float,
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """metav1.Condition list: lastTransitionTime moves only when the status changes.

    A transition is announced when a known condition changes status, or when a condition first
    appears already needing attention (e.g. a policy created over an exhausted budget).
    """
    before = {c.get("type"): c for c in previous or []}
    out: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for ctype in CONDITION_TYPES:
        status, reason, message = wanted[ctype]
        old = before.get(ctype)
        changed = old is None or old.get("status") != status
        since = rfc3339(now) if old is None or changed else old.get("lastTransitionTime", rfc3339(now))
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        )
        if (old is not None and changed) or (old is None and _ABNORMAL[ctype] == status):
            transitions.append(Transition(ctype, status, reason, message))
    return out, transitions


def build_status(
    *,
    facts: PolicyFacts,
    ready: ReadyState,
    usage: Mapping[str, int],
    heartbeats: Mapping[str, Mapping[str, Any]],
    windows: Sequence[BucketSpend],
    injected_pods: int,
    previous: Mapping[str, Any] | None,
    now: float,
    stale_after: float = 30.0,
    spenders: Spenders | None = None,
) -> StatusReport:
    """The whole status subresource for one policy and the condition transitions to announce."""
    previous = previous or {}
    counts = UsageCounts.from_fields(usage)
    pods = pod_figures(heartbeats, injected_pods, facts, now, stale_after)
    refusals = BudgetRefusals.observe(previous, counts, facts.generation)
    conditions, transitions = merge_conditions(
        previous.get("conditions") or [],
        conditions_for(facts, ready, pods, windows, refusals),
        facts.generation,
        now,
    )
    spend = [window_spend(w, spenders) for w in windows]
    pods_status = PodsStatus(
        injected=pods.injected,
        reporting=pods.reporting,
        up_to_date=pods.reporting - pods.stale_generation,
        generations=[GenerationCount(generation=g, pods=n) for g, n in sorted(pods.generations.items())],
    )
    status: dict[str, Any] = {
        "observedGeneration": facts.generation,
        "conditions": conditions,
        "pods": _dump(pods_status),
        "spend": [_dump(w) for w in spend],
        "usage": _dump(usage_status(counts)),
        "summary": _dump(StatusSummary(spend=spend_summary(spend), pods=pods_summary(pods_status))),
    }
    if pods.last_report is not None:
        status["lastReportTime"] = rfc3339(pods.last_report)
    elif previous.get("lastReportTime"):
        status["lastReportTime"] = previous["lastReportTime"]  # heartbeats expired from the store
    return StatusReport(status, transitions)


def comparable(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status without fields the operator does not own (kopf's bookkeeping, for example)."""
    keys = ("observedGeneration", "conditions", "pods", "spend", "usage", "summary", "lastReportTime")
    return {k: status[k] for k in keys if status and k in status}


def status_changed(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return comparable(previous) != comparable(new)


def merge_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge-patch turning ``previous`` into ``new`` for the keys this module owns:
    keys that disappeared are set to None (a merge-patch otherwise keeps them)."""
    out: dict[str, Any] = dict(new)
    for key, old in (previous or {}).items():
        if key not in new:
            out[key] = None
        elif isinstance(old, Mapping) and isinstance(new[key], Mapping):
            out[key] = merge_patch(old, new[key])
    return out
