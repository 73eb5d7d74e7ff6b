"""Spend's second home: the operator's status. When Redis holds less than the status last showed for
the same bucket (a wipe, a restart without persistence), the status reader puts it back (max,
never lower) and the spend shown never goes backwards. Against a real Redis, with the operator's
StatusReader (no control plane needed: it only reads the store and the resource's last status)."""

from __future__ import annotations

from openai_policy_api import load_policy
from openai_policy_operator.field_reports import StatusReader
from openai_policy_operator.rendering import policy_input
from openai_policy_operator.status import ReadyState
from openai_policy_store import BudgetLedger, RedisStore

REF = ("team-a", "chatbot")


def _hour(status: dict) -> dict:
    return next(w for w in status["spend"] if w["window"] == "hour")


async def test_status_spend_never_goes_backwards_and_a_wiped_store_gets_it_back(secured_redis):
    body = {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {"namespace": REF[0], "name": REF[1], "generation": 1},
        "spec": {"budget": {"limits": [{"window": "hour", "usd": 10}]}},
    }
    policy = load_policy(policy_input(body))
    store = RedisStore(secured_redis.admin_url)
    reader = StatusReader(store, stale_after=30)
    ready = ReadyState(True, "Reconciled", "ok")
    try:
        ledger = BudgetLedger(store, REF, policy.spec.budget)
        await ledger.settle(await ledger.reserve(2_000_000), 1_234_567)
        first = await reader.report(body, policy, ready, 0)
        assert _hour(first.status)["usd"] == "1.234567"

        secured_redis.client().flushall()  # every counter gone
        body["status"] = first.status
        second = await reader.report(body, policy, ready, 0)
        assert _hour(second.status)["usd"] == "1.234567", "the status went backwards"
        assert (await store.read_spend(REF))["hour"].spent_micros == 1_234_567, "not restored"

        # Max, never lower, never added twice: later spend counts on top, a second read changes nothing.
        fresh = BudgetLedger(store, REF, policy.spec.budget)
        await fresh.settle(await fresh.reserve(100), 100)
        body["status"] = second.status
        third = await reader.report(body, policy, ready, 0)
        assert _hour(third.status)["usd"] == "1.234667"
        assert (await store.read_spend(REF))["hour"].spent_micros == 1_234_667
    finally:
        await store.close()
