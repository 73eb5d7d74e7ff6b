"""The API server itself pins the sidecar's --otlp-endpoint to the operator's (the
ValidatingAdmissionPolicies rendered for settings with an OTLP endpoint), operator not needed."""

from __future__ import annotations

import copy
import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import yaml

from openai_policy_operator import admission_policy
from openai_policy_operator.admission_rules import GuardSettings
from openai_policy_operator.config import InjectionSettings
from openai_policy_operator.sidecar_injection import injection_patch
from openai_policy_operator.webhook import decide, target_of
from tests.operator.admission_cases import SMALL, assert_refused, create, pod
from tests.operator.cluster import apply_policy, label_for_injection, wait_for

COLLECTOR = "http://otel-collector.monitoring:4318"
LABEL = "openaipolicy.dev/test-otlp"


@pytest.fixture(scope="module")
def otlp_namespace(control_plane, crd) -> Iterator[str]:
    suffix = f"t{secrets.token_hex(3)}"
    namespace = control_plane.create_namespace("admission-otlp", labels={LABEL: suffix})
    guard = GuardSettings("sidecar", "8780", "8781", None, otlp_endpoint=COLLECTOR)
    docs = admission_policy.manifests(
        f"oaip-otlp-{suffix}", guard, ["kube-system"], only_namespaces_labelled={LABEL: suffix}
    )
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        apply_policy(control_plane, namespace, "small", SMALL)
        label_for_injection(control_plane, namespace)
        yield namespace
    finally:
        for doc in docs:
            control_plane.kubectl(
                "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found", check=False
            )
        control_plane.delete_namespace(namespace)


def injected(endpoint: str) -> dict[str, Any]:
    """A pod as the webhook injects it for policy small, its sidecar exporting to ``endpoint``."""
    body = pod("otlp")
    policy = {"metadata": {"name": "small", "namespace": "x"}, "spec": SMALL}
    decision = decide(body, "x", {"openaipolicy.dev/injection": "enabled"}, [policy], frozenset())
    assert decision.policy is not None
    settings = InjectionSettings(sidecar_image="sidecar:test", otlp_endpoint=endpoint)
    return jsonpatch.apply_patch(
        copy.deepcopy(body), injection_patch(body, target_of(decision.policy), settings).patch
    )


def test_the_operators_endpoint_is_admitted_another_is_refused(control_plane, otlp_namespace):
    forged = injected("http://attacker.example:4318")
    # The API server loads new policies asynchronously: wait until it refuses the forged one (each
    # probe under a name of its own: one admitted before then would make a retry fail as existing).
    probes = itertools.count()
    wait_for(
        lambda: (
            "openai-policy sidecar-shape:"
            in create(control_plane, otlp_namespace, forged, f"-probe{next(probes)}").stderr
        ),
        30.0,
        0.5,
        "the policies",
    )
    assert_refused(create(control_plane, otlp_namespace, forged, "-forged"), "sidecar-shape")
    admitted = create(control_plane, otlp_namespace, injected(COLLECTOR), "-ok")
    assert admitted.returncode == 0, admitted.stderr
