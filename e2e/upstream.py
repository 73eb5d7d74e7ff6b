"""The upstream the e2e policy points at: the fake OpenAI server, and what it was sent.

Locally the fake runs in the test process (the ``fake_openai`` fixture). On a real cluster
(kind) pods cannot reach the test process, so the same fake runs in the cluster: its modules
travel in a ConfigMap, it runs on the sidecar image (Python, aiohttp and tiktoken are there), and
the test reads what it recorded through the API server's service proxy.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Protocol

from e2e.kube import Kubectl, apply, get_json, wait_for

PACKAGE = "openai_policy_devkit"
DEVKIT = Path(__file__).resolve().parents[1] / "devkit" / PACKAGE


def fake_modules(entry: str = "fake_openai.py") -> tuple[str, ...]:
    """What `python -m openai_policy_devkit.fake_openai` imports of the devkit, followed through its
    imports (not the pytest fixture or the schema checks): a module added to the fake travels too."""
    found: list[str] = []
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.append(name)
        for node in ast.walk(ast.parse((DEVKIT / name).read_text())):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if module == PACKAGE:  # from openai_policy_devkit import fake_openai_x as x
                pending += [f"{alias.name}.py" for alias in node.names]  # type: ignore[attr-defined]
            elif module.startswith(PACKAGE + "."):  # from openai_policy_devkit.fake_openai_x import y
                pending.append(f"{module.removeprefix(PACKAGE + '.')}.py")
    return tuple(sorted(found))


FAKE_NAME = "fake-openai"
FAKE_PORT = 8080


class UpstreamRequest(dict):
    """One request the upstream received: ``path``, ``authorization`` and ``json`` (the body)."""


class Upstream(Protocol):
    base_url: str  # as the sidecar reaches it

    def requests(self) -> list[UpstreamRequest]: ...


class LocalUpstream:
    """The in-process fake (devkit/openai_policy_devkit/fake_openai_fixture.py)."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self.base_url = fake.base_url

    def requests(self) -> list[UpstreamRequest]:
        return [
            UpstreamRequest(path=r.path, authorization=r.headers.get("authorization"), json=r.json)
            for r in list(self.fake.requests)
        ]


class InClusterUpstream:
    """The fake as a Deployment + Service in ``namespace``, on ``image``."""

    def __init__(self, cluster: Kubectl, namespace: str, image: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.image = image
        self.base_url = f"http://{FAKE_NAME}.{namespace}.svc.cluster.local:{FAKE_PORT}/v1"

    def manifests(self) -> list[dict[str, Any]]:
        modules = fake_modules()
        files = {name: (DEVKIT / name).read_text() for name in modules}
        files["__init__.py"] = ""
        items = [
            {"key": "__init__.py", "path": "openai_policy_devkit/__init__.py"},
            *({"key": name, "path": f"openai_policy_devkit/{name}"} for name in modules),
        ]
        labels = {"app": FAKE_NAME}
        return [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": FAKE_NAME, "namespace": self.namespace},
                "data": files,
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": FAKE_NAME, "namespace": self.namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        # Never injected: it plays the OpenAI API, outside any policy.
                        "metadata": {
                            "labels": {**labels, "openaipolicy.dev/inject": "false"},
                            "annotations": {"openaipolicy.dev/inject": "false"},
                        },
                        "spec": {
                            "containers": [
                                {
                                    "name": "fake",
                                    "image": self.image,
                                    "command": ["python", "-m", "openai_policy_devkit.fake_openai"],
                                    "args": ["--host", "0.0.0.0", "--port", str(FAKE_PORT), "--record"],
                                    "env": [{"name": "PYTHONPATH", "value": "/fake"}],
                                    "ports": [{"name": "http", "containerPort": FAKE_PORT}],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/_fake/health", "port": FAKE_PORT},
                                        "periodSeconds": 1,
                                    },
                                    "volumeMounts": [
                                        {"name": "code", "mountPath": "/fake", "readOnly": True}
                                    ],
                                }
                            ],
                            "volumes": [{"name": "code", "configMap": {"name": FAKE_NAME, "items": items}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": FAKE_NAME, "namespace": self.namespace},
                "spec": {
                    "selector": labels,
                    "ports": [{"name": "http", "port": FAKE_PORT, "targetPort": FAKE_PORT}],
                },
            },
        ]

    def deploy(self, timeout: float = 180.0) -> None:
        apply(self.cluster, self.manifests())

        def ready() -> bool:
            found = get_json(self.cluster, "deployment", FAKE_NAME, "-n", self.namespace) or {}
            return (found.get("status") or {}).get("readyReplicas", 0) >= 1

        wait_for(ready, timeout, "the in-cluster fake upstream", 1.0)

    def requests(self) -> list[UpstreamRequest]:
        raw = self.cluster.kubectl(
            "get",
            "--raw",
            f"/api/v1/namespaces/{self.namespace}/services/{FAKE_NAME}:{FAKE_PORT}/proxy/_fake/requests",
        )
        out = []
        for entry in json.loads(raw.stdout):
            headers = {k.lower(): v for k, v in (entry.get("headers") or {}).items()}
            out.append(
                UpstreamRequest(
                    path=entry["path"], authorization=headers.get("authorization"), json=entry.get("json")
                )
            )
        return out
