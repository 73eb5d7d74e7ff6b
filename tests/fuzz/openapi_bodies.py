"""Request-body strategies from OpenAI's own OpenAPI document, for fuzzing the sidecar.

The document's schemas are not self-contained (``$ref`` into ``components``, recursive schemas,
OpenAPI 3.0 leftovers), so each endpoint's body schema is inlined first: references expanded up
to a small depth (deeper ones become "any JSON object"), ``nullable`` turned into
``anyOf [..., null]``, annotations dropped. ``from_schema`` then draws values of that shape with
hypothesis: the keywords OpenAI's request schemas use (types, enum/const, anyOf/oneOf/allOf,
properties/required, items, length and range bounds), and occasionally a value of the wrong
type, since an app gets types wrong too. (hypothesis-jsonschema does the same for all of JSON
Schema, but its current release does not run on the hypothesis this project pins.)
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from hypothesis import strategies as st

from openai_policy_devkit.fake_openai_schema import openapi_path

# The endpoints the sidecar meters, by path under /v1, and the body schema OpenAI documents.
METERED = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/responses": "/responses",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
}
_MAX_REF_DEPTH = 4
_DROP = {
    "description",
    "example",
    "examples",
    "x-oaiMeta",
    "x-oaiTypeLabel",
    "x-oaiExpandable",
    "deprecated",
    "title",
    "discriminator",
    "readOnly",
    "x-stainless-const",
    "format",
}


@functools.cache
def _document() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(openapi_path(), encoding="utf-8") as stream:
        return yaml.load(stream, Loader=loader)  # noqa: S506 - a safe loader either way


def _inline(node: Any, components: dict[str, Any], depth: dict[str, int]) -> Any:
    if isinstance(node, list):
        return [_inline(item, components, depth) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if depth.get(name, 0) >= 1 or sum(depth.values()) >= _MAX_REF_DEPTH:
            return {"type": "object"}  # recursion or too deep: any object
        depth[name] = depth.get(name, 0) + 1
        try:
            return _inline(components[name], components, depth)
        finally:
            depth[name] -= 1
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("properties", "patternProperties", "$defs", "definitions"):
            out[key] = {name: _inline(sub, components, depth) for name, sub in value.items()}
        else:
            out[key] = _inline(value, components, depth)
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


# Bounds the document leaves open where the fake upstream would take a value literally (a
# billion embedding dimensions) and spend the test's time on it; OpenAI refuses such values.
_BOUNDS = {"dimensions": {"maximum": 3072}}


@functools.cache
def body_schema(path: str) -> dict[str, Any]:
    """The inlined JSON Schema of the body OpenAI documents for ``path`` (e.g. /v1/embeddings)."""
    document = _document()
    operation = document["paths"][METERED[path]]["post"]
    schema = _inline(
        operation["requestBody"]["content"]["application/json"]["schema"],
        document["components"]["schemas"],
        {},
    )
    for node in _mappings(schema):
        for name, bound in _BOUNDS.items():
            if isinstance(node.get("properties"), dict) and isinstance(node["properties"].get(name), dict):
                node["properties"][name] = {**node["properties"][name], **bound}
    return schema


def _mappings(node: Any) -> list[dict[str, Any]]:
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for member in schema["allOf"]:
        member = _merge_all_of(member) if "allOf" in member else member
        for key, value in member.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged.setdefault(key, value)
    return merged


def _string(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    low = schema.get("minLength", 0)
    high = schema.get("maxLength", max(low, 60))
    return st.text(min_size=low, max_size=min(high, low + 200))


def _number(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if integer:
        return st.integers(
            min_value=None if low is None else int(low), max_value=None if high is None else int(high)
        )
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)


def _object(schema: dict[str, Any], sloppy: bool) -> st.SearchStrategy[Any]:
    properties = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if name in properties]
    optional = [name for name in properties if name not in required]
    fixed = st.fixed_dictionaries(
        {name: from_schema(properties[name], sloppy) for name in required},
        optional={name: from_schema(properties[name], sloppy) for name in optional},
    )
    if properties:
        return fixed
    return st.dictionaries(st.text(max_size=12), ANY_JSON, max_size=4)


def from_schema(schema: Any, sloppy: bool = False) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (an inlined schema); ``sloppy``: now and then of the wrong type."""
    if not isinstance(schema, dict) or not schema:
        return ANY_JSON
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "allOf" in schema:
        return from_schema(_merge_all_of(schema), sloppy)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            rest = {k: v for k, v in schema.items() if k != key}
            return st.one_of([from_schema({**rest, **member}, sloppy) for member in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": one}, sloppy) for one in kind])
    if kind == "object" or "properties" in schema:
        made = _object(schema, sloppy)
    elif kind == "array":
        items = from_schema(schema.get("items", {}), sloppy)
        low = schema.get("minItems", 0)
        made = st.lists(items, min_size=low, max_size=max(low, min(schema.get("maxItems", 4), low + 4)))
    elif kind == "string":
        made = _string(schema)
    elif kind in ("integer", "number"):
        made = _number(schema, kind == "integer")
    elif kind == "boolean":
        made = st.booleans()
    elif kind == "null":
        made = st.none()
    else:
        return ANY_JSON
    if not sloppy:
        return made
    # One value in twenty is of any type at all: the mistakes apps make.
    return st.one_of(st.integers(0, 19).flatmap(lambda n: JSON_SCALARS if n == 0 else made))


@functools.cache
def bodies(path: str) -> st.SearchStrategy[Any]:
    """Request bodies for ``path``: three in four as OpenAI's schema says, the others sloppy."""
    schema = body_schema(path)
    return st.one_of(from_schema(schema), from_schema(schema), from_schema(schema), from_schema(schema, True))
