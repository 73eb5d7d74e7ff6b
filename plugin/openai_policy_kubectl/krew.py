"""A krew release of the plugin: the archive and the manifest that points at it.

The plugin is Python, installed with pip (``pip install 'openai-policy-operator[kubectl]'``); what
krew installs is a small launcher named ``kubectl-oaip`` that runs it, and says what to install
when it is missing. ``python -m openai_policy_kubectl.krew --version V --uri-base URL --out DIR``
writes ``kubectl-oaip.tar.gz`` and ``oaip.yaml`` (with the archive's sha256) for a release.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

NAME = "oaip"
BINARY = "kubectl-oaip"
ARCHIVE = f"{BINARY}.tar.gz"

LAUNCHER = """#!/bin/sh
# kubectl oaip: runs the plugin installed with pip, in whichever python3 has it.
for python in "${OAIP_PYTHON:-}" python3 python; do
  [ -n "$python" ] && command -v "$python" >/dev/null 2>&1 || continue
  if "$python" -c 'import openai_policy_kubectl' >/dev/null 2>&1; then
    exec "$python" -m openai_policy_kubectl "$@"
  fi
done
echo "kubectl oaip: the plugin is not installed: pip install 'openai-policy-operator[kubectl]'" >&2
echo "  (or set OAIP_PYTHON to the python that has it)" >&2
exit 1
"""


def archive_bytes(license_text: str) -> bytes:
    """A reproducible tar.gz (fixed times and owners) of the launcher and the licence."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, text, mode in ((BINARY, LAUNCHER, 0o755), ("LICENSE", license_text, 0o644)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest(version: str, uri: str, sha256: str, homepage: str | None = None) -> dict[str, Any]:
    """The krew Plugin manifest (krew.googlecontainertools.github.com/v1alpha2)."""
    plugin: dict[str, Any] = {
        "apiVersion": "krew.googlecontainertools.github.com/v1alpha2",
        "kind": "Plugin",
        "metadata": {"name": NAME},
        "spec": {
            "version": version if version.startswith("v") else f"v{version}",
            "shortDescription": "Read and steer OpenAIPolicies: status, suspend, why, refusals",
            "description": (
                "Summarises OpenAIPolicies (spend per window, pods, conditions), suspends and resumes\n"
                "them with a recorded reason, explains why a pod was or was not given the sidecar,\n"
                "and finds what a sidecar decided for one request id. Runs with your kubeconfig and\n"
                "RBAC. Needs Python 3.11+ and: pip install 'openai-policy-operator[kubectl]'\n"
            ),
            "platforms": [
                {
                    "selector": {
                        "matchExpressions": [{"key": "os", "operator": "In", "values": ["linux", "darwin"]}]
                    },
                    "uri": uri,
                    "sha256": sha256,
                    "bin": BINARY,
                    "files": [{"from": BINARY, "to": "."}, {"from": "LICENSE", "to": "."}],
                }
            ],
        },
    }
    if homepage:
        plugin["spec"]["homepage"] = homepage
    return plugin


def release(
    out: Path, version: str, uri_base: str, license_text: str, homepage: str | None = None
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    archive = out / ARCHIVE
    archive.write_bytes(archive_bytes(license_text))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    plugin = manifest(version, f"{uri_base.rstrip('/')}/{ARCHIVE}", digest, homepage)
    path = out / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(plugin, sort_keys=False))
    return archive, path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openai_policy_kubectl.krew", description=__doc__)
    parser.add_argument("--version", required=True, help="the release, e.g. 0.1.0")
    parser.add_argument("--uri-base", required=True, help="where the release's files are downloaded from")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: %(default)s)")
    parser.add_argument("--homepage", help="the project's page, shown by kubectl krew info")
    parser.add_argument("--license", type=Path, default=Path("LICENSE"), help="the licence file to ship")
    args = parser.parse_args(argv)
    archive, path = release(args.out, args.version, args.uri_base, args.license.read_text(), args.homepage)
    print(f"wrote {archive} and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
