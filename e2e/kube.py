"""The few cluster reads and writes the e2e flow makes, through the real ``kubectl``.

Everything goes through one ``kubectl`` callable, so the same helpers work against the local
control plane (``ControlPlane.kubectl``) and against any cluster reachable by a kubeconfig
(:class:`KubeconfigCluster`, the kind flavour).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

from openai_policy_devkit.polling import wait_for  # noqa: F401 - re-exported for the e2e modules


class Kubectl(Protocol):
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]: ...


class KubeconfigCluster:
    """A cluster reached through a kubeconfig and a kubectl on PATH (or in ``assets``)."""

    def __init__(self, kubeconfig: Path | str | None = None, kubectl_binary: str | None = None) -> None:
        self.kubeconfig = str(kubeconfig or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
        self.binary = kubectl_binary or shutil.which("kubectl") or "kubectl"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def apply(cluster: Kubectl, documents: list[dict[str, Any]]) -> None:
    """``kubectl apply`` a list of objects (server-side, so the flow never depends on client state)."""
    body = "\n".join(json.dumps(doc) for doc in documents)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=body)


def get_json(cluster: Kubectl, *args: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr or "not found" in result.stderr:
            return None
        raise RuntimeError(f"kubectl get {' '.join(args)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def condition(policy: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for entry in ((policy or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def get_oaip_table(cluster: Kubectl, namespace: str, *names: str) -> str:
    """What a person sees: ``kubectl get oaip`` (the CRD's printer columns)."""
    return cluster.kubectl("get", "oaip", "-n", namespace, *names).stdout


def get_oaip_row(cluster: Kubectl, namespace: str, name: str) -> dict[str, str]:
    """One row of ``kubectl get oaip``, keyed by column header (empty cells are "<none>")."""
    lines = get_oaip_table(cluster, namespace, name).splitlines()
    if len(lines) < 2:
        return {}
    header, row = lines[0], lines[1]
    # Columns are left-aligned under their headers: cut the row at each header's start.
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    titles = header.split()
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], len(row) + 1], strict=True)]
    return dict(zip(titles, cells, strict=True))


def pods_with_label(cluster: Kubectl, namespace: str, selector: str) -> list[dict[str, Any]]:
    found = get_json(cluster, "pods", "-n", namespace, "-l", selector) or {}
    return sorted(found.get("items") or [], key=lambda pod: pod["metadata"]["name"])
