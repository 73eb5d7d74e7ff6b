"""``kubectl oaip explain-refusal REQUEST-ID``: what a sidecar decided for one request, and why.

Every answer carries ``x-openai-policy-request-id`` (and OpenAI's ``x-request-id``); the sidecar
writes one JSON access line per request with that id. This finds the line in the sidecars' logs
(``kubectl logs`` of the proxy container, under the caller's RBAC) or in a saved log file, and
says it in words. Prompts are not shown even when the policy logs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from openai_policy_operator import names

from .kubectl import Kubectl, KubectlError

SHOWN = (
    ("policy", "Policy"),
    ("pod", "Pod"),
    ("method", "Method"),
    ("path", "Path"),
    ("user", "User"),
    ("feature", "Feature"),
    ("model_requested", "Model asked for"),
    ("model", "Model sent"),
    ("input_tokens_estimated", "Input tokens (estimated)"),
    ("max_output_tokens", "Output tokens allowed"),
    ("cost_usd", "Cost (USD)"),
    ("openai_request_id", "OpenAI request id"),
)


def find(lines: Iterable[str], request_id: str) -> dict[str, Any] | None:
    """The access line of ``request_id`` (the sidecar's id or OpenAI's), or None."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{") or request_id not in line:
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if isinstance(fields, dict) and request_id in (
            fields.get("request_id"),
            fields.get("openai_request_id"),
        ):
            return fields
    return None


def describe(fields: Mapping[str, Any]) -> list[str]:
    decision = str(fields.get("decision") or "unknown")
    status = fields.get("status")
    if decision.startswith("refused:"):
        code = decision.split(":", 1)[1]
        head = f"Refused by the policy with {status} {code}."
    elif decision.startswith("dryrun:"):
        head = f"Allowed (dry run), but the policy would have refused it: {decision.split(':', 1)[1]}."
    else:
        head = f"Not refused by the policy: {decision} (HTTP {status})."
    lines = [f"Request {fields.get('request_id')}: {head}"]
    if fields.get("refusal"):
        lines.append(f"  Why: {fields['refusal']}")
    lines.extend(f"  {label}: {fields[key]}" for key, label in SHOWN if fields.get(key) not in (None, ""))
    for finding in fields.get("guardrails") or []:
        lines.append(f"  Guardrail: {finding}")
    return lines


def sidecar_log_lines(kubectl: Kubectl, namespace: str, selector: str | None, since: str) -> Iterable[str]:
    """The proxy containers' logs of the namespace's injected pods (or of those ``selector`` picks)."""
    args = ["get", "pods", "-n", namespace, *(["-l", selector] if selector else [])]
    for pod in kubectl.items(*args):
        meta = pod.get("metadata") or {}
        if names.INJECTED_ANNOTATION not in (meta.get("annotations") or {}):
            continue
        try:
            text = kubectl.run(
                "logs", meta["name"], "-n", namespace, "-c", names.SIDECAR_NAME, f"--since={since}"
            )
        except KubectlError:
            continue  # a pod still starting or gone: the others may hold the line
        yield from text.splitlines()
