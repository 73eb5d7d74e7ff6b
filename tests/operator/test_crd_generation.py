"""The CRD and the reference docs are generated from the model, are structural, and are fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from openai_policy_api import (
    OpenAIPolicy,
    PolicySpec,
    PolicyStatus,
    load_policy_file,
    spec_document,
)
from openai_policy_api.openapi import NotStructural, structural_schema, walk
from openai_policy_operator import crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
REGENERATE = "run `python -m openai_policy_operator.crd --write` and commit the result"


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return crd.build_crd()


@pytest.fixture(scope="module")
def schema(generated: dict[str, Any]) -> dict[str, Any]:
    return generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_is_what_the_model_generates() -> None:
    committed = (ROOT / crd.CRD_PATH).read_text(encoding="utf-8")
    assert committed == crd.render_crd_yaml(), f"{crd.CRD_PATH} is stale: {REGENERATE}"


def test_reference_docs_are_fresh() -> None:
    assert crd.stale_files(ROOT) == [], f"generated files are stale: {REGENERATE}"


def test_the_module_prints_the_crd() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openai_policy_operator.crd"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.stdout == crd.render_crd_yaml()
    assert yaml.safe_load(result.stdout)["metadata"]["name"] == "openaipolicies.openaipolicy.dev"


def test_write_and_check_in_a_scratch_tree(tmp_path: Path) -> None:
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert crd.main(["--write", "--root", str(tmp_path)]) == 0
    assert crd.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / crd.DOCS_PATH).write_text("edited by hand\n")
    assert crd.stale_files(tmp_path) == [crd.DOCS_PATH]


def test_names_subresources_and_columns(generated: dict[str, Any]) -> None:
    spec = generated["spec"]
    assert spec["group"] == "openaipolicy.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "OpenAIPolicy" and spec["names"]["plural"] == "openaipolicies"
    assert spec["names"]["shortNames"] == ["oaip"] and spec["names"]["categories"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"].upper(): c for c in version["additionalPrinterColumns"] if not c.get("priority")}
    assert list(columns) == ["READY", "ENFORCING", "SPEND", "REQUESTS", "BLOCKED", "AGE"]


def test_printer_columns_point_at_fields_of_the_status_model(
    schema: dict[str, Any], generated: dict[str, Any]
) -> None:
    paths = {p for p, _ in walk(schema)}
    for column in generated["spec"]["versions"][0]["additionalPrinterColumns"]:
        field = column["jsonPath"].lstrip(".").split("[")[0]
        if not field.startswith("metadata"):
            assert field in paths, column


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    forbidden = {
        "$ref",
        "$defs",
        "anyOf",
        "allOf",
        "oneOf",
        "not",
        "title",
        "const",
        "uniqueItems",
        "nullable",
    }
    for path, node in walk(schema):
        assert not forbidden & node.keys(), (path, forbidden & node.keys())
        assert "type" in node, path
        if node["type"] == "object" and path != "metadata":
            assert "properties" in node or "additionalProperties" in node, path
        assert node.get("additionalProperties", {}) is not False, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_every_spec_and_status_field_is_described(schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        if path.startswith(("spec", "status")) and not path.endswith(("[]", ".*")):
            assert len(node.get("description", "")) > 15, f"{path} has no useful description"


def _model_fields(model: type[BaseModel], prefix: str) -> list[tuple[str, Any]]:
    """(path as ``walk`` writes it, field info) of every field, following nested models."""
    found = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or name}"
        found.append((path, field))
        found += _nested(field.annotation, path)
    return found


def _nested(annotation: Any, path: str) -> list[tuple[str, Any]]:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return _nested(args[0], f"{path}[]")
    if origin is dict:
        return _nested(args[1], f"{path}.*")
    if args and origin is not Literal:
        return [found for arg in args if arg is not type(None) for found in _nested(arg, path)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_fields(annotation, path)
    return []


def test_every_model_field_is_in_the_schema_with_its_description(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    fields = _model_fields(PolicySpec, "spec") + _model_fields(PolicyStatus, "status")
    assert len(fields) > 100
    for path, field in fields:
        assert path in nodes, f"{path} is in the model but not in the CRD"
        if field.description:
            assert nodes[path]["description"].split()[:5] == field.description.split()[:5], path


def test_crd_defaults_equal_the_model_defaults(schema: dict[str, Any]) -> None:
    """Applying the CRD's defaults to an empty spec gives exactly the model's defaults."""

    def apply_defaults(node: dict[str, Any], value: Any) -> Any:
        if isinstance(value, dict) and "properties" in node:
            for name, sub in node["properties"].items():
                if name not in value and "default" in sub:
                    value[name] = yaml.safe_load(yaml.safe_dump(sub["default"]))
                if name in value:
                    value[name] = apply_defaults(sub, value[name])
        return value

    defaulted = apply_defaults(schema["properties"]["spec"], {})
    assert defaulted == spec_document(PolicySpec())


def test_status_schema_has_no_defaults(schema: dict[str, Any]) -> None:
    assert all("default" not in node for _, node in walk(schema["properties"]["status"]))


def test_cross_field_rules_are_cel(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    messages = " | ".join(
        rule["message"] for _, node in walk(spec) for rule in node.get("x-kubernetes-validations", [])
    )
    for words in (
        "downgradeAtPercent requires models.fallback",
        "pinned target",
        "fallback must be allowed",
        "at most once in budget.limits",
        "must be greater than budget.alertAtPercent",
        "baseDelaySeconds must not be greater",
        "must be an exact model id",
    ):
        assert words in messages
    for _, node in walk(spec):
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_openapi_schema(schema: dict[str, Any], path: Path) -> None:
    # Draft 4 is the JSON Schema dialect OpenAPI v3.0 builds on (boolean exclusiveMinimum).
    document = yaml.safe_load(path.read_text())
    jsonschema.Draft4Validator(schema["properties"]["spec"]).validate(document["spec"])
    jsonschema.Draft4Validator(schema["properties"]["spec"]).validate(
        load_policy_file(path).to_document()["spec"]
    )


def test_openapi_bounds_refuse_what_the_model_refuses(schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft4Validator(schema["properties"]["spec"])
    for bad in (
        {"budget": {"limits": [{"window": "month", "usd": 0}]}},
        {"mode": "x"},
        {"requests": {"maxOutputTokens": 0}},
        {"safety": {"pii": {"types": ["passport"]}}},
    ):
        assert list(validator.iter_errors(bad)), bad


def test_a_model_that_cannot_be_structural_is_refused() -> None:
    class Ambiguous(BaseModel):
        value: int | str = 1

    with pytest.raises(NotStructural, match="Ambiguous.value"):
        structural_schema(Ambiguous)


def test_generation_has_no_hidden_inputs() -> None:
    assert crd.render_crd_yaml() == crd.render_crd_yaml(crd.build_crd())
    assert OpenAIPolicy.model_fields["spec"].default_factory is not None
