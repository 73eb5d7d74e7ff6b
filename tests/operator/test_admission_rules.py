"""The admission rules' Python evaluator (the validating webhook's), on the same pods as the
API-server tests, after the injection the webhook itself would make; and the generated files."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from openai_policy_operator import admission_policy, names, rbac
from openai_policy_operator.admission_rules import GuardSettings, image_repository, violations
from openai_policy_operator.config import InjectionSettings
from openai_policy_operator.sidecar_injection import injection_patch
from openai_policy_operator.webhook import DENY, INJECT, decide, target_of
from tests.operator.admission_cases import (
    ATTACKS,
    BIG,
    SMALL,
    Attack,
    forged_sidecar,
    pod,
    realistic_pod_spec,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"
SETTINGS = InjectionSettings(sidecar_image="sidecar:test", redis_url=REDIS)
GUARD = GuardSettings(sidecar_repository="sidecar", proxy_port="8780", admin_port="8781", redis_url=REDIS)
POLICIES = [
    {"metadata": {"name": "small", "namespace": "shop"}, "spec": SMALL},
    {"metadata": {"name": "big", "namespace": "shop"}, "spec": BIG},
]
ENABLED = {names.NAMESPACE_INJECTION_LABEL: "enabled"}
# What the ServiceAccount admission plugin adds to every container before validation.
TOKEN_MOUNT = {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}


def admitted_by_webhook(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(the mutating webhook's decision, the pod as the validating stage then sees it)."""
    body = copy.deepcopy(body)
    decision = decide(body, "shop", ENABLED, POLICIES, frozenset())
    if decision.action == INJECT and decision.policy is not None:
        body = jsonpatch.apply_patch(body, injection_patch(body, target_of(decision.policy), SETTINGS).patch)
    spec = body["spec"]
    for container in [*spec["containers"], *spec.get("initContainers", [])]:
        container.setdefault("volumeMounts", []).append(TOKEN_MOUNT)
    return decision.action, body


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_each_attack_breaks_its_rule(attack: Attack) -> None:
    action, body = admitted_by_webhook(attack.pod)
    if action == DENY:  # refused by the mutating webhook already, with the same message
        assert decide(attack.pod, "shop", ENABLED, POLICIES, frozenset()).message.startswith(
            f"openai-policy {attack.rule}:"
        )
        return
    found = violations(body, None, "CREATE", None, POLICIES, GUARD)
    assert found and found[0].startswith(f"openai-policy {attack.rule}:"), found


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_each_attack_is_refused_without_injection(attack: Attack) -> None:
    if attack.rule_operator_down == "Not found":
        pytest.skip("refused by the API server's own validation: the volume does not exist")
    found = violations(attack.pod, None, "CREATE", None, POLICIES, GUARD)
    assert any(f.startswith(f"openai-policy {attack.rule_operator_down}:") for f in found), found


def test_real_pods_pass_once_injected() -> None:
    for body in (pod("plain"), pod("realistic", **realistic_pod_spec())):
        action, injected = admitted_by_webhook(body)
        assert action == INJECT
        assert violations(injected, None, "CREATE", None, POLICIES, GUARD) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(command=["python", "-c", "leak()"]),
        lambda s: s["args"].extend(["--log-level", "DEBUG", "--redis-url", "redis://attacker:6379/0"]),
        lambda s: s["env"].append({"name": "PYTHONSTARTUP", "value": "/etc/openai-policy/x.py"}),
        lambda s: s.update(lifecycle={"postStart": {"exec": {"command": ["cat", "/var/run/secrets/x"]}}}),
        lambda s: s["livenessProbe"].update(exec={"command": ["sh"]}),
        lambda s: s.update(image="attacker/sidecar:test"),
        lambda s: s["volumeMounts"].append({"name": "scratch", "mountPath": "/usr/lib/python3"}),
    ],
    ids=["command", "other-redis", "python-env", "hook", "exec-probe", "image", "mount"],
)
def test_a_sidecar_changed_in_any_way_that_matters_is_not_the_injection(change) -> None:
    _, body = admitted_by_webhook(pod("x"))
    change(body["spec"]["initContainers"][0])
    assert violations(body, None, "CREATE", None, POLICIES, GUARD)[0].startswith(
        "openai-policy sidecar-shape:"
    )


