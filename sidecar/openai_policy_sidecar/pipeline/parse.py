"""Stage parse: turn an incoming HTTP request into a validated ``ParsedRequest``.

Endpoint detection, body size limit and the type checks a caller gets wrong most often. A body
that would crash a later stage (a string where a list belongs, a boolean for ``max_tokens``) is
refused here with an OpenAI-shaped 400 naming the parameter, so later stages can trust the shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .. import refusals
from ..context import RequestContext

# Path → endpoint name used by tokens.count_input_tokens and the price/usage logic.
METERED_PATHS = {
    "/v1/chat/completions": "chat.completions",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}

USER_HEADER = "X-OpenAI-Policy-User"
FEATURE_HEADER = "X-OpenAI-Policy-Feature"


@dataclass
class ParsedRequest:
    method: str
    path: str  # e.g. /v1/chat/completions (no query)
    query: str  # raw query string, forwarded as is
    endpoint: str | None  # metered endpoint name, None for pass-through paths
    raw: bytes
    body: dict[str, Any] | None  # the JSON object, when the body is one
    model: str | None
    stream: bool
    user: str | None
    feature: str | None

    @property
    def metered(self) -> bool:
        return self.endpoint is not None


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of body; a larger body is refused with an OpenAI-shaped 413."""
    too_large = refusals.input_too_large(
        f"The request body is larger than this policy allows ({limit} bytes, spec.requests.maxBodyBytes).",
        status=413,
    )
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_large
        return await request.read()  # the common case: one read of a body of known size
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_error(param: str, expected: str, value: object) -> refusals.Refusal:
    return refusals.invalid_request(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
        param=param,
        code="invalid_type",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# Required body fields per metered endpoint and the JSON types they may take.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "chat.completions": ("model", "messages"),
    "responses": ("model",),
    "completions": ("model", "prompt"),
    "embeddings": ("model", "input"),
}
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "messages": (list,),
    "input": (str, list),
    "prompt": (str, list),
    "stream": (bool,),
    "stream_options": (dict,),
    "user": (str,),
    "safety_identifier": (str,),
    "n": (int,),
    "best_of": (int,),
}
_TYPE_NAMES = {str: "a string", list: "an array", bool: "a boolean", dict: "an object", int: "an integer"}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def validate_body(endpoint: str, body: object) -> dict[str, Any]:
    """Check the shape a metered endpoint needs; return the body as a dict."""
    if not isinstance(body, dict):
        raise refusals.invalid_request(
            f"The request body must be a JSON object, but got {_json_type(body)}.", code="invalid_json"
        )
    for name in _REQUIRED[endpoint]:
        if name not in body or body[name] is None:
            raise refusals.invalid_request(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
    for name, types in _TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
        if not ok:
            raise _type_error(name, " or ".join(_TYPE_NAMES[t] for t in types), value)
    for name in (*TOKEN_FIELDS, "n", "best_of"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise _type_error(name, "an integer", value)
        if value < 1:
            raise refusals.invalid_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                param=name,
                code="integer_below_min_value",
            )
    if not body["model"]:
        raise refusals.invalid_request("Invalid 'model': empty string.", param="model", code="invalid_value")
    return body


def decode_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refusals.invalid_request(
            f"We could not parse the JSON body of your request: {error.__class__.__name__}: {error}. "
            "(HINT: The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from None


def pick_user(body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str | None:
    """The end user a request is attributed to: the header wins, then safety_identifier, then user."""
    header = headers.get(USER_HEADER)
    if header:
        return header
    if body:
        for name in ("safety_identifier", "user"):
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
    return None


def parse(method: str, path: str, query: str, headers: Mapping[str, str], raw: bytes) -> ParsedRequest:
    """Validate a request already read into memory; raises ``refusals.Refusal`` with a 400 when malformed."""
    endpoint = METERED_PATHS.get(path.rstrip("/")) if method == "POST" else None
    body: dict[str, Any] | None = None
    content_type = headers.get("Content-Type", "")
    if endpoint is not None:
        body = validate_body(endpoint, decode_json(raw))
    elif raw and "json" in content_type:
        # Pass-through paths: look at the model when the body is a JSON object, never fail on it.
        try:
            decoded = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            decoded = None
        if isinstance(decoded, dict):
            body = decoded
    model = body.get("model") if body else None
    return ParsedRequest(
        method=method,
        path=path,
        query=query,
        endpoint=endpoint,
        raw=raw,
        body=body,
        model=model if isinstance(model, str) else None,
        stream=bool(body.get("stream")) if body and endpoint else False,
        user=pick_user(body, headers),
        feature=headers.get(FEATURE_HEADER) or None,
    )


def encode_body(body: dict[str, Any]) -> bytes:
    """The JSON bytes sent upstream for a body a stage rewrote."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def parse_request(ctx: RequestContext, request: web.Request, max_body_bytes: int) -> ParsedRequest:
    """Read and validate one request; record what it asks for in ``ctx.request``."""
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        raise refusals.not_found(request.path)
    raw = await read_body(request, max_body_bytes)
    parsed = parse(request.method, request.path, request.query_string, request.headers, raw)
    facts = ctx.request
    facts.endpoint, facts.stream = parsed.endpoint, parsed.stream
    facts.user, facts.feature, facts.model = parsed.user, parsed.feature, parsed.model
    return parsed
