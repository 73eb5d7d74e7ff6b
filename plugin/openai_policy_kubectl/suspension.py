"""``kubectl oaip suspend|resume``: the kill switch, with who and why kept on the object.

``spec.suspend`` is what the sidecars obey; the reason, the user and the time go into annotations
(so ``status`` shows them next to the switch) and into an Event on the policy (so the history
survives a later resume). Both writes are the caller's own, under the caller's RBAC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from openai_policy_operator import names

from .kubectl import Kubectl, KubectlError

REASON_ANNOTATION = f"{names.GROUP}/suspend-reason"
BY_ANNOTATION = f"{names.GROUP}/suspended-by"
AT_ANNOTATION = f"{names.GROUP}/suspended-at"
COMPONENT = "kubectl-oaip"


def describe(metadata: Mapping[str, Any]) -> str | None:
    """The recorded suspension, as one line, or None when the policy carries none."""
    annotations = metadata.get("annotations") or {}
    if REASON_ANNOTATION not in annotations:
        return None
    who = annotations.get(BY_ANNOTATION, "unknown")
    when = annotations.get(AT_ANNOTATION, "unknown time")
    return f"Suspended by {who} at {when}: {annotations[REASON_ANNOTATION]}"


def patch(suspend: bool, reason: str, who: str, at: str) -> dict[str, Any]:
    """The merge patch: the switch, and the annotations set on suspend and removed on resume."""
    values: dict[str, str | None] = (
        {REASON_ANNOTATION: reason, BY_ANNOTATION: who, AT_ANNOTATION: at}
        if suspend
        else dict.fromkeys((REASON_ANNOTATION, BY_ANNOTATION, AT_ANNOTATION))
    )
    return {"metadata": {"annotations": values}, "spec": {"suspend": suspend}}


def event(policy: Mapping[str, Any], suspend: bool, reason: str, who: str, at: str) -> dict[str, Any]:
    """A core/v1 Event on the policy, as ``kubectl describe oaip`` lists them."""
    meta = policy["metadata"]
    verb = "suspended" if suspend else "resumed"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": "Suspended" if suspend else "Resumed",
        "message": f"{who} {verb} the policy with kubectl oaip: {reason}",
        "type": "Warning" if suspend else "Normal",
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
    }


def set_suspended(kubectl: Kubectl, namespace: str, name: str, suspend: bool, reason: str) -> list[str]:
    """Flip the switch, then record the Event; returns what to tell the user."""
    if not reason.strip():
        raise KubectlError("a reason is required (--reason): it is recorded on the policy and in an Event")
    policy = kubectl.json("get", names.PLURAL, name, "-n", namespace)
    who = kubectl.whoami()
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kubectl.run(
        "patch",
        names.PLURAL,
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch(suspend, reason, who, at)),
    )
    state = "suspended: every request through its sidecars is refused" if suspend else "resumed"
    said = [f"OpenAIPolicy {namespace}/{name} {state}."]
    try:
        kubectl.run("create", "-f", "-", stdin=json.dumps(event(policy, suspend, reason, who, at)))
    except KubectlError as error:
        # The switch is what matters; the Event is history. Say so rather than fail the command.
        said.append(f"warning: the Event was not recorded ({error})")
    return said
