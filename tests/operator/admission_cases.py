"""The pods of the admission tests: attacks on the key or the policy, and pods users really write.

Shared by the ValidatingAdmissionPolicy tests and the validating-webhook fallback tests. Every
pod is created in a namespace labelled for injection with two policies: ``small`` (pods labelled
``app: shop``, key Secret ``openai-small``) and ``big`` (``app: batch``, Secret ``openai-big``).
"""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import dataclass
from typing import Any

from openai_policy_operator import names

SMALL = {
    "selector": {"matchLabels": {"app": "shop"}},
    "apiKey": {"secretRef": {"name": "openai-small"}},
    "budget": {"limits": [{"window": "month", "usd": 10}]},
}
BIG = {
    "selector": {"matchLabels": {"app": "batch"}},
    "apiKey": {"secretRef": {"name": "openai-big"}},
    "budget": {"limits": [{"window": "month", "usd": 5000}]},
}


def pod(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "shop"}, "annotations": {}},
        "spec": {"containers": [{"name": "app", "image": "shop:1"}]},
    }
    body["spec"].update(spec)
    return body


def with_app(body: dict[str, Any], **container: Any) -> dict[str, Any]:
    body["spec"]["containers"][0].update(container)
    return body


def forged_sidecar() -> dict[str, Any]:
    """A hand-written openai-policy-proxy with the sidecar's image that just prints the key."""
    body = pod("forged")
    body["metadata"]["annotations"][names.INJECTED_ANNOTATION] = "small"
    body["spec"]["initContainers"] = [
        {
            "name": names.SIDECAR_NAME,
            "image": "sidecar:test",
            "restartPolicy": "Always",
            "command": ["python", "-c", "print(open('/var/run/secrets/openai-policy/api-key').read())"],
            "volumeMounts": [{"name": names.API_KEY_VOLUME, "mountPath": names.API_KEY_DIR}],
        }
    ]
    body["spec"]["volumes"] = [
        {"name": names.API_KEY_VOLUME, "secret": {"secretName": "openai-small"}},
    ]
    return body


@dataclass(frozen=True)
class Attack:
    id: str
    pod: dict[str, Any]
    rule: str  # the rule refusing it while the operator runs (message "openai-policy <rule>: ...")
    rule_operator_down: str  # ... and while it is down (no injection happened)


def _volume(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **source}


ATTACKS = [
    Attack(
        "app-mounts-the-sidecar-key-volume",
        with_app(pod("mounts-key"), volumeMounts=[{"name": names.API_KEY_VOLUME, "mountPath": "/key"}]),
        "sidecar-volumes",
        # Without injection the volume does not exist: the API server's own validation refuses it.
        "Not found",
    ),
    Attack(
        "secret-volume",
        with_app(
            pod("secret-volume", volumes=[_volume("key", {"secret": {"secretName": "openai-small"}})]),
            volumeMounts=[{"name": "key", "mountPath": "/key"}],
        ),
        "key-secret",
        "key-secret",
    ),
    Attack(
        "projected-secret",
        with_app(
            pod(
                "projected",
                volumes=[
                    _volume("all", {"projected": {"sources": [{"secret": {"name": "openai-big"}}]}}),
                ],
            ),
            volumeMounts=[{"name": "all", "mountPath": "/all"}],
        ),
        "key-secret",
        "key-secret",
    ),
    Attack(
        "env-secret-key-ref",
        with_app(
            pod("env-ref"),
            env=[
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "openai-small", "key": "api-key"}}}
            ],
        ),
        "key-secret",
        "key-secret",
    ),
    Attack(
        "env-from-secret",
        with_app(pod("env-from"), envFrom=[{"secretRef": {"name": "openai-big"}}]),
        "key-secret",
        "key-secret",
    ),
    Attack(
        "own-policy-config-volume",
        pod("own-config", volumes=[_volume(names.POLICY_VOLUME, {"configMap": {"name": "anything-goes"}})]),
        "sidecar-shape",
        "reserved-names",
    ),
    Attack(
        "decoy-proxy-container",
        pod(
            "decoy",
            containers=[{"name": "app", "image": "shop:1"}, {"name": names.SIDECAR_NAME, "image": "busybox"}],
        ),
        "reserved-names",
        "reserved-names",
    ),
    Attack("forged-sidecar", forged_sidecar(), "sidecar-shape", "sidecar-shape"),
    Attack(
        "policy-annotation-picks-a-policy-that-does-not-select-the-pod",
        pod("picks-big"),
        "policy-selects-pod",
        "policy-selects-pod",
    ),
    Attack(
        "share-process-namespace",
        pod("shares-pids", shareProcessNamespace=True),
        "process-namespace",
        "process-namespace",
    ),
]
ATTACKS[8].pod["metadata"]["annotations"][names.POLICY_ANNOTATION] = "big"
# Each policy's Redis credential (a Secret the operator writes) is guarded as its key is.
ATTACKS += [
    Attack(
        "redis-credential-volume",
        with_app(
            pod(
                "redis-cred",
                volumes=[_volume("cred", {"secret": {"secretName": names.redis_credential_secret("small")}})],
            ),
            volumeMounts=[{"name": "cred", "mountPath": "/cred"}],
        ),
        "key-secret",
        "key-secret",
    ),
    Attack(
        "redis-credential-of-another-policy-in-env",
        with_app(
            pod("redis-env"),
            env=[
                {
                    "name": "REDIS",
                    "valueFrom": {
                        "secretKeyRef": {"name": names.redis_credential_secret("big"), "key": "credential"}
                    },
                }
            ],
        ),
        "key-secret",
        "key-secret",
    ),
]


def create(
    control_plane: Any, namespace: str, body: dict[str, Any], name_suffix: str = ""
) -> subprocess.CompletedProcess[str]:
    body = copy.deepcopy(body)
    body["metadata"]["name"] += name_suffix
    return control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(body), check=False
    )


def assert_refused(result: subprocess.CompletedProcess[str], rule: str) -> None:
    assert result.returncode != 0, f"admitted:\n{result.stdout[:3000]}"
    expected = rule if rule == "Not found" else f"openai-policy {rule}:"
    assert expected in result.stderr, result.stderr


def deployment(name: str, template_spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": template_spec},
        },
    }


def realistic_pod_spec() -> dict[str, Any]:
    """What teams really write: their own init container and native sidecar, volumes, other
    Secrets, and an OPENAI_API_KEY from the policy's own Secret (replaced by the placeholder)."""
    return {
        "initContainers": [
            {"name": "migrate", "image": "shop-migrate:1", "envFrom": [{"secretRef": {"name": "db"}}]},
            {
                "name": "log-shipper",
                "image": "fluent-bit:3",
                "restartPolicy": "Always",
                "volumeMounts": [{"name": "logs", "mountPath": "/logs"}],
            },
        ],
        "containers": [
            {
                "name": "app",
                "image": "shop:1",
                "env": [
                    {
                        "name": "OPENAI_API_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "openai-small", "key": "api-key"}},
                    },
                    {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                ],
                "volumeMounts": [
                    {"name": "logs", "mountPath": "/logs"},
                    {"name": "tls", "mountPath": "/tls"},
                    {"name": "settings", "mountPath": "/etc/shop"},
                ],
            }
        ],
        "volumes": [
            {"name": "logs", "emptyDir": {}},
            {"name": "tls", "secret": {"secretName": "shop-tls"}},
            {
                "name": "settings",
                "projected": {"sources": [{"configMap": {"name": "shop"}}, {"secret": {"name": "db"}}]},
            },
        ],
    }
