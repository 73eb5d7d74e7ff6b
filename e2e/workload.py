"""A governed workload as a platform user would write it: a Secret with the API key, an
OpenAIPolicy, and a plain Deployment running the governed client (e2e/app/governed_client.py).

The Deployment knows nothing of the policy: no sidecar, no key, no base URL. Its pod gets all of
that from the webhook, in a namespace labelled for injection. The client script travels in a
ConfigMap and runs on the e2e app image (e2e/app/Dockerfile: Python and the ``openai`` SDK; the
sidecar image carries no SDK) on a real cluster, or locally under the demo's LocalPod.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kube import Kubectl, apply, pods_with_label, wait_for
from e2e.stack import SIDECAR_IMAGE

CLIENT_SCRIPT = Path(__file__).resolve().parent / "app" / "governed_client.py"
INJECTION_LABEL = "openaipolicy.dev/injection"
INJECTED_ANNOTATION = "openaipolicy.dev/injected"
APP_LABEL = "governed-client"
SECRET_NAME = "openai-api-key"


@dataclass
class Workload:
    """What to deploy. ``spec`` is merged over the policy's defaults below."""

    namespace: str
    policy: str = "governed"
    api_key: str = "sk-e2e-secret-key-0123456789"
    upstream: str | None = None  # None: the policy's default (the public OpenAI API)
    budget_usd: float = 1.0
    spec: dict[str, Any] = field(default_factory=dict)
    client_args: list[str] = field(default_factory=list)
    image: str = SIDECAR_IMAGE

    def policy_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "selector": {"matchLabels": {"app": APP_LABEL}},
            "apiKey": {"secretRef": {"name": SECRET_NAME, "key": "api-key"}},
            "models": {"allow": ["gpt-4o-mini*"], "pin": {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}},
            "requests": {"maxOutputTokens": 50},
            "budget": {"limits": [{"window": "day", "usd": self.budget_usd}]},
            # Demo prices, 1000x the list price of gpt-4o-mini: a budget of cents is crossed in a
            # dozen requests and the spend moves visibly in `kubectl get oaip` (whole cents), while
            # a run against the real API still costs well under a tenth of a cent.
            "pricing": {"models": {"gpt-4o-mini": {"inputPerMillion": 150, "outputPerMillion": 600}}},
        }
        if self.upstream:
            spec["upstream"] = {"baseURL": self.upstream}
        spec.update(self.spec)
        return spec

    def manifests(self) -> list[dict[str, Any]]:
        ns = self.namespace
        return [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET_NAME, "namespace": ns},
                "stringData": {"api-key": self.api_key},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": APP_LABEL, "namespace": ns},
                "data": {"governed_client.py": CLIENT_SCRIPT.read_text()},
            },
            {
                "apiVersion": "openaipolicy.dev/v1alpha1",
                "kind": "OpenAIPolicy",
                "metadata": {"name": self.policy, "namespace": ns},
                "spec": self.policy_spec(),
            },
            self.deployment(),
        ]

    def deployment(self) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": APP_LABEL, "namespace": self.namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": APP_LABEL}},
                "template": {
                    "metadata": {"labels": {"app": APP_LABEL}},
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": self.image,
                                "command": ["python", "/opt/governed-client/governed_client.py"],
                                "args": self.client_args,
                                "volumeMounts": [
                                    {"name": "client", "mountPath": "/opt/governed-client", "readOnly": True}
                                ],
                            }
                        ],
                        "volumes": [{"name": "client", "configMap": {"name": APP_LABEL}}],
                    },
                },
            },
        }


def label_for_injection(cluster: Kubectl, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, f"{INJECTION_LABEL}=enabled", "--overwrite")


def deploy(cluster: Kubectl, workload: Workload) -> None:
    apply(cluster, workload.manifests())


def stored_pod(cluster: Kubectl, namespace: str, timeout: float = 60.0) -> dict[str, Any]:
    """The workload's Pod as the API server stored it (created by the ReplicaSet controller)."""
    pods = wait_for(
        lambda: pods_with_label(cluster, namespace, f"app={APP_LABEL}"),
        timeout,
        "the Deployment's Pod to be created",
    )
    return pods[0]


def client_records(logs: str) -> list[dict[str, Any]]:
    """The governed client's JSON lines (one per request outcome)."""
    records = []
    for line in logs.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "n" in record:
                records.append(record)
    return records
