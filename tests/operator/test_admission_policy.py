"""The admission rules as ValidatingAdmissionPolicies, evaluated by the real kube-apiserver.

The policies are rendered by ``openai_policy_operator.admission_policy`` (the chart ships the same
objects) and bound to this module's namespace only (other modules run operators with other
sidecar settings against the same API server). One operator serves injection; the last tests stop
it, and the attacks are refused all the same: the API server evaluates the rules itself.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from openai_policy_operator import admission_policy, names
from openai_policy_operator.admission_rules import GuardSettings
from tests.operator.admission_cases import (
    ATTACKS,
    BIG,
    SMALL,
    Attack,
    assert_refused,
    create,
    deployment,
    pod,
    realistic_pod_spec,
)
from tests.operator.cluster import (
    apply_policy,
    events,
    get_json,
    has_sidecar,
    label_for_injection,
    running_operator,
    wait_condition,
    wait_for,
)

TEST_LABEL = "openaipolicy.dev/test-admission"


@pytest.fixture(scope="module")
def guarded(control_plane, crd, op_redis, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """An operator, the two ValidatingAdmissionPolicies, and a namespace with policies small and big."""
    suffix = f"t{secrets.token_hex(3)}"  # a label value: never a number to YAML (e.g. 699e64)
    with running_operator(control_plane, op_redis.url, tmp_path_factory.mktemp("operator")) as info:
        namespace = control_plane.create_namespace("admission", labels={TEST_LABEL: suffix})
        docs = admission_policy.manifests(
            f"oaip-test-{suffix}",
            GuardSettings(
                sidecar_repository="sidecar", proxy_port="8780", admin_port="8781", redis_url=op_redis.url
            ),
            ["kube-system", info["system_ns"]],
            only_namespaces_labelled={TEST_LABEL: suffix},
        )
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        try:
            apply_policy(control_plane, namespace, "small", SMALL)
            apply_policy(control_plane, namespace, "big", BIG)
            wait_condition(control_plane, namespace, "small", "Ready", "True", 10.0)
            wait_condition(control_plane, namespace, "big", "Ready", "True", 10.0)
            label_for_injection(control_plane, namespace)
            # The API server loads new policies and bindings asynchronously: wait until they refuse.
            probe = ATTACKS[1].pod
            wait_for(
                lambda: (
                    create(control_plane, namespace, probe, "-probe").returncode != 0
                    and "key-secret" in create(control_plane, namespace, probe, "-probe").stderr
                ),
                30.0,
                0.5,
                "the ValidatingAdmissionPolicies to take effect",
            )
            yield {**info, "namespace": namespace, "docs": docs}
        finally:
            for doc in docs:
                control_plane.kubectl(
                    "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found", check=False
                )
            control_plane.delete_namespace(namespace)


@pytest.fixture
def operator_down(guarded) -> dict[str, Any]:
    """The operator process stopped (its webhook stays registered, failurePolicy Ignore)."""
    guarded["process"].stop()
    return guarded


def test_policies_type_check_cleanly(control_plane, guarded):
    for doc in guarded["docs"]:
        if doc["kind"] != "ValidatingAdmissionPolicy":
            continue
        status = get_json(control_plane, "validatingadmissionpolicy", doc["metadata"]["name"])["status"]
        assert status.get("typeChecking", {}).get("expressionWarnings") is None, status


# ---- what users really write is admitted and injected --------------------------------------------


def _pods_of(control_plane, namespace: str, selector: str) -> list[dict[str, Any]]:
    return (get_json(control_plane, "pods", "-n", namespace, "-l", selector) or {}).get("items") or []


def _assert_injected(pod_body: dict[str, Any]) -> None:
    assert has_sidecar(pod_body), json.dumps(pod_body["spec"])[:2000]
    assert pod_body["metadata"]["annotations"][names.INJECTED_ANNOTATION] == "small"
    for container in pod_body["spec"]["containers"]:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["OPENAI_API_KEY"] == names.PLACEHOLDER_API_KEY


WORKLOADS = {
    "Deployment": lambda labels: deployment("shop", realistic_pod_spec(), labels),
    "StatefulSet": lambda labels: {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "shop-db"},
        "spec": {
            "replicas": 1,
            "serviceName": "shop-db",
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": realistic_pod_spec()},
        },
    },
    "Job": lambda labels: {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "shop-report"},
        "spec": {
            "template": {
                "metadata": {"labels": labels},
                "spec": {**realistic_pod_spec(), "restartPolicy": "Never"},
            }
        },
    },
    "CronJob": lambda labels: {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "shop-nightly"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {**realistic_pod_spec(), "restartPolicy": "OnFailure"},
                    }
                }
            },
        },
    },
}


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_workloads_users_write_are_admitted_and_injected(control_plane, guarded, kind):
    namespace = guarded["namespace"]
    labels = {"app": "shop", "workload": kind.lower()}
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(WORKLOADS[kind](labels)))
    if kind == "CronJob":  # what the schedule would do, now
        control_plane.kubectl(
            "create", "job", "-n", namespace, "shop-nightly-now", "--from=cronjob/shop-nightly"
        )
    try:
        pods = wait_for(lambda: _pods_of(control_plane, namespace, f"workload={kind.lower()}"), 30.0, 0.2)
    except AssertionError:
        # A refused pod shows as a FailedCreate Event of its controller.
        warnings = [e["message"] for e in events(control_plane, namespace) if e["type"] == "Warning"]
        pytest.fail(f"no pod of the {kind}; Warning Events: {warnings}")
    _assert_injected(pods[0])
    names_ = [c["name"] for c in pods[0]["spec"]["initContainers"]]
    assert names_ == [names.SIDECAR_NAME, "migrate", "log-shipper"]


def test_a_pod_with_its_own_init_containers_sidecars_volumes_and_secrets_is_admitted(control_plane, guarded):
    body = pod("realistic", **realistic_pod_spec())
    result = create(control_plane, guarded["namespace"], body)
    assert result.returncode == 0, result.stderr
    _assert_injected(json.loads(result.stdout))
    # Labels of a running pod can still change (e.g. taken out of a Service for debugging).
    control_plane.kubectl("label", "pod", "realistic", "-n", guarded["namespace"], "app-", "debug=true")


def test_the_annotation_chooses_among_policies_that_select_the_pod(control_plane, guarded):
    body = pod("chooses-small")
    body["metadata"]["labels"]["app"] = "shop"
    body["metadata"]["annotations"][names.POLICY_ANNOTATION] = "small"
    result = create(control_plane, guarded["namespace"], body)
    assert result.returncode == 0, result.stderr
    _assert_injected(json.loads(result.stdout))


def test_opted_out_pod_with_its_own_process_namespace_is_admitted(control_plane, guarded):
    body = pod("opted-out", shareProcessNamespace=True)
    body["metadata"]["annotations"][names.INJECT_ANNOTATION] = "false"
    result = create(control_plane, guarded["namespace"], body)
    assert result.returncode == 0, result.stderr
    assert not has_sidecar(json.loads(result.stdout))


# ---- attacks: each refused with its own message ---------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_pod_is_refused(control_plane, guarded, attack: Attack):
    assert_refused(create(control_plane, guarded["namespace"], attack.pod, "-up"), attack.rule)


def _debug(control_plane, namespace: str, pod_name: str, target: str, container: str) -> Any:
    return control_plane.kubectl(
        "debug",
        pod_name,
        "-n",
        namespace,
        "--image=busybox:1.36",
        f"--target={target}",
        f"--container={container}",
        "--profile=general",
        "--",
        "sleep",
        "1",
        check=False,
    )


def test_debug_container_for_the_app_is_admitted_one_targeting_the_sidecar_is_refused(control_plane, guarded):
    namespace = guarded["namespace"]
    result = create(control_plane, namespace, pod("debugged"))
    assert result.returncode == 0 and has_sidecar(json.loads(result.stdout)), result.stderr
    refused = _debug(control_plane, namespace, "debugged", names.SIDECAR_NAME, "peek")
    assert refused.returncode != 0
    assert "openai-policy ephemeral-containers:" in refused.stderr, refused.stderr
    admitted = _debug(control_plane, namespace, "debugged", "app", "dbg")
    assert admitted.returncode == 0, admitted.stderr
    stored = get_json(control_plane, "pod", "debugged", "-n", namespace)
    assert [c["name"] for c in stored["spec"]["ephemeralContainers"]] == ["dbg"]


def _exec(control_plane, namespace: str, pod_name: str, container: str) -> Any:
    return control_plane.kubectl(
        "exec",
        pod_name,
        "-n",
        namespace,
        "-c",
        container,
        "--",
        "cat",
        f"{names.API_KEY_DIR}/api-key",
        check=False,
    )


def test_exec_into_the_sidecar_is_refused_into_the_app_it_is_not(control_plane, guarded):
    namespace = guarded["namespace"]
    assert create(control_plane, namespace, pod("exec-target")).returncode == 0
    refused = _exec(control_plane, namespace, "exec-target", names.SIDECAR_NAME)
    assert refused.returncode != 0 and "openai-policy exec-into-sidecar:" in refused.stderr, refused.stderr
    # Into the app, admission lets it through (no node runs this pod here, hence the error after it).
    other = _exec(control_plane, namespace, "exec-target", "app")
    assert "openai-policy" not in other.stderr, other.stderr


def test_the_sidecar_image_cannot_be_changed_on_a_running_pod(control_plane, guarded):
    namespace = guarded["namespace"]
    result = create(control_plane, namespace, pod("set-image"))
    assert result.returncode == 0, result.stderr
    changed = control_plane.kubectl(
        "set", "image", "pod/set-image", "-n", namespace, f"{names.SIDECAR_NAME}=evil:1", check=False
    )
    assert changed.returncode != 0 and "openai-policy sidecar-unchanged:" in changed.stderr, changed.stderr
    app = control_plane.kubectl("set", "image", "pod/set-image", "-n", namespace, "app=shop:2", check=False)
    assert app.returncode == 0, app.stderr


# ---- with the operator down (these run last: they stop it) ----------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_pod_is_refused_while_the_operator_is_down(control_plane, operator_down, attack: Attack):
    assert_refused(
        create(control_plane, operator_down["namespace"], attack.pod, "-down"), attack.rule_operator_down
    )


def test_debug_container_targeting_the_sidecar_is_refused_while_the_operator_is_down(
    control_plane, operator_down
):
    refused = _debug(control_plane, operator_down["namespace"], "debugged", names.SIDECAR_NAME, "peek2")
    assert refused.returncode != 0 and "openai-policy ephemeral-containers:" in refused.stderr, refused.stderr


def test_exec_into_the_sidecar_is_refused_while_the_operator_is_down(control_plane, operator_down):
    refused = _exec(control_plane, operator_down["namespace"], "exec-target", names.SIDECAR_NAME)
    assert refused.returncode != 0 and "openai-policy exec-into-sidecar:" in refused.stderr, refused.stderr


def test_workloads_are_still_created_while_the_operator_is_down(control_plane, operator_down):
    """failurePolicy Ignore: admitted without the sidecar (and without the key)."""
    namespace = operator_down["namespace"]
    spec = realistic_pod_spec()
    app = spec["containers"][0]
    app["env"] = [e for e in app["env"] if e["name"] != "OPENAI_API_KEY"]
    labels = {"app": "shop", "workload": "while-down"}
    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("while-down", spec, labels))
    )
    pods = wait_for(lambda: _pods_of(control_plane, namespace, "workload=while-down"), 30.0, 0.2, "the pod")
    assert not has_sidecar(pods[0])


def test_an_app_that_still_takes_the_policy_key_from_its_secret_is_refused_while_the_operator_is_down(
    control_plane, operator_down
):
    """While the webhook runs it replaces such an OPENAI_API_KEY by the placeholder; without it the
    pod would hold the real key, so it is refused (and its ReplicaSet retries until the operator is back)."""
    body = pod("legacy-key", **realistic_pod_spec())
    assert_refused(create(control_plane, operator_down["namespace"], body), "key-secret")
