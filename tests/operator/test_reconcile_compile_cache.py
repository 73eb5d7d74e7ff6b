"""The reconciler compiles a policy (validation, document, ConfigMap) once per uid, generation and
spec: the status timer reconciles every policy every few seconds, and at 1,000 policies compiling
again on each tick was most of the operator's CPU (bench/operator_bench.py)."""

from __future__ import annotations

from typing import Any

import pytest

from openai_policy_operator import names, reconcile
from openai_policy_operator.reconcile import Reconciler
from openai_policy_store import MemoryStore


class RecordingKube:
    def __init__(self) -> None:
        self.applied: list[dict[str, Any]] = []

    async def apply_configmap(self, body: dict[str, Any]) -> None:
        self.applied.append(body)


def policy(uid: str = "uid-1", generation: int = 1, rpm: int = 60) -> dict[str, Any]:
    return {
        "apiVersion": "openaipolicy.dev/v1alpha1",
        "kind": "OpenAIPolicy",
        "metadata": {
            "name": "p",
            "namespace": "apps",
            "uid": uid,
            "generation": generation,
            "creationTimestamp": "2026-11-30T07:00:00Z",
        },
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "rateLimits": {"requestsPerMinute": rpm}},
    }


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every spec the reconciler validates (reconcile.load_policy, counted)."""
    seen: list[dict[str, Any]] = []
    real = reconcile.load_policy

    def counting(source: Any) -> Any:
        seen.append(source["spec"])
        return real(source)

    monkeypatch.setattr(reconcile, "load_policy", counting)
    return seen


async def test_timer_ticks_reuse_the_compiled_policy(compilations):
    kube = RecordingKube()
    reconciler = Reconciler(kube, MemoryStore(), resync_seconds=0)  # every tick re-applies the ConfigMap
    first = await reconciler.reconcile(policy(), [], force=True)
    for _ in range(5):
        outcome = await reconciler.reconcile(policy(), [])
        assert outcome.ready.ready and outcome.policy is first.policy
    assert len(compilations) == 1
    assert len(kube.applied) == 6 and all(cm == kube.applied[0] for cm in kube.applied)


async def test_a_new_generation_a_changed_spec_or_a_new_uid_compile_again(compilations):
    kube = RecordingKube()
    reconciler = Reconciler(kube, MemoryStore())
    await reconciler.reconcile(policy(), [], force=True)
    # Generation 2: the new spec reaches the store and the ConfigMap.
    outcome = await reconciler.reconcile(policy(generation=2, rpm=120), [], force=True)
    assert outcome.policy is not None and outcome.policy.spec.rate_limits.requests_per_minute == 120
    assert kube.applied[-1]["metadata"]["annotations"][names.GENERATION_ANNOTATION] == "2"
    # The same generation with another spec (a body not from the API server): never the stale one.
    outcome = await reconciler.reconcile(policy(generation=2, rpm=30), [], force=True)
    assert outcome.policy is not None and outcome.policy.spec.rate_limits.requests_per_minute == 30
    # Deleted and re-created under the same name: the ConfigMap is owned by the new uid.
    await reconciler.reconcile(policy(uid="uid-2", generation=1, rpm=30), [], force=True)
    assert kube.applied[-1]["metadata"]["ownerReferences"][0]["uid"] == "uid-2"
    assert len(compilations) == 4


async def test_a_spec_changed_in_place_after_compiling_is_seen(compilations):
    reconciler = Reconciler(RecordingKube(), MemoryStore())
    body = policy()
    await reconciler.reconcile(body, [], force=True)
    body["spec"]["rateLimits"]["requestsPerMinute"] = 5  # the cache holds a copy, not the caller's dict
    outcome = await reconciler.reconcile(body, [])
    assert outcome.policy is not None and outcome.policy.spec.rate_limits.requests_per_minute == 5
    assert len(compilations) == 2


async def test_forget_drops_the_compiled_policy(compilations):
    reconciler = Reconciler(RecordingKube(), MemoryStore())
    await reconciler.reconcile(policy(), [], force=True)
    reconciler.forget(("apps", "p"))
    await reconciler.reconcile(policy(), [], force=True)
    assert len(compilations) == 2
