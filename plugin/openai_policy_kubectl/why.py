"""``kubectl oaip why POD``: why the webhook did or did not give a pod the sidecar.

The answer comes from the webhook's own rules (:func:`openai_policy_operator.webhook.decide`), run
on the pod as it was submitted (the injected sidecar taken away), against the namespace's labels
and policies as they are now; what the pod actually carries is reported beside it, so a pod
created before a policy changed shows both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from openai_policy_operator import names
from openai_policy_operator.config import ALWAYS_EXCLUDED_NAMESPACES
from openai_policy_operator.sidecar_injection import is_injected
from openai_policy_operator.webhook import DENY, INJECT, decide

from .kubectl import Kubectl


def as_submitted(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod without what injection added (the sidecar and the injected annotation)."""
    submitted = copy.deepcopy(dict(pod))
    spec = submitted.setdefault("spec", {})
    for field in ("initContainers", "containers"):
        if field in spec:
            spec[field] = [c for c in spec[field] if c.get("name") != names.SIDECAR_NAME]
    (submitted.get("metadata") or {}).get("annotations", {}).pop(names.INJECTED_ANNOTATION, None)
    return submitted


def explain(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str],
    policies: Sequence[Mapping[str, Any]],
    operator_namespace: str | None,
) -> list[str]:
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace", "default"))
    excluded = frozenset(
        (*ALWAYS_EXCLUDED_NAMESPACES, *((operator_namespace,) if operator_namespace else ()))
    )
    decision = decide(as_submitted(pod), namespace, namespace_labels, policies, excluded)
    injected_by = (meta.get("annotations") or {}).get(names.INJECTED_ANNOTATION)
    if is_injected(dict(pod)):
        now = f"Pod {namespace}/{meta.get('name')} carries the sidecar (policy {injected_by or 'unknown'})."
    else:
        now = f"Pod {namespace}/{meta.get('name')} has no sidecar."
    if decision.action == INJECT:
        verdict = f"The webhook's rules inject it today: {decision.message} ({decision.reason})."
    elif decision.action == DENY:
        verdict = f"The webhook's rules refuse it today: {decision.message} ({decision.reason})."
    else:
        verdict = f"The webhook's rules leave it alone today: {decision.message} ({decision.reason})."
    return [now, verdict]


def why(kubectl: Kubectl, namespace: str, pod_name: str, operator_namespace: str | None) -> list[str]:
    pod = kubectl.json("get", "pod", pod_name, "-n", namespace)
    labels = (kubectl.json("get", "namespace", namespace).get("metadata") or {}).get("labels") or {}
    policies = kubectl.items("get", names.PLURAL, "-n", namespace)
    return explain(pod, labels, policies, operator_namespace)
