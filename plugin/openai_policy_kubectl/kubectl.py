"""The one way the plugin reaches the cluster: the real kubectl, with the caller's flags."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class KubectlError(RuntimeError):
    """kubectl failed; the message is kubectl's own (it names the missing RBAC verb, the object...)."""


@dataclass(frozen=True)
class Kubectl:
    """kubectl with the global flags the user gave the plugin (``--context``, ``--kubeconfig``)."""

    binary: str = "kubectl"
    kubeconfig: str | None = None
    context: str | None = None
    timeout_seconds: float = 60.0

    def _argv(self, args: Sequence[str]) -> list[str]:
        found = shutil.which(self.binary)
        if found is None:
            raise KubectlError(f"{self.binary} is not on PATH: the plugin runs the real kubectl")
        argv = [found]
        if self.kubeconfig:
            argv.append(f"--kubeconfig={self.kubeconfig}")
        if self.context:
            argv.append(f"--context={self.context}")
        return [*argv, *args]

    def run(self, *args: str, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(
                self._argv(args),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise KubectlError(
                f"kubectl {' '.join(args[:2])} timed out after {self.timeout_seconds:g}s"
            ) from None
        if done.returncode != 0:
            raise KubectlError(done.stderr.strip() or f"kubectl {' '.join(args[:2])} failed")
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def items(self, *args: str) -> list[dict[str, Any]]:
        found = self.json(*args)
        return list(found.get("items") or []) if found.get("kind", "").endswith("List") else [found]

    def current_namespace(self) -> str:
        found = self.run("config", "view", "--minify", "-o", "jsonpath={..namespace}").strip()
        return found or "default"

    def whoami(self) -> str:
        """The caller's user name as the API server sees it (recorded with a suspension)."""
        try:
            review = self.json("auth", "whoami")
        except (KubectlError, ValueError):
            return "unknown"
        return str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "unknown")
