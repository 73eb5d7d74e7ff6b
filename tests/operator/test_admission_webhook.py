"""The admission rules from the operator's validating webhook (clusters older than 1.30, which have
no ValidatingAdmissionPolicy), against the real API server; and failurePolicy Fail.

Weaker than the policies by design: it holds only while the operator answers (failurePolicy Fail
refuses every pod of an opted-in namespace meanwhile; Ignore lets the rules lapse).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from openai_policy_operator import names
from tests.operator.admission_cases import (
    ATTACKS,
    BIG,
    SMALL,
    Attack,
    assert_refused,
    create,
    pod,
    realistic_pod_spec,
)
from tests.operator.cluster import (
    apply_policy,
    get_json,
    has_sidecar,
    label_for_injection,
    running_operator,
    wait_condition,
)


@pytest.fixture(scope="module")
def validating(control_plane, crd, op_redis, tmp_path_factory) -> Iterator[dict[str, Any]]:
    with running_operator(
        control_plane, op_redis.url, tmp_path_factory.mktemp("operator"), validating=True
    ) as info:
        namespace = control_plane.create_namespace("validating")
        try:
            apply_policy(control_plane, namespace, "small", SMALL)
            apply_policy(control_plane, namespace, "big", BIG)
            wait_condition(control_plane, namespace, "small", "Ready", "True", 10.0)
            wait_condition(control_plane, namespace, "big", "Ready", "True", 10.0)
            label_for_injection(control_plane, namespace)
            yield {**info, "namespace": namespace}
        finally:
            control_plane.delete_namespace(namespace)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack_pod_is_refused_by_the_validating_webhook(control_plane, validating, attack: Attack):
    result = create(control_plane, validating["namespace"], attack.pod)
    assert_refused(result, attack.rule)
    assert "admission webhook" in result.stderr  # the operator answered, not a ValidatingAdmissionPolicy


def test_real_pods_are_admitted_and_injected(control_plane, validating):
    result = create(control_plane, validating["namespace"], pod("realistic", **realistic_pod_spec()))
    assert result.returncode == 0, result.stderr
    assert has_sidecar(json.loads(result.stdout))


def test_kubectl_debug(control_plane, validating):
    namespace = validating["namespace"]
    assert create(control_plane, namespace, pod("debugged")).returncode == 0

    def debug(target: str, container: str) -> Any:
        return control_plane.kubectl(
            "debug", "debugged", "-n", namespace, "--image=busybox:1.36", f"--target={target}",
            f"--container={container}", "--profile=general", "--", "sleep", "1", check=False,
        )  # fmt: skip

    refused = debug(names.SIDECAR_NAME, "peek")
    assert refused.returncode != 0 and "openai-policy ephemeral-containers:" in refused.stderr, refused.stderr
    admitted = debug("app", "dbg")
    assert admitted.returncode == 0, admitted.stderr
    stored = get_json(control_plane, "pod", "debugged", "-n", namespace)
    assert [c["name"] for c in stored["spec"]["ephemeralContainers"]] == ["dbg"]


def test_failure_policy_fail_refuses_pods_while_the_webhook_is_down(control_plane, crd, op_redis, tmp_path):
    with running_operator(
        control_plane, op_redis.url, tmp_path, extra=("--standalone", "--failure-policy", "Fail")
    ) as info:
        namespace = control_plane.create_namespace("fail-closed")
        try:
            apply_policy(control_plane, namespace, "small", SMALL)
            wait_condition(control_plane, namespace, "small", "Ready", "True", 10.0)
            label_for_injection(control_plane, namespace)
            hook = get_json(control_plane, "mutatingwebhookconfiguration", info["webhook"])
            assert hook["webhooks"][0]["failurePolicy"] == "Fail"
            up = create(control_plane, namespace, pod("while-up"))
            assert up.returncode == 0 and has_sidecar(json.loads(up.stdout)), up.stderr
            info["process"].stop()
            down = create(control_plane, namespace, pod("while-down"))
            assert down.returncode != 0, "a pod was created un-governed with failurePolicy Fail"
            assert (
                "failed calling webhook" in down.stderr and "inject-sidecar.openaipolicy.dev" in down.stderr
            )
            # Namespaces that did not opt in are never affected.
            plain = control_plane.create_namespace("not-opted-in")
            try:
                assert create(control_plane, plain, pod("elsewhere")).returncode == 0
            finally:
                control_plane.delete_namespace(plain)
        finally:
            control_plane.delete_namespace(namespace)


def test_exec_into_the_sidecar_is_refused(control_plane, validating):
    namespace = validating["namespace"]
    assert create(control_plane, namespace, pod("exec-target")).returncode == 0
    refused = control_plane.kubectl(
        "exec", "exec-target", "-n", namespace, "-c", names.SIDECAR_NAME, "--", "true", check=False
    )
    assert refused.returncode != 0 and "openai-policy exec-into-sidecar:" in refused.stderr, refused.stderr
