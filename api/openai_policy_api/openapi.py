"""Turn the pydantic model's JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

Kubernetes accepts only a subset of JSON Schema in a CRD: no ``$ref``, every node typed, no
``anyOf`` with ``null`` (an unset optional field is simply absent), ``exclusiveMinimum`` as a
boolean beside ``minimum``, ``additionalProperties`` only for maps. This module rewrites the
schema pydantic generates from the model into that form, so that the model stays the one
source of every description, default, bound, enum and CEL rule.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from .base import CEL_RULES
from .problems import PATTERN_HINTS

# Keys of pydantic's output that carry no meaning for the API server.
_DROP = frozenset({"title", "$schema", "examples"})


class NotStructural(ValueError):
    """The model uses a construct that has no structural OpenAPI equivalent."""


class _Generator(GenerateJsonSchema):
    """Puts ``default_factory`` defaults into the schema too (pydantic leaves them out).

    A nested object whose default is a whole model gets ``default: {}``: the API server then
    applies the defaults of the object's own fields, so the values are stated once, on the
    fields themselves.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            return {} if isinstance(value, BaseModel) else value
        return schema.get("default", NoDefault)


def structural_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (camelCase names).

    ``defaults=False`` leaves every ``default`` out (used for status, which only the operator writes).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Generator)
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, defaults=defaults, path=model.__name__)


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (or a one-element ``allOf``); keys beside it (description, default) win."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
    while "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        node = {**copy.deepcopy(definitions[name]), **node}
    return node


def _unwrap_optional(node: dict[str, Any], path: str) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` -> X; an unset optional field is absent, not null."""
    options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
    if len(options) != 1:
        raise NotStructural(f"{path}: a union of several types cannot be expressed in a structural schema")
    if node.get("default", NoDefault) is None:
        node.pop("default")
    return {**options[0], **node}


def _convert(
    node: dict[str, Any], definitions: dict[str, Any], *, defaults: bool, path: str
) -> dict[str, Any]:
    node = _resolve(node, definitions)
    if "anyOf" in node:
        node = _resolve(_unwrap_optional(node, path), definitions)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and not defaults:
            continue
        if key == "properties":
            out[key] = {
                name: _convert(sub, definitions, defaults=defaults, path=f"{path}.{name}")
                for name, sub in value.items()
            }
        elif key == "items":
            out[key] = _convert(value, definitions, defaults=defaults, path=f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _convert(value, definitions, defaults=defaults, path=f"{path}.*")
            # ``false`` (a closed object) is the structural default: unknown fields are refused
            # by the API server's field validation, so it is left out.
        elif key == "description":
            out[key] = _paragraphs(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key in ("uniqueItems", "propertyNames", "oneOf", "not", "$ref", "allOf", "anyOf"):
            raise NotStructural(f"{path}: {key!r} is not allowed in a structural schema")
        else:
            out[key] = value
    _pattern_as_rule(out)
    if "type" not in out:
        if "enum" in out and all(isinstance(v, str) for v in out["enum"]):
            out["type"] = "string"
        else:
            raise NotStructural(f"{path}: every node of a structural schema needs a type")
    if out["type"] == "object" and "properties" not in out and "additionalProperties" not in out:
        raise NotStructural(f"{path}: an object needs properties or additionalProperties")
    return out


def _pattern_as_rule(node: dict[str, Any]) -> None:
    """Replace a ``pattern`` that has a human wording by a CEL rule carrying that wording.

    The API server's message for a failed ``pattern`` quotes the regular expression; the rule's
    message says what is expected in words (the same words the model's own error uses).
    """
    hint = PATTERN_HINTS.get(node.get("pattern", ""))
    if hint is None:
        return
    pattern = node.pop("pattern")
    if "'" in pattern:
        raise NotStructural(f"pattern {pattern!r} cannot be written as a CEL raw string")
    node.setdefault(CEL_RULES, []).append(
        {"rule": f"self.matches(r'{pattern}')", "message": f"must be {hint}"}
    )


def _paragraphs(text: str) -> str:
    """Join the lines of each paragraph (docstrings wrap at ~100 columns; kubectl explain re-wraps)."""
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in text.strip().split("\n\n"))


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every node of a structural schema with its path (``spec.budget.limits[].usd``), parents first."""
    found = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        found += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += walk(schema["additionalProperties"], f"{path}.*")
    return found
