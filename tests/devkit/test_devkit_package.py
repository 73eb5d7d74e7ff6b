"""The dev kit is the one home of shared tooling: its commands run, its fixtures are plugins, and
nothing else (tests, e2e, bench, the demo) reaches into tests/ for tooling."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import openai_policy_devkit

ROOT = Path(__file__).resolve().parents[2]
DEVKIT = ROOT / "devkit" / "openai_policy_devkit"
CONFTESTS = ("tests/conftest.py", "e2e/conftest.py")


@pytest.mark.parametrize("module", ["fake_openai", "control_plane"])
def test_the_standalone_commands_explain_themselves(module: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"openai_policy_devkit.{module}", "--help"],
        cwd=tmp_path,  # from anywhere: the installed package, not this checkout's folders
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m openai_policy_devkit.{module}"), result.stdout


def test_the_package_says_what_it_is() -> None:
    assert openai_policy_devkit.__doc__ and "tooling" in openai_policy_devkit.__doc__


def _plugin_modules() -> set[str]:
    """Dev-kit modules that define fixtures for everyone: every non-autouse fixture. (An autouse
    fixture, like the sidecar helpers' client closer, is opted into by importing it; as a plugin
    it would run around every test.)"""
    modules: set[str] = set()
    for path in DEVKIT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                target = call.func if call else decorator
                if ast.unparse(target) != "pytest.fixture":
                    continue
                autouse = any(
                    k.arg == "autouse" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in (call.keywords if call else [])
                )
                if not autouse:
                    modules.add(f"openai_policy_devkit.{path.stem}")
    return modules


def _registered(conftest: str) -> list[str]:
    tree = ast.parse((ROOT / conftest).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


@pytest.mark.parametrize("conftest", CONFTESTS)
def test_both_conftests_register_every_devkit_fixture_module(conftest: str) -> None:
    plugins = _registered(conftest)
    assert plugins, f"{conftest} registers no pytest_plugins"
    assert set(plugins) == _plugin_modules(), conftest
    for name in plugins:
        assert (DEVKIT / f"{name.rsplit('.', 1)[-1]}.py").exists(), name


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _sources(top: str, pattern: str) -> list[Path]:
    """The project's files under ``top``: not what a tool installed there (bench/.venv holds LiteLLM)."""
    return [
        path
        for path in sorted((ROOT / top).rglob(pattern))
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    ]


def test_shared_tooling_comes_only_from_the_devkit() -> None:
    """e2e/, bench/ and the demo never import from tests/; a test imports from tests/ only its own
    package's helpers (tests/operator/cluster.py for the operator tests), never another's."""
    wrong: list[str] = []
    for top in ("tests", "e2e", "bench"):
        for path in _sources(top, "*.py"):
            relative = path.relative_to(ROOT)
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "support" or parts[:2] == ["tests", "support"]:
                    wrong.append(f"{relative}: {name}")
                elif parts[0] == "tests" and (top != "tests" or parts[:2] != list(relative.parts[:2])):
                    wrong.append(f"{relative}: {name}")
    assert not wrong, "shared tooling belongs in openai_policy_devkit:\n" + "\n".join(wrong)


def test_no_devkit_text_points_at_the_old_tests_support_folder() -> None:
    old = "tests" + "/support", "tests" + ".support"
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for top in ("devkit", "e2e", "bench", "tests")
        for path in _sources(top, "*")
        if path.suffix in {".py", ".md", ".sh", ".yaml"}
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(o in line for o in old)
    ]
    assert not stale, stale