def test_the_otlp_endpoint_is_pinned_to_the_webhooks() -> None:
    """Sidecars may export GenAI metrics only where the operator sends them, never elsewhere."""
    collector = "http://otel-collector.monitoring:4318"
    settings = dataclasses.replace(SETTINGS, otlp_endpoint=collector)
    guard = dataclasses.replace(GUARD, otlp_endpoint=collector)
    body = pod("x")
    decision = decide(body, "shop", ENABLED, POLICIES, frozenset())
    assert decision.policy is not None
    injected = jsonpatch.apply_patch(body, injection_patch(body, target_of(decision.policy), settings).patch)
    sidecar = injected["spec"]["initContainers"][0]
    assert sidecar["args"][-2:] == ["--otlp-endpoint", collector]
    assert violations(injected, None, "CREATE", None, POLICIES, guard) == []
    # Without an endpoint in the operator's settings, the flag is not the injection's.
    assert violations(injected, None, "CREATE", None, POLICIES, GUARD)[0].startswith(
        "openai-policy sidecar-shape:"
    )
    sidecar["args"][-1] = "http://attacker.example:4318"
    assert violations(injected, None, "CREATE", None, POLICIES, guard)[0].startswith(
        "openai-policy sidecar-shape:"
    )


def test_a_pod_injected_for_one_policy_cannot_carry_another_policys_key() -> None:
    _, body = admitted_by_webhook(pod("x"))
    key = next(v for v in body["spec"]["volumes"] if v["name"] == names.API_KEY_VOLUME)
    key["secret"]["secretName"] = "openai-big"
    assert "OpenAIPolicy big" in violations(body, None, "CREATE", None, POLICIES, GUARD)[0]


def test_update_may_not_touch_the_sidecar_but_may_change_the_app() -> None:
    _, before = admitted_by_webhook(pod("x"))
    after = copy.deepcopy(before)
    after["spec"]["containers"][0]["image"] = "shop:2"
    after["metadata"]["labels"] = {}
    assert violations(after, before, "UPDATE", None, POLICIES, GUARD) == []
    after["spec"]["initContainers"][0]["image"] = "sidecar:evil"
    assert violations(after, before, "UPDATE", None, POLICIES, GUARD)[0].startswith(
        "openai-policy sidecar-unchanged:"
    )


def test_ephemeral_containers() -> None:
    _, before = admitted_by_webhook(pod("x"))
    after = copy.deepcopy(before)
    after["spec"]["ephemeralContainers"] = [{"name": "dbg", "image": "busybox", "targetContainerName": "app"}]
    assert violations(after, before, "UPDATE", "ephemeralcontainers", POLICIES, GUARD) == []
    after["spec"]["ephemeralContainers"][0]["targetContainerName"] = names.SIDECAR_NAME
    assert violations(after, before, "UPDATE", "ephemeralcontainers", POLICIES, GUARD)[0].startswith(
        "openai-policy ephemeral-containers:"
    )
    after["spec"]["ephemeralContainers"] = [
        {"name": "dbg", "image": "busybox", "envFrom": [{"secretRef": {"name": "openai-small"}}]}
    ]
    assert "key-secret" in violations(after, before, "UPDATE", "ephemeralcontainers", POLICIES, GUARD)[0]


def test_forged_sidecar_is_never_the_injection() -> None:
    assert violations(forged_sidecar(), None, "CREATE", None, POLICIES, GUARD)


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("sidecar:test", "sidecar"),
        ("registry:5000/team/sidecar:1.2", "registry:5000/team/sidecar"),
        ("ghcr.io/x/sidecar@sha256:abc", "ghcr.io/x/sidecar"),
        ("registry:5000/sidecar", "registry:5000/sidecar"),
    ],
)
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_generated_chart_files_are_fresh() -> None:
    chart = ROOT / "charts" / "openai-policy-operator" / "files"
    assert (chart / "admission-policy.yaml").read_text() == admission_policy.chart_file(), (
        "run: python -m openai_policy_operator.admission_policy --chart"
    )
    assert (chart / "user-roles.yaml").read_text() == rbac.user_roles_file(), (
        "run: python -m openai_policy_operator.rbac --user-roles"
    )


def test_the_readme_lists_every_rule_with_its_message() -> None:
    from openai_policy_operator.admission_rules import MESSAGES, key_secret_message, policy_selects_message

    readme = " ".join((ROOT / "README.md").read_text().split())
    messages = [
        *MESSAGES.values(),
        key_secret_message("<policy>", "<secret>"),
        policy_selects_message("<policy>", names.POLICY_ANNOTATION),
    ]
    for message in messages:
        assert " ".join(message.split()) in readme, message
