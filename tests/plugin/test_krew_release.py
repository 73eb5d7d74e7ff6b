"""The plugin's krew release: the manifest passes krew's own validator (which installs it from a
loopback download), and `kubectl krew install` puts a working `kubectl oaip` on PATH."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from openai_policy_kubectl import krew

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def krew_tools() -> Path:
    """krew and validate-krew-manifest, built and cached by scripts/setup-krew.sh."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "setup-krew.sh")], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over loopback HTTP, as a release's download host would serve it."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}/v0.1.0"
    finally:
        server.shutdown()
        server.server_close()


def test_the_release_is_reproducible_and_the_manifest_names_its_digest(tmp_path: Path) -> None:
    archive, manifest = krew.release(tmp_path / "a", "0.1.0", "https://example.invalid/v0.1.0", "licence")
    again, _ = krew.release(tmp_path / "b", "0.1.0", "https://example.invalid/v0.1.0", "licence")
    assert archive.read_bytes() == again.read_bytes()
    (platform,) = yaml.safe_load(manifest.read_text())["spec"]["platforms"]
    assert platform["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert platform["uri"] == "https://example.invalid/v0.1.0/kubectl-oaip.tar.gz"


def test_krew_validates_installs_and_runs_the_plugin(
    served: tuple[Path, str], krew_tools: Path, kubebuilder_assets: Path, tmp_path_factory
) -> None:
    folder, base = served
    _, manifest = krew.release(folder / "v0.1.0", "0.1.0", base, (ROOT / "LICENSE").read_text())
    krew_root = tmp_path_factory.mktemp("krew-root")
    path = os.pathsep.join(
        [str(krew_root / "bin"), str(krew_tools), str(kubebuilder_assets), "/usr/bin:/bin"]
    )
    env = {"PATH": path, "KREW_ROOT": str(krew_root), "HOME": str(krew_root)}

    validated = subprocess.run(
        [str(krew_tools / "validate-krew-manifest"), "-manifest", str(manifest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "installed fine" in validated.stderr + validated.stdout

    installed = subprocess.run(
        [
            "kubectl",
            "krew",
            "install",
            f"--manifest={manifest}",
            f"--archive={folder / 'v0.1.0' / krew.ARCHIVE}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # The launcher finds the pip-installed plugin through OAIP_PYTHON (here: this venv's python)...
    ran = subprocess.run(
        ["kubectl", "oaip", "--help"],
        capture_output=True,
        text=True,
        env={**env, "OAIP_PYTHON": sys.executable},
    )
    assert ran.returncode == 0 and "explain-refusal" in ran.stdout, ran.stderr
    # ...and, where no python has it, says what to install instead of a traceback.
    bare = subprocess.run(["kubectl", "oaip", "status"], capture_output=True, text=True, env=env)
    assert bare.returncode == 1 and "pip install 'openai-policy-operator[kubectl]'" in bare.stderr
