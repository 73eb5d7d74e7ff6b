"""Reconciling one policy with fakes around it: the outcomes that become the Ready condition."""

from __future__ import annotations

from typing import Any

import pytest

from openai_policy_operator.kube import ApiException
from openai_policy_operator.reconcile import Reconciler
from openai_policy_operator.selectors import PolicySummary
from openai_policy_store import MemoryStore


class FakeKube:
    def __init__(self, fail: int | None = None) -> None:
        self.applied: list[dict[str, Any]] = []
        self.fail = fail

    async def apply_configmap(self, body: dict[str, Any]) -> None:
        if self.fail:
            raise ApiException(status=self.fail, reason="Forbidden")
        self.applied.append(body)


class DownStore:
    async def get_policy_document(self, ref: tuple[str, str]) -> None:
        raise ConnectionError("redis is down")

    async def publish_policy_document(self, ref: tuple[str, str], document: dict[str, Any]) -> None:
        raise ConnectionError("redis is down")


def body(
    name: str = "p", generation: int = 1, spec: dict | None = None, created: str = "2026-11-22T10:00:00Z"
):
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {
            "name": name,
            "namespace": "apps",
            "uid": f"uid-{name}",
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": spec if spec is not None else {"selector": {"matchLabels": {"app": "web"}}},
    }


async def test_ready_renders_and_publishes_once_per_generation():
    kube, store = FakeKube(), MemoryStore()
    reconciler = Reconciler(kube, store)
    outcome = await reconciler.reconcile(body(), [])
    assert outcome.ready.ready and outcome.ready.reason == "Reconciled"
    assert (await store.get_policy_document(("apps", "p")))["metadata"]["generation"] == 1
    await reconciler.reconcile(body(), [])  # the timer: nothing new
    assert len(kube.applied) == 1
    await reconciler.reconcile(body(generation=2), [])
    assert len(kube.applied) == 2
    assert (await store.get_policy_document(("apps", "p")))["metadata"]["generation"] == 2


async def test_configmap_is_resynced_after_a_while():
    kube = FakeKube()
    reconciler = Reconciler(kube, None, resync_seconds=0)
    await reconciler.reconcile(body(), [])
    await reconciler.reconcile(body(), [])
    assert len(kube.applied) == 2


async def test_invalid_policy():
    outcome = await Reconciler(FakeKube(), None).reconcile(
        body(spec={"budget": {"limits": [{"window": "day", "usd": -1}]}}), []
    )
    assert not outcome.ready.ready and outcome.ready.reason == "InvalidPolicy"
    assert "spec.budget.limits[0].usd" in outcome.ready.message


async def test_configmap_failure_is_a_condition_not_an_exception():
    outcome = await Reconciler(FakeKube(fail=403), None).reconcile(body(), [])
    assert (outcome.ready.ready, outcome.ready.reason) == (False, "ConfigMapFailed")
    assert "403" in outcome.ready.message


async def test_store_down_is_publish_failed():
    outcome = await Reconciler(FakeKube(), DownStore()).reconcile(body(), [])
    assert (outcome.ready.ready, outcome.ready.reason) == (False, "PublishFailed")


@pytest.mark.parametrize(
    ("created", "conflict"), [("2026-11-22T11:00:00Z", True), ("2026-11-22T09:00:00Z", False)]
)
async def test_selector_conflict_only_for_the_newer(created, conflict):
    older = PolicySummary("old", "2026-11-22T10:00:00Z", {})
    outcome = await Reconciler(FakeKube(), None).reconcile(body(created=created), [older])
    assert (outcome.ready.reason == "SelectorConflict") is conflict
