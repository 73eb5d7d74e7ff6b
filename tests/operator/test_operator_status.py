"""Status aggregation and conditions: pure functions over what the sidecars reported."""

from __future__ import annotations

from openai_policy_operator.status import (
    PolicyFacts,
    ReadyState,
    build_status,
    merge_patch,
    rfc3339,
    status_changed,
)
from openai_policy_store import BucketSpend

NOW = 1_800_000_000.0
READY = ReadyState(True, "Reconciled", "ok")
FACTS = PolicyFacts(generation=3, alert_at_percent=80)


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def beat(generation: int = 3, age: float = 1.0, **extra) -> dict:
    return {
        "generation": generation,
        "keyLoaded": True,
        "lastError": None,
        "time": NOW - age,
        "mode": "enforce",
        **extra,
    }


def report(facts=FACTS, ready=READY, usage=None, heartbeats=None, windows=(), injected=0, previous=None):
    return build_status(
        facts=facts,
        ready=ready,
        usage=usage or {},
        heartbeats=heartbeats or {},
        windows=list(windows),
        injected_pods=injected,
        previous=previous,
        now=NOW,
    )


def test_usage_counters_and_refusals_by_reason():
    status = report(
        usage={
            "requests": 10,
            "tokens_input": 100,
            "tokens_output": 50,
            "tokens_cached": 5,
            "cache_hits": 2,
            "errors": 1,
            "model_drift": 1,
            "cost_micros": 1234,
            "refused:budget_exceeded": 3,
            "refused:rate_limit_exceeded": 1,
            "dryrun_refused:pii_detected": 2,
        }
    ).status
    usage = status["usage"]
    assert usage["requests"] == 10 and usage["tokensInput"] == 100 and usage["tokensOutput"] == 50
    assert usage["tokensCached"] == 5 and usage["cacheHits"] == 2 and usage["errors"] == 1
    assert usage["modelDrift"] == 1
    assert usage["blocked"] == 4
    assert usage["blockedByReason"] == {"budget_exceeded": 3, "rate_limit_exceeded": 1}
    assert usage["wouldBlock"] == 2 and usage["wouldBlockByReason"] == {"pii_detected": 2}


def test_retries_and_cache_savings_are_reported():
    usage = report(usage={"retries": 4, "cache_hits": 3, "saved_micros": 1_250_000}).status["usage"]
    assert usage["retries"] == 4 and usage["cacheHits"] == 3 and usage["savedUsd"] == "1.25"


def test_spend_per_window_in_decimal_strings():
    status = report(
        windows=[
            BucketSpend(
                "day", "2026-11-22", spent_micros=2_500_000, reserved_micros=100_000, limit_micros=10_000_000
            ),
            BucketSpend("month", "2026-11", spent_micros=7_000_000),
        ]
    ).status
    day, month = status["spend"]
    assert day == {
        "window": "day",
        "bucket": "2026-11-22",
        "usd": "2.50",
        "limitUsd": "10.00",
        "remainingUsd": "7.50",
        "percent": 25,
    }
    assert month == {"window": "month", "bucket": "2026-11", "usd": "7.00"}
    assert status["summary"]["spend"] == "$2.50/$10.00 day"


def test_pods_reporting_and_generations():
    beats = {"p1": beat(), "p2": beat(generation=2), "p3": beat(age=600)}
    status = report(heartbeats=beats, injected=3).status
    assert status["pods"] == {
        "injected": 3,
        "reporting": 2,
        "upToDate": 1,
        "generations": [{"generation": 2, "pods": 1}, {"generation": 3, "pods": 1}],
    }
    assert conditions(status)["Enforced"]["status"] == "False"
    assert conditions(status)["Enforced"]["reason"] == "PodsNotCurrent"
    assert status["lastReportTime"] == rfc3339(NOW - 1.0)


def test_enforced_when_all_reporting_pods_are_current():
    status = report(heartbeats={"p1": beat(), "p2": beat()}, injected=2).status
    enforced = conditions(status)["Enforced"]
    assert enforced["status"] == "True" and enforced["reason"] == "Enforcing"
    assert status["summary"]["pods"] == "2/2"


def test_enforced_false_without_pods_in_dry_run_or_without_key():
    assert conditions(report().status)["Enforced"]["reason"] == "NoPodsReporting"
    dry = PolicyFacts(generation=3, mode="dryRun")
    assert conditions(report(facts=dry, heartbeats={"p": beat()}).status)["Enforced"]["reason"] == "DryRun"
    keyless = {"p": beat(keyLoaded=False, lastError="secret not found")}
    assert conditions(report(heartbeats=keyless).status)["Enforced"]["reason"] == "KeyNotLoaded"


