"""The tooling of the real node (e2e/node/run.sh, scripts/cluster.sh, scripts/build-images.sh) and
what was fixed on the way: helm built as its release is, tokenizer files without Rust's cargo.

The node itself runs in `make test` through e2e/node/run.sh (the e2e tests on real pods); these
checks hold where it cannot start: it must say why in one line and still run the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from openai_policy_sidecar.tokenizer_files import verify

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "openai-policy-operator"
NO_PASSWD_UID = 65532


def test_plain_helm_template_passes_the_charts_kube_version(kubebuilder_assets: Path) -> None:
    """Built without the release's version flags, helm assumes Kubernetes 1.20 and a plain `helm
    template` fails the chart's kubeVersion (>= 1.29)."""
    done = subprocess.run(
        [str(kubebuilder_assets / "helm"), "template", "x", str(CHART)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: Deployment" in done.stdout


def test_tokenizer_files_provisioned_without_cargo(tmp_path: Path) -> None:
    """From the project's own copy (docker/tiktoken), checked against tiktoken's own hashes; no Rust on PATH."""
    target = tmp_path / "tiktoken"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "provision-tiktoken.sh"), sys.executable, str(target)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert verify(target) == target


def test_a_tampered_tokenizer_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for path in (ROOT / "docker" / "tiktoken").iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    tampered = source / "cl100k_base.tiktoken"
    tampered.write_bytes(tampered.read_bytes()[:-10] + b"AAAAAAAAA\n")
    done = subprocess.run(
        [sys.executable, "-m", "openai_policy_sidecar.tokenizer_files", "provision", "--from", str(source),
         "--to", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "but tiktoken expects" in done.stderr


def _wheel(directory: Path, name: str, requires: list[str]) -> None:
    requirements = "".join(f"Requires-Dist: {r}\n" for r in requires)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{requirements}"
    with zipfile.ZipFile(directory / f"{name}-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}-1.0.dist-info/METADATA", metadata)


@pytest.mark.parametrize(("version", "missing"), [("3.11.2", "async-timeout>=4.0.3"), ("3.11.14", "")])
def test_wheelhouse_names_what_the_images_interpreter_needs(
    tmp_path: Path, version: str, missing: str
) -> None:
    """pip download judges markers by the interpreter running it, not the image's: redis needs
    async-timeout below Python 3.11.3 (Debian's 3.11.2), which the wheelhouse must then hold."""
    _wheel(tmp_path, "redis", ['async-timeout>=4.0.3; python_full_version < "3.11.3"', "typing-extensions"])
    _wheel(tmp_path, "typing_extensions", [])
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "node" / "wheelhouse_missing.py"), str(tmp_path), version],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == missing


def _as_uid_without_passwd_entry(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", **env}, user=NO_PASSWD_UID,
        group=NO_PASSWD_UID, extra_groups=[], capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to a non-root uid needs root")
def test_where_no_node_can_start_make_test_says_why_in_one_line_and_runs_the_rest() -> None:
    command = 'echo "ran with: $OPENAI_POLICY_E2E_SKIP"; exit 7'
    done = _as_uid_without_passwd_entry(
        ["bash", str(ROOT / "e2e" / "node" / "run.sh"), "sh", "-c", command], {}
    )
    assert done.returncode == 7, done.stderr  # the command's own status
    assert done.stderr.splitlines() == [
        "e2e/node: e2e on a real node: skipped: not root (a kubelet, containerd and pod networking need root)"
    ]
    assert (
        done.stdout.strip()
        == "ran with: no real node: not root (a kubelet, containerd and pod networking need root)"
    )


def test_the_e2e_tests_skip_with_the_reason_they_are_given() -> None:
    env = {**os.environ, "OPENAI_POLICY_E2E_SKIP": "no real node: the reason"}
    env.pop("OPENAI_POLICY_E2E_CLUSTER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "e2e/test_local.py", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "SKIPPED" in done.stdout and "no real node: the reason" in done.stdout
