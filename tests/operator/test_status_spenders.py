"""The operator, against a real API server and Redis, shows each window's start and end (in the
policy's time zone) and the top spenders in the status, and ``kubectl describe`` prints them; an
unknown time zone is refused with a message naming the field."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from openai_policy_api import BudgetSpec
from openai_policy_operator import names
from openai_policy_store import BudgetLedger, RedisStore
from openai_policy_store.windows import bucket_of
from tests.operator.cluster import apply_policy, get_policy, wait_condition, wait_for

BUDGET = {
    "limits": [{"window": "day", "usd": 5}],
    "perUser": [{"window": "day", "usd": 1}],
    "timeZone": "Asia/Kolkata",
}


async def spend_as_sidecars_do(redis_url: str, ref: tuple[str, str]) -> None:
    """What sidecars settle: alice and bob through the search feature, carol without one."""
    store = RedisStore(redis_url)
    try:
        ledger = BudgetLedger(store, ref, BudgetSpec.model_validate(BUDGET))
        for user, feature, micros in (
            ("alice", "search", 300_000),
            ("bob", "search", 120_000),
            ("carol", None, 50_000),
        ):
            await ledger.settle(await ledger.reserve(micros, user=user, feature=feature), micros)
    finally:
        await store.close()


def spend_entry(control_plane, namespace: str, window: str) -> dict | None:
    status = (get_policy(control_plane, namespace, "team") or {}).get("status") or {}
    return next((w for w in status.get("spend") or [] if w.get("window") == window), None)


def test_status_shows_window_bounds_and_top_spenders(control_plane, operator):
    namespace = control_plane.create_namespace("status-spenders")
    apply_policy(
        control_plane, namespace, "team", {"selector": {"matchLabels": {"app": "x"}}, "budget": BUDGET}
    )
    wait_condition(control_plane, namespace, "team", "Ready", "True", 30)
    asyncio.run(spend_as_sidecars_do(operator["redis"].url, (namespace, "team")))

    day = wait_for(
        lambda: (entry := spend_entry(control_plane, namespace, "day")) and entry.get("topUsers") and entry,
        30,
        0.2,
        "the top spenders in status.spend",
    )
    expected = bucket_of("day", None, "Asia/Kolkata")
    assert datetime.fromisoformat(day["start"]) == expected.start
    assert datetime.fromisoformat(day["end"]) == expected.end
    assert day["bucket"] == expected.id and day["bucket"].endswith("+05:30")
    assert day["topUsers"] == [
        {"name": "alice", "usd": "0.30"},
        {"name": "bob", "usd": "0.12"},
        {"name": "carol", "usd": "0.05"},
    ]
    assert day["topFeatures"] == [{"name": "search", "usd": "0.42"}]
    assert day["usd"] == "0.47"
    week = spend_entry(control_plane, namespace, "week")
    assert week is not None and week["topUsers"][0] == {"name": "alice", "usd": "0.30"}

    described = control_plane.kubectl("describe", "oaip", "team", "-n", namespace).stdout
    assert "Top Users" in described and "alice" in described and "Top Features" in described
    assert "Start:" in described and "End:" in described


def test_an_unknown_time_zone_is_refused_naming_the_field(control_plane, operator):
    namespace = control_plane.create_namespace("status-time-zone")
    apply_policy(
        control_plane,
        namespace,
        "team",
        {"selector": {"matchLabels": {"app": "x"}}, "budget": {"timeZone": "Europe/Atlantis"}},
    )
    ready = wait_condition(control_plane, namespace, "team", "Ready", "False", 30)
    assert (
        "budget.timeZone" in ready["message"]
        and "'Europe/Atlantis' is not an IANA time zone" in ready["message"]
    )


def test_the_api_server_refuses_a_per_user_window_given_twice(control_plane, crd):
    namespace = control_plane.create_namespace("status-per-user-cel")
    doc = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "team", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "budget": {"perUser": [{"window": "day", "usd": 1}, {"window": "day", "usd": 2}]},
        },
    }
    refused = control_plane.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert refused.returncode != 0
    assert "each window (hour, day, week, month) may appear at most once in budget.perUser" in refused.stderr