def test_budget_alert_and_exceeded():
    limit = 10_000_000
    below = report(windows=[BucketSpend("day", "d", spent_micros=7_900_000, limit_micros=limit)]).status
    assert conditions(below)["BudgetAlert"]["status"] == "False"
    alert = report(
        windows=[BucketSpend("day", "d", spent_micros=8_000_000, limit_micros=limit)], previous=below
    )
    assert conditions(alert.status)["BudgetAlert"]["status"] == "True"
    assert conditions(alert.status)["BudgetExceeded"]["status"] == "False"
    assert [(t.type, t.status, t.event_type) for t in alert.transitions] == [
        ("BudgetAlert", "True", "Warning")
    ]
    over = report(
        windows=[BucketSpend("day", "d", spent_micros=limit, limit_micros=limit)], previous=alert.status
    )
    exceeded = conditions(over.status)["BudgetExceeded"]
    assert exceeded["status"] == "True" and exceeded["reason"] == "LimitReached"
    assert "$10.00 of $10.00" in exceeded["message"]
    assert [(t.type, t.status) for t in over.transitions] == [("BudgetExceeded", "True")]


def test_no_budget_means_no_alert():
    status = report(windows=[BucketSpend("month", "m", spent_micros=5)]).status
    assert conditions(status)["BudgetAlert"]["reason"] == "NoBudget"


def test_suspended_condition():
    facts = PolicyFacts(generation=3, suspended=True)
    rep = report(facts=facts)
    assert conditions(rep.status)["Suspended"]["status"] == "True"
    assert conditions(rep.status)["Enforced"]["reason"] == "Suspended"
    assert ("Suspended", "True") in [(t.type, t.status) for t in rep.transitions]


def test_ready_false_is_announced_and_transition_time_moves_only_on_change():
    first = report(ready=ReadyState(False, "SelectorConflict", "overlaps old"))
    assert ("Ready", "False", "Warning") in [(t.type, t.status, t.event_type) for t in first.transitions]
    previous = first.status
    previous["conditions"][0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = report(ready=ReadyState(False, "SelectorConflict", "still"), previous=previous)
    assert conditions(again.status)["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert again.transitions == []
    fixed = report(previous=again.status)
    assert conditions(fixed.status)["Ready"]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert [(t.type, t.status, t.event_type) for t in fixed.transitions] == [("Ready", "True", "Normal")]


def test_status_patched_only_when_changed():
    first = report(heartbeats={"p": beat()}).status
    second = report(heartbeats={"p": beat()}, previous=first).status
    assert not status_changed(first, second)
    assert not status_changed({**first, "kopf": {"x": 1}}, second)
    third = report(heartbeats={"p": beat()}, usage={"requests": 1}, previous=second).status
    assert status_changed(second, third)


def test_merge_patch_removes_vanished_keys():
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 2}}) == {
        "a": None,
        "b": {"c": 2, "d": None},
    }


def test_budget_exceeded_when_sidecars_refuse_below_the_limit():
    """Reservations refuse the next call before settled spend reaches the limit: the refusals count."""
    window = BucketSpend("day", "2026-11-22", spent_micros=277_200, limit_micros=300_000)
    first = report(windows=[window], usage={"requests": 5}).status
    assert conditions(first)["BudgetExceeded"]["status"] == "False"
    refusing = report(windows=[window], usage={"requests": 6, "refused:budget_exceeded": 1}, previous=first)
    exceeded = conditions(refusing.status)["BudgetExceeded"]
    assert exceeded["status"] == "True" and exceeded["reason"] == "LimitReached"
    assert "budget_exceeded" in exceeded["message"]
    assert ("BudgetExceeded", "True") in [(t.type, t.status) for t in refusing.transitions]
    # No new call since: still exceeded, as long as the window's bucket is the same.
    quiet = report(
        windows=[window], usage={"requests": 6, "refused:budget_exceeded": 1}, previous=refusing.status
    )
    assert conditions(quiet.status)["BudgetExceeded"]["status"] == "True" and quiet.transitions == []
    # The window rolls over: a new bucket, nothing spent, nothing refused.
    next_day = BucketSpend("day", "2026-11-23", spent_micros=0, limit_micros=300_000)
    rolled = report(
        windows=[next_day], usage={"requests": 6, "refused:budget_exceeded": 1}, previous=quiet.status
    )
    assert conditions(rolled.status)["BudgetExceeded"]["status"] == "False"


def test_refusals_before_any_report_are_not_taken_as_current():
    window = BucketSpend("day", "d", spent_micros=1_000, limit_micros=300_000)
    status = report(windows=[window], usage={"refused:budget_exceeded": 9}).status
    assert conditions(status)["BudgetExceeded"]["status"] == "False"


def test_a_policy_change_re_evaluates_a_sticky_exceeded():
    window = BucketSpend("day", "d", spent_micros=277_200, limit_micros=300_000)
    first = report(windows=[window], usage={"requests": 1}).status
    refusing = report(windows=[window], usage={"refused:budget_exceeded": 1}, previous=first).status
    raised = BucketSpend("day", "d", spent_micros=277_200, limit_micros=1_000_000)
    after = report(
        facts=PolicyFacts(generation=4),
        windows=[raised],
        usage={"refused:budget_exceeded": 1},
        previous=refusing,
    ).status
    assert conditions(after)["BudgetExceeded"]["status"] == "False"
