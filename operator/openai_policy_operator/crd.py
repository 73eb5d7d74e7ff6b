"""Generate the OpenAIPolicy CustomResourceDefinition from the policy model.

    python -m openai_policy_operator.crd            # print the CRD YAML
    python -m openai_policy_operator.crd --write    # write crds/ and docs/policy-reference.md
    python -m openai_policy_operator.crd --check    # exit 1 if either file is stale

Everything in the schema (descriptions, defaults, enums, bounds, CEL rules) comes from
``openai_policy_api``; this module only adds what belongs to the CRD itself: names,
the status subresource and the ``kubectl get`` columns.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from openai_policy_api import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    PolicySpec,
    PolicyStatus,
)
from openai_policy_api.openapi import structural_schema

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = Path("crds") / f"{CRD_NAME}.yaml"
DOCS_PATH = Path("docs") / "policy-reference.md"
CATEGORIES: tuple[str, ...] = ("openai", "policy")
HEADER = (
    "# Generated from the OpenAIPolicy model (api/openai_policy_api/) by\n"
    "# `python -m openai_policy_operator.crd --write`. Do not edit by hand: tests fail when stale.\n"
)

# What `kubectl get oaip` shows. The status fields behind them are written by the operator.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the policy is valid and published to its sidecars.",
    },
    {
        "name": "Enforcing",
        "type": "string",
        "jsonPath": ".status.summary.pods",
        "description": "Sidecars reporting / pods injected.",
    },
    {
        "name": "Spend",
        "type": "string",
        "jsonPath": ".status.summary.spend",
        "description": "Spend against the tightest budget window.",
    },
    {
        "name": "Requests",
        "type": "integer",
        "jsonPath": ".status.usage.requests",
        "description": "Requests handled by the policy's sidecars.",
    },
    {
        "name": "Blocked",
        "type": "integer",
        "jsonPath": ".status.usage.blocked",
        "description": "Requests refused by the policy.",
    },
    {
        "name": "Mode",
        "type": "string",
        "jsonPath": ".spec.mode",
        "priority": 1,
        "description": "enforce or dryRun.",
    },
    {
        "name": "Suspended",
        "type": "boolean",
        "jsonPath": ".spec.suspend",
        "priority": 1,
        "description": "Whether the kill switch is on.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

RESOURCE_DESCRIPTION = (
    "OpenAIPolicy is a cluster policy for calls to the OpenAI API: the pods it selects get a sidecar "
    "proxy that enforces model choice, budgets, rate limits, timeouts, retries and safety checks, and "
    "reports spend and usage back into the policy's status."
)


def openapi_schema() -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD: spec and status derived from the model."""
    spec = structural_schema(PolicySpec)
    # An omitted spec is an all-defaults policy, exactly as the model reads it.
    spec["default"] = {}
    status = structural_schema(PolicyStatus, defaults=False)
    return {
        "type": "object",
        "description": RESOURCE_DESCRIPTION,
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object: openaipolicy.dev/v1alpha1.",
            },
            "kind": {"type": "string", "description": "Kind of this object: OpenAIPolicy."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "openai-policy-operator",
                "app.kubernetes.io/component": "crd",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (descriptions read well in the file)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_crd_yaml(crd: dict[str, Any] | None = None) -> str:
    """The CRD as the YAML text committed in ``crds/``."""
    body = yaml.dump(crd or build_crd(), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def repo_root() -> Path:
    """The checkout this module lives in (or the working directory when installed elsewhere)."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").exists() else Path.cwd()


def generated_files() -> dict[Path, str]:
    """Every generated file (relative path -> content)."""
    from .crd_reference import render_reference

    crd = build_crd()
    return {CRD_PATH: render_crd_yaml(crd), DOCS_PATH: render_reference(crd)}


def stale_files(root: Path) -> list[Path]:
    """Generated files under ``root`` that differ from what the model generates now."""
    stale = []
    for relative, content in generated_files().items():
        path = root / relative
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(relative)
    return stale


def write_files(root: Path) -> list[Path]:
    """(Re)write every generated file under ``root``; returns the paths written."""
    written = []
    for relative, content in generated_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m openai_policy_operator.crd", description=__doc__.split("\n")[0]
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write crds/ and docs/policy-reference.md")
    group.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    group.add_argument("--docs", action="store_true", help="print the policy reference (Markdown)")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    if args.write:
        for path in write_files(root):
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = stale_files(root)
        for path in stale:
            print(f"{path} is stale: run `python -m openai_policy_operator.crd --write`", file=sys.stderr)
        return 1 if stale else 0
    if args.docs:
        sys.stdout.write(generated_files()[DOCS_PATH])
        return 0
    sys.stdout.write(render_crd_yaml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
