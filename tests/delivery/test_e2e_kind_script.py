"""e2e/kind/run.sh refuses clearly where it cannot run: no Docker, or Docker without its daemon.

(The happy path builds images and a kind cluster: it needs a Docker engine, which CI lacks.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "e2e" / "kind" / "run.sh"


def _bin_dir(tmp_path: Path, docker: str | None) -> Path:
    """A PATH with just what the script needs before its Docker check, and maybe a fake docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "timeout"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    if docker is not None:
        fake = bin_dir / "docker"
        fake.write_text(f"#!/bin/sh\n{docker}\n")
        fake.chmod(0o755)
    return bin_dir


def _run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_without_docker_it_says_so_and_fails(tmp_path: Path) -> None:
    result = _run(_bin_dir(tmp_path, docker=None))
    assert result.returncode != 0
    assert "Docker is not installed" in result.stderr
    assert "make test" in result.stderr  # and says what to run instead


def test_without_a_docker_daemon_it_says_so_and_fails(tmp_path: Path) -> None:
    result = _run(_bin_dir(tmp_path, docker='echo "Cannot connect to the Docker daemon" >&2; exit 1'))
    assert result.returncode != 0
    assert "daemon is not reachable" in result.stderr


def test_script_is_executable_and_parses() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
