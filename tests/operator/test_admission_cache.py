"""The webhook's cache of namespace labels and policies, against the real API server: it follows
every change, and an admission it can answer makes no API request (at 1,000 policies the two live
reads per pod were most of the webhook's latency: bench/operator_bench.py); what it cannot vouch
for is decided again from live reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from openai_policy_operator import names
from openai_policy_operator.admission_cache import AdmissionCache
from openai_policy_operator.config import OperatorSettings
from openai_policy_operator.kube import Kube
from openai_policy_operator.webhook import INJECT, SKIP, Admission
from tests.operator.cluster import apply_policy, wait_for

ENABLED = {names.NAMESPACE_INJECTION_LABEL: names.NAMESPACE_INJECTION_ENABLED}


class CountingKube(Kube):
    """The operator's API client, counting the reads an admission makes."""

    reads = 0

    async def namespace_labels(self, name: str) -> dict[str, str]:
        self.reads += 1
        return await super().namespace_labels(name)

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        self.reads += 1
        return await super().list_policies(namespace)


def kube_for(control_plane) -> CountingKube:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.kubeconfig), client_configuration=configuration)
    return CountingKube(client.ApiClient(configuration))


@pytest.fixture
def kube(control_plane) -> Iterator[CountingKube]:
    kube = kube_for(control_plane)
    yield kube
    kube.close()


@pytest.fixture
def cache(kube, crd) -> Iterator[AdmissionCache]:
    cache = AdmissionCache(kube)
    cache.start()
    try:
        wait_for(lambda: cache.synced, 30, 0.05, "the cache to list namespaces and policies")
        yield cache
    finally:
        cache.stop()


def names_in(cache: AdmissionCache, namespace: str) -> list[str]:
    view = cache.view(namespace)
    return sorted(p["metadata"]["name"] for p in view[1]) if view else []


def pod(app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{app}-1", "labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }


def test_the_cache_follows_labels_and_policies(control_plane, cache):
    namespace = control_plane.create_namespace("cache-follows")
    wait_for(lambda: cache.view(namespace) == ({"kubernetes.io/metadata.name": namespace}, []), 10)
    control_plane.kubectl("label", "namespace", namespace, f"{names.NAMESPACE_INJECTION_LABEL}=enabled")
    wait_for(
        lambda: (cache.view(namespace) or ({},))[0].get(names.NAMESPACE_INJECTION_LABEL) == "enabled", 10
    )

    web = {"selector": {"matchLabels": {"app": "web"}}, "apiKey": {"secretRef": {"name": "web-key"}}}
    apply_policy(control_plane, namespace, "web", web)
    apply_policy(control_plane, namespace, "batch", {"selector": {"matchLabels": {"app": "batch"}}})
    wait_for(lambda: names_in(cache, namespace) == ["batch", "web"], 10, what="both policies cached")
    kept = next(p for p in cache.view(namespace)[1] if p["metadata"]["name"] == "web")
    # Only what the decision reads: no status, no managedFields, no annotations (the spec as stored,
    # with the CRD's defaults).
    assert set(kept) == {"metadata", "spec"} and kept["metadata"] == {"name": "web", "namespace": namespace}
    assert (
        kept["spec"]["selector"]["matchLabels"] == {"app": "web"}
        and kept["spec"]["apiKey"]["secretRef"]["name"] == "web-key"
    )

    apply_policy(control_plane, namespace, "web", {**web, "selector": {"matchLabels": {"app": "shop"}}})
    wait_for(
        lambda: any(p["spec"]["selector"]["matchLabels"]["app"] == "shop" for p in cache.view(namespace)[1]),
        10,
        what="the new selector",
    )
    control_plane.kubectl("delete", names.PLURAL, "batch", "-n", namespace)
    wait_for(lambda: names_in(cache, namespace) == ["web"], 10, what="the deletion")
    control_plane.kubectl("label", "namespace", namespace, f"{names.NAMESPACE_INJECTION_LABEL}-")
    wait_for(lambda: names.NAMESPACE_INJECTION_LABEL not in cache.view(namespace)[0], 10)
    control_plane.delete_namespace(namespace)


async def test_an_injection_from_the_cache_reads_nothing_live(control_plane, kube, cache):
    namespace = control_plane.create_namespace("cache-admits", labels=ENABLED)
    apply_policy(control_plane, namespace, "web", {"selector": {"matchLabels": {"app": "web"}}})
    wait_for(lambda: names_in(cache, namespace) == ["web"], 10, what="the policy cached")
    admission = Admission(kube, OperatorSettings(), cache)

    decision, result = await admission.review(pod("web"), namespace, dry_run=True)
    assert decision.action == INJECT and decision.policy_name == "web" and result.changed
    assert kube.reads == 0

    # Nothing selects this pod: a negative answer is never taken from the cache alone.
    decision, _ = await admission.review(pod("other"), namespace, dry_run=True)
    assert (decision.action, decision.reason) == (SKIP, "NoMatchingPolicy")
    assert kube.reads == 2
    control_plane.delete_namespace(namespace)


async def test_a_cache_that_has_not_seen_a_policy_yet_costs_only_the_slow_path(control_plane, kube, cache):
    namespace = control_plane.create_namespace("cache-behind", labels=ENABLED)
    wait_for(lambda: cache.view(namespace) is not None, 10)
    cache.stop()  # frozen: whatever happens next, the cache does not see it
    apply_policy(control_plane, namespace, "late", {"selector": {"matchLabels": {"app": "web"}}})
    assert names_in(cache, namespace) == []
    admission = Admission(kube, OperatorSettings(), cache)
    decision, result = await admission.review(pod("web"), namespace, dry_run=True)
    assert decision.action == INJECT and decision.policy_name == "late" and result.changed
    assert kube.reads == 2
    # An unsynced cache (never started) answers nothing at all.
    unsynced = Admission(kube, OperatorSettings(), AdmissionCache(kube))
    decision, _ = await unsynced.review(pod("web"), namespace, dry_run=True)
    assert decision.action == INJECT and kube.reads == 4
    control_plane.delete_namespace(namespace)
