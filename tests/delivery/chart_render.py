"""Rendering the helm chart with the helm binary of the control-plane assets (shared by the chart,
alert and dashboard tests; the `helm` fixture is in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "openai-policy-operator"
NAMESPACE = "opo-system"
# Kubernetes minor versions the chart supports (Chart.yaml kubeVersion >= 1.29: native sidecars).
SUPPORTED_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0")


class Helm:
    """The helm binary of the control-plane assets, with its state in a temporary directory."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._cache: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--values", "-"] if values is not None else []
        return subprocess.run(
            [str(self.binary), *args, *extra],
            input=yaml.safe_dump(values) if values is not None else None,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def template(
        self,
        values: dict[str, Any] | None = None,
        *,
        version: str = SUPPORTED_VERSIONS[-1],
        release: str = "opo",
        namespace: str = NAMESPACE,
        crds: bool = False,
    ) -> list[dict[str, Any]]:
        key = (json.dumps(values, sort_keys=True), version, f"{release}/{namespace}/{crds}")
        if key not in self._cache:
            args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", version]
            if crds:
                args.append("--include-crds")
            result = self.run(*args, values=values or {})
            assert result.returncode == 0, result.stderr
            self._cache[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return self._cache[key]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in matches]}"
    )
    return matches[0]
