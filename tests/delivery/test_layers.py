"""The import layers of `make lint` really hold, and really catch a break.

lint-imports checks the contracts of pyproject's [tool.importlinter] (api < store < sidecar |
operator; product code never imports the dev kit, the OpenAI SDK or, in the sidecar, the
Kubernetes client). Passing on the real tree proves little by itself: a contract naming a
package that grimp cannot find, or a graph built from the editable install instead of the files,
would pass too. So each contract is also broken on purpose, in a copy of the tree, by appending
one import line to one module, and lint-imports must then fail and name that contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = {
    "api": "openai_policy_api",
    "store": "openai_policy_store",
    "sidecar": "openai_policy_sidecar",
    "operator": "openai_policy_operator",
    "devkit": "openai_policy_devkit",
    "plugin": "openai_policy_kubectl",
}


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _contract_against(source: str, target: str) -> str:
    """The contract that forbids `source` to import `target`: an independence contract listing
    both, or a forbidden contract with `source` among its sources and `target` forbidden."""
    for name, contract in _contracts().items():
        if contract["type"] == "independence" and {source, target} <= set(contract["modules"]):
            return name
        if contract["type"] == "forbidden" and source in contract["source_modules"]:
            if target in contract["forbidden_modules"]:
                return name
    raise AssertionError(f"no contract forbids {source} to import {target}")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the copy's pyproject, its package folders first on the path (before the
    editable install of the real tree, which the venv also holds) and no cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(tree / folder) for folder in PACKAGE_FOLDERS)
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The package folders and pyproject.toml, copied."""
    copy = tmp_path / "tree"
    copy.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(
            ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    return copy


def _a_module_of(tree: Path, folder: str) -> Path:
    """A plain module of the package (not its __init__), the first by name."""
    modules = sorted(
        p for p in (tree / folder / PACKAGE_FOLDERS[folder]).glob("*.py") if not p.name.startswith("_")
    )
    assert modules, folder
    return modules[0]


def test_the_real_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in _contracts():
        assert f"{name} KEPT" in result.stdout, result.stdout
    assert "0 broken" in result.stdout


def test_lint_imports_on_the_working_tree_passes() -> None:
    """As `make lint` runs it: from the repository root, through the editable install."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The package folder whose module gets the line, and the module the line imports.
BREAKS = [
    ("operator", "openai_policy_sidecar"),
    ("sidecar", "openai_policy_operator"),
    ("store", "openai_policy_operator"),
    ("store", "openai_policy_sidecar"),
    ("api", "openai_policy_store"),
    ("sidecar", "openai_policy_devkit"),
    ("operator", "openai"),
    ("sidecar", "kubernetes"),
]


@pytest.mark.parametrize(("folder", "target"), BREAKS, ids=[f"{f} imports {t}" for f, t in BREAKS])
def test_one_forbidden_import_breaks_its_contract(tree: Path, folder: str, target: str) -> None:
    contract = _contract_against(PACKAGE_FOLDERS[folder], target)
    module = _a_module_of(tree, folder)
    module.write_text(module.read_text() + f"\nimport {target}\n")
    result = _lint_imports(tree)
    assert result.returncode != 0, f"import {target} in {module} went unnoticed:\n{result.stdout}"
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert target in result.stdout.split(f"{contract}\n", 1)[-1], "the report names the import"
