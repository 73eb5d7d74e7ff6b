"""Kube.apply_configmap against the real API server: a ConfigMap this process already wrote is
patched in one request (every resync of every policy used to be a refused create, then a patch),
and one deleted behind its back is created again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config

from openai_policy_operator.kube import Kube


class CountingCore:
    """CoreV1Api's ConfigMap calls, counted on their way to the real API server."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.core, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted


@pytest.fixture
def kube(control_plane) -> Iterator[Kube]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(control_plane.kubeconfig), client_configuration=configuration)
    kube = Kube(client.ApiClient(configuration))
    kube.core = CountingCore(kube.core)  # type: ignore[assignment]
    yield kube
    kube.close()


def configmap(namespace: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "p-policy", "namespace": namespace},
        "data": {"policy.yaml": value},
    }


async def test_a_known_configmap_is_patched_in_one_request(control_plane, namespace, kube):
    await kube.apply_configmap(configmap(namespace, "one"))
    assert kube.core.calls == ["create_namespaced_config_map"]
    await kube.apply_configmap(configmap(namespace, "two"))
    assert kube.core.calls[1:] == ["patch_namespaced_config_map"]
    stored = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/configmaps/p-policy")
    assert stored["data"] == {"policy.yaml": "two"}


async def test_a_configmap_deleted_by_hand_is_created_again(control_plane, namespace, kube):
    await kube.apply_configmap(configmap(namespace, "one"))
    control_plane.api("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/p-policy")
    await kube.apply_configmap(configmap(namespace, "again"))
    assert kube.core.calls[1:] == ["patch_namespaced_config_map", "create_namespaced_config_map"]
    stored = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/configmaps/p-policy")
    assert stored["data"] == {"policy.yaml": "again"}


async def test_one_written_by_an_earlier_process_is_still_taken_over(control_plane, namespace, kube):
    control_plane.api("POST", f"/api/v1/namespaces/{namespace}/configmaps", configmap(namespace, "old"))
    await kube.apply_configmap(configmap(namespace, "new"))
    assert kube.core.calls == ["create_namespaced_config_map", "patch_namespaced_config_map"]
    stored = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/configmaps/p-policy")
    assert stored["data"] == {"policy.yaml": "new"}
