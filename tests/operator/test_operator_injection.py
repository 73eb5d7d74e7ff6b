"""The injection patch: a pure function, tested without a cluster."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from openai_policy_operator import names
from openai_policy_operator.config import InjectionSettings
from openai_policy_operator.sidecar_injection import (
    InjectionTarget,
    injection_patch,
    is_injected,
    workload_name,
)

SETTINGS = InjectionSettings(sidecar_image="sidecar:test", redis_url="redis://127.0.0.1:6379/0")
TARGET = InjectionTarget(policy_name="team-a", secret_name="openai-key", secret_key="token")


def pod(**spec_extra) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8b6c4-",
            "namespace": "apps",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c4"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9f8b6c4",
                    "uid": "u1",
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec_extra},
    }


def applied(p: dict, target: InjectionTarget = TARGET, settings: InjectionSettings = SETTINGS) -> dict:
    result = injection_patch(p, target, settings)
    return jsonpatch.apply_patch(p, result.patch)


def sidecar_of(p: dict) -> dict:
    return next(c for c in p["spec"]["initContainers"] if c["name"] == names.SIDECAR_NAME)


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_native_sidecar_with_startup_probe_and_args():
    out = applied(pod())
    sidecar = out["spec"]["initContainers"][0]
    assert sidecar["name"] == names.SIDECAR_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8781}
    assert sidecar["args"] == [
        "--policy",
        "/etc/openai-policy/policy.yaml",
        "--listen",
        "127.0.0.1:8780",
        "--admin-listen",
        "0.0.0.0:8781",
        "--api-key-file",
        "/var/run/secrets/openai-policy/token",
        "--redis-url",
        "redis://127.0.0.1:6379/0",
    ]
    assert sidecar["image"] == "sidecar:test"
    assert out["metadata"]["annotations"][names.INJECTED_ANNOTATION] == "team-a"


def test_hardened_security_context_and_default_resources():
    sc = sidecar_of(applied(pod()))["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    resources = sidecar_of(applied(pod()))["resources"]
    assert resources["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert resources["limits"] == {"memory": "256Mi"}


def test_attribution_env_from_downward_api():
    env = env_of(sidecar_of(applied(pod())))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["OPENAI_POLICY_WORKLOAD"] == "web"


def test_secret_mounted_into_the_sidecar_only():
    out = applied(pod(), settings=SETTINGS)
    volumes = {v["name"]: v for v in out["spec"]["volumes"]}
    assert volumes[names.API_KEY_VOLUME]["secret"]["secretName"] == "openai-key"
    assert volumes[names.POLICY_VOLUME]["configMap"]["name"] == "team-a-policy"
    assert any(m["name"] == names.API_KEY_VOLUME for m in sidecar_of(out)["volumeMounts"])
    for container in out["spec"]["containers"]:
        assert all(m["name"] != names.API_KEY_VOLUME for m in container.get("volumeMounts", []))


def test_app_containers_get_base_url_and_placeholder_key():
    p = pod()
    p["spec"]["containers"].append({"name": "worker", "image": "w:1", "env": [{"name": "X", "value": "1"}]})
    out = applied(p)
    for container in out["spec"]["containers"]:
        env = env_of(container)
        assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8780/v1"
        assert env["OPENAI_API_KEY"] == names.PLACEHOLDER_API_KEY
    assert env_of(out["spec"]["containers"][1])["X"] == "1"


def test_own_key_is_replaced_and_reported():
    p = pod()
    p["spec"]["containers"][0]["env"] = [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "mine", "key": "k"}}},
        {"name": "OTHER", "value": "kept"},
    ]
    result = injection_patch(p, TARGET, SETTINGS)
    assert result.replaced_key_env == ["app"]
    out = jsonpatch.apply_patch(p, result.patch)
    env = out["spec"]["containers"][0]["env"]
    assert {"name": "OPENAI_API_KEY", "value": names.PLACEHOLDER_API_KEY} in env
    assert [e["name"] for e in env].count("OPENAI_API_KEY") == 1
    assert {"name": "OTHER", "value": "kept"} in env


def test_existing_init_containers_volumes_and_annotations_are_kept():
    p = pod(initContainers=[{"name": "migrate", "image": "m:1"}], volumes=[{"name": "data", "emptyDir": {}}])
    p["metadata"]["annotations"] = {"a/b": "c"}
    out = applied(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == [names.SIDECAR_NAME, "migrate"]
    assert out["spec"]["volumes"][0]["name"] == "data"
    assert out["metadata"]["annotations"] == {"a/b": "c", names.INJECTED_ANNOTATION: "team-a"}


def test_inject_twice_is_a_no_op():
    once = applied(pod())
    assert is_injected(once)
    result = injection_patch(copy.deepcopy(once), TARGET, SETTINGS)
    assert result.patch == [] and not result.changed


def test_input_is_not_mutated():
    p = pod()
    before = copy.deepcopy(p)
    injection_patch(p, TARGET, SETTINGS)
    assert p == before


def test_policy_without_key_and_without_redis():
    out = applied(pod(), InjectionTarget(policy_name="open"), InjectionSettings())
    sidecar = sidecar_of(out)
    assert sidecar["args"] == [
        "--policy",
        "/etc/openai-policy/policy.yaml",
        "--listen",
        "127.0.0.1:8780",
        "--admin-listen",
        "0.0.0.0:8781",
    ]
    assert all(v["name"] != names.API_KEY_VOLUME for v in out["spec"]["volumes"])


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"name": "solo"}, "solo"),
        ({"generateName": "batch-"}, "batch"),
        (
            {"name": "j-abc", "ownerReferences": [{"kind": "Job", "name": "nightly", "controller": True}]},
            "nightly",
        ),
        ({"ownerReferences": [{"kind": "ReplicaSet", "name": "api-5f6d7c8b9d", "controller": True}]}, "api"),
    ],
)
def test_workload_name(meta, expected):
    assert workload_name({"metadata": meta}) == expected
