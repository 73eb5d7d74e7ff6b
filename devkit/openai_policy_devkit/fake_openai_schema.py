"""OpenAI's own OpenAPI document as a strict JSON Schema validator, for checking the fake upstream.

The document (../shared/openai-openapi/openapi.yaml, OpenAPI 3.1 with some 3.0 leftovers) is
3 MB, so it is parsed once per process (`openai_schemas()` is cached). Before use it is rewritten
into plain JSON Schema 2020-12:

- `nullable: true` (an OpenAPI 3.0 keyword that 3.1 tools ignore) becomes `anyOf: [..., null]`,
  so `"usage": null` on a stream chunk is accepted and `"usage": "x"` is not;
- every object schema that lists `properties` (or combines others with `allOf`) and says nothing
  about extra keys gets `unevaluatedProperties: false`, so a misspelt or invented field fails
  validation. `allOf` members stay open, since their siblings contribute the other properties
  (the combining schema is the strict one); a named schema used there is referenced through an
  open copy, so it stays strict where it is used alone;
- `integer` means a JSON integer, not a float that happens to be whole.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DEFAULT_OPENAPI_PATH = Path(__file__).resolve().parents[3] / "shared" / "openai-openapi" / "openapi.yaml"
_BASE_URI = "urn:openai-openapi"
_REF_PREFIX = "#/components/schemas/"
_OPEN_SUFFIX = "__open"


def openapi_path() -> Path:
    """Where the spec lives: OPENAI_OPENAPI_YAML overrides the team's shared copy."""
    return Path(os.environ.get("OPENAI_OPENAPI_YAML", str(DEFAULT_OPENAPI_PATH)))


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside `node`, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _open_allof_members(components: dict[str, Any]) -> set[int]:
    """Make allOf members open; return the identities of the schema nodes to leave open.

    A named schema used inside an allOf (e.g. ResponseTextDeltaEvent, extended elsewhere with a
    `stream_id`) must stay strict where it is used alone, so allOf members point at an open copy of
    it (`Name__open`) instead. Inline allOf members are left open in place.
    """
    named = set()
    for node in _walk(components):
        members = node.get("allOf")
        for member in members if isinstance(members, list) else []:
            ref = member.get("$ref") if isinstance(member, dict) else None
            if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
                named.add(ref[len(_REF_PREFIX) :])
    for name in named:
        if name in components:
            components[f"{name}{_OPEN_SUFFIX}"] = copy.deepcopy(components[name])
    open_ids = {id(components[f"{name}{_OPEN_SUFFIX}"]) for name in named if name in components}
    for node in _walk(components):
        members = node.get("allOf")
        if not isinstance(members, list):
            continue
        for member in members:
            if not isinstance(member, dict):
                continue
            open_ids.add(id(member))
            ref = member.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF_PREFIX) and ref[len(_REF_PREFIX) :] in named:
                member["$ref"] = f"{ref}{_OPEN_SUFFIX}"
    return open_ids


def _tighten(node: dict[str, Any], open_ids: set[int]) -> None:
    """Close an object schema to unknown keys unless it is meant to be combined with others."""
    if id(node) in open_ids:
        return
    has_properties = isinstance(node.get("properties"), dict)
    if not has_properties and not isinstance(node.get("allOf"), list):
        return
    if node.get("type", "object") != "object":
        return
    if "additionalProperties" in node or "unevaluatedProperties" in node:
        return
    node["unevaluatedProperties"] = False


def _convert(node: Any, open_ids: set[int]) -> Any:
    """Rewrite one OpenAPI schema node (and its children) into JSON Schema 2020-12, in place."""
    if isinstance(node, list):
        return [_convert(item, open_ids) for item in node]
    if not isinstance(node, dict):
        return node
    for key, value in list(node.items()):
        if key in ("properties", "patternProperties", "$defs", "definitions"):
            # Maps of names to schemas: convert each schema, not the map itself.
            if isinstance(value, dict):
                node[key] = {name: _convert(sub, open_ids) for name, sub in value.items()}
        elif key not in ("example", "examples", "enum", "const", "default", "required"):
            node[key] = _convert(value, open_ids)
    _tighten(node, open_ids)
    if node.pop("nullable", False) is True:
        inner = dict(node)
        node.clear()
        node["anyOf"] = [inner, {"type": "null"}]
    return node


def _strict_integers() -> type[Validator]:
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)


class OpenAISchemas:
    """Validators for named component schemas of the OpenAI API."""

    def __init__(self, document: dict[str, Any]) -> None:
        components = document["components"]["schemas"]
        open_ids = _open_allof_members(components)
        converted = {"components": {"schemas": _convert(components, open_ids)}}
        self.components: dict[str, Any] = converted["components"]["schemas"]
        resource = Resource.from_contents(converted, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource(_BASE_URI, resource)
        self._validator_class = _strict_integers()
        self._validators: dict[str, Validator] = {}

    def validator(self, name: str) -> Validator:
        if name not in self.components:
            raise KeyError(f"no schema named {name!r} in components/schemas")
        if name not in self._validators:
            schema = {"$ref": f"{_BASE_URI}{_REF_PREFIX}{name}"}
            self._validators[name] = self._validator_class(schema, registry=self._registry)
        return self._validators[name]

    def errors(self, name: str, instance: Any) -> list[str]:
        """Human-readable validation errors of `instance` against schema `name` (empty: valid)."""
        found = []
        for error in self.validator(name).iter_errors(instance):
            # For anyOf failures the best sub-error is far more telling than "not valid under any".
            best = jsonschema.exceptions.best_match([error, *error.context]) if error.context else error
            where = "/".join(str(part) for part in best.absolute_path) or "<root>"
            found.append(f"{name} at {where}: {best.message}")
        return found

    def validate(self, name: str, instance: Any) -> None:
        """Raise AssertionError listing every way `instance` differs from schema `name`."""
        problems = self.errors(name, instance)
        if problems:
            raise AssertionError("\n".join(problems))

    def stream_event_schema(self, event_type: str) -> str:
        """The ResponseStreamEvent variant whose `type` is `event_type` (e.g. ResponseCreatedEvent)."""
        for variant in self.components["ResponseStreamEvent"]["anyOf"]:
            name = variant["$ref"][len(_REF_PREFIX) :]
            type_schema = self.components[name].get("properties", {}).get("type", {})
            if event_type in type_schema.get("enum", []) or type_schema.get("const") == event_type:
                return name
        raise KeyError(f"no ResponseStreamEvent variant has type {event_type!r}")


@functools.lru_cache(maxsize=2)
def openai_schemas(path: str | None = None) -> OpenAISchemas:
    """Parse and convert the spec once per process (it is 3 MB of YAML: a few seconds)."""
    source = Path(path) if path else openapi_path()
    with source.open("rb") as handle:
        document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return OpenAISchemas(document)
