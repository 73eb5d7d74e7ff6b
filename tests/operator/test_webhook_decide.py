"""The admission decision (which pods, which policy) without a cluster."""

from __future__ import annotations

from openai_policy_operator import names
from openai_policy_operator.webhook import DENY, INJECT, SKIP, decide, involved_object, target_of

ENABLED = {names.NAMESPACE_INJECTION_LABEL: "enabled"}
NEVER = frozenset({"kube-system", "openai-policy-system"})


def policy(name: str, selector: dict | None = None, secret: str | None = None) -> dict:
    spec: dict = {"selector": selector or {}}
    if secret:
        spec["apiKey"] = {"secretRef": {"name": secret}}
    return {"metadata": {"name": name, "namespace": "apps"}, "spec": spec}


def pod(labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "metadata": {"generateName": "web-", "labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "a"}]},
    }


def test_single_matching_policy_is_injected():
    d = decide(pod({"app": "web"}), "apps", ENABLED, [policy("p", {"matchLabels": {"app": "web"}})], NEVER)
    assert d.action == INJECT and d.policy_name == "p"


def test_unlabelled_namespace_is_untouched():
    d = decide(pod(), "apps", {}, [policy("p")], NEVER)
    assert (d.action, d.reason, d.announce) == (SKIP, "NamespaceNotEnabled", False)


def test_excluded_namespaces_even_when_labelled():
    for ns in ("kube-system", "openai-policy-system"):
        assert decide(pod(), ns, ENABLED, [policy("p")], NEVER).reason == "ExcludedNamespace"


def test_opt_out():
    d = decide(pod(annotations={names.INJECT_ANNOTATION: "false"}), "apps", ENABLED, [policy("p")], NEVER)
    assert (d.action, d.reason) == (SKIP, "OptedOut")


def test_opt_out_label_works_too():
    d = decide(pod({names.INJECT_ANNOTATION: "false"}), "apps", ENABLED, [policy("p")], NEVER)
    assert (d.action, d.reason) == (SKIP, "OptedOut")


def test_no_match_is_silent():
    d = decide(pod({"app": "x"}), "apps", ENABLED, [policy("p", {"matchLabels": {"app": "web"}})], NEVER)
    assert (d.action, d.reason, d.announce) == (SKIP, "NoMatchingPolicy", False)


def test_ambiguous_is_untouched_and_announced():
    d = decide(pod({"app": "web"}), "apps", ENABLED, [policy("a"), policy("b")], NEVER)
    assert (d.action, d.reason, d.announce) == (SKIP, "AmbiguousPolicy", True)
    assert "a, b" in d.message and names.POLICY_ANNOTATION in d.message


def test_annotation_chooses_among_several():
    d = decide(
        pod(annotations={names.POLICY_ANNOTATION: "b"}), "apps", ENABLED, [policy("a"), policy("b")], NEVER
    )
    assert d.action == INJECT and d.policy_name == "b"


def test_annotation_only_chooses_among_policies_that_select_the_pod():
    small, big = (
        policy("small", {"matchLabels": {"app": "shop"}}),
        policy("big", {"matchLabels": {"app": "batch"}}),
    )
    d = decide(pod({"app": "shop"}, {names.POLICY_ANNOTATION: "big"}), "apps", ENABLED, [small, big], NEVER)
    assert (d.action, d.reason) == (DENY, "PolicyDoesNotSelectPod")
    assert d.message.startswith("openai-policy policy-selects-pod:") and "big" in d.message


def test_annotation_naming_a_missing_policy_is_announced():
    d = decide(pod(annotations={names.POLICY_ANNOTATION: "zzz"}), "apps", ENABLED, [policy("a")], NEVER)
    assert (d.action, d.reason, d.announce) == (SKIP, "PolicyNotFound", True)


def test_already_injected_pod_is_left_alone():
    p = pod()
    p["spec"]["initContainers"] = [{"name": names.SIDECAR_NAME, "image": "s"}]
    assert decide(p, "apps", ENABLED, [policy("a")], NEVER).reason == "AlreadyInjected"


def test_target_from_raw_policy():
    t = target_of(policy("a", secret="key"))
    assert (t.policy_name, t.secret_name, t.secret_key) == ("a", "key", "api-key")
    assert target_of(policy("b")).secret_name is None


def test_events_go_to_the_controller_of_a_nameless_pod():
    p = pod()
    p["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": True}
    ]
    assert involved_object(p)["kind"] == "ReplicaSet"
    assert involved_object(pod()) == {"apiVersion": "v1", "kind": "Pod", "name": "web-"}
