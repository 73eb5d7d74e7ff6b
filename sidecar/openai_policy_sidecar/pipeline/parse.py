"""Stage parse: turn an incoming HTTP request into a validated ``ParsedRequest``.

Endpoint detection, body size limit and the type checks a caller gets wrong most often. A body
that would crash a later stage (a string where a list belongs, a boolean for ``max_tokens``) is
refused here with an OpenAI-shaped 400 naming the parameter, so later stages can trust the shape.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .. import form_body, refusals
from ..context import RequestContext
from ..fast_json import dumps_body
from ..surfaces import AmbiguousPath, Route, classify, normalise_path

# The body comes over loopback from the app: a body still arriving after this long is a client
# stuck or trickling on purpose, holding a connection and a handler.
BODY_TIMEOUT_SECONDS = 30.0

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
    route: Route | None = None  # the surfaces table's entry; None: a path it does not know
    form: form_body.FormBody | None = None  # an upload's form fields (metered form endpoints)

    @property
    def metered(self) -> bool:
        return self.endpoint is not None


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of body; a larger body is refused with an OpenAI-shaped 413."""
    too_large = refusals.input_too_large(
        f"The request body is larger than this policy allows ({limit} bytes, spec.requests.maxBodyBytes).",
        status=413,
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            if request.content_length is not None:
                return await request.read()  # the common case: one read of a body of known size
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)
    except (ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
        raise ClientGone(str(error)) from None
    except TimeoutError:
        raise refusals.Refusal(
            408,
            "request_timeout",
            f"The request body did not arrive within {BODY_TIMEOUT_SECONDS:g} seconds.",
        ) from None


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
    # Images and audio: metered per surface (media.py). The model is required through the
    # sidecar, so that the allow-list and the price always apply to the model that will run.
    "images.generations": ("model", "prompt"),
    "images.edits": ("model", "prompt"),
    "images.variations": ("model",),
    "audio.speech": ("model", "input", "voice"),
    "audio.transcriptions": ("model",),
    "audio.translations": ("model",),
}
# Upload endpoints: their body is a form (form_body.py), read like a JSON one.
FORM_ENDPOINTS = frozenset(
    {"images.edits", "images.variations", "audio.transcriptions", "audio.translations"}
)
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
# The endpoints the pipeline meters (their names come from surfaces.py). A route the table calls
# metered whose endpoint is not here is refused by endpoint_gate: never forwarded unmetered.
METERED_ENDPOINTS: frozenset[str] = frozenset(_REQUIRED)


def validate_body(endpoint: str, body: object) -> dict[str, Any]:
    """Check the shape a metered endpoint needs; return the body as a dict."""
    if not isinstance(body, dict):
        raise refusals.invalid_request(
            f"The request body must be a JSON object, but got {_json_type(body)}.", code="invalid_json"
        )
    for name in _REQUIRED[endpoint]:
        if name == "model" and endpoint == "responses" and isinstance(body.get("prompt"), dict):
            continue  # a stored prompt may carry its model: model_choice.prompt_model decides
        if name not in body or body[name] is None:
            raise refusals.invalid_request(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
    for name, types in _TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        if name == "prompt" and endpoint == "responses":
            types = (dict,)  # Responses: a reference to a stored prompt, not text
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
    if "model" in body and not body["model"]:
        raise refusals.invalid_request("Invalid 'model': empty string.", param="model", code="invalid_value")
    return body


# Nesting deeper than any OpenAI request needs (structured-output schemas stop at 10 levels,
# a few JSON levels each); far below the interpreter's recursion limit, so that no later stage
# that walks or re-encodes the body can run out of stack.
MAX_DEPTH = 100
# Python refuses to convert integers longer than this (sys.get_int_max_str_digits()).
_MAX_INT_DIGITS = 4300
# A lone surrogate can only arrive as a \\uD800-\\uDFFF escape or as its UTF-8-shaped bytes (json
# decodes bytes with "surrogatepass"); a body without either needs no walk.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_COLON = re.compile(rb"\s*:")


class ClientGone(Exception):
    """The caller closed its connection before the whole request arrived: nobody to answer."""


class _Syntax(Exception):
    """The body is not JSON at all (as opposed to JSON beyond what the sidecar accepts)."""


class _Rejected:
    """What the locating re-parse puts where a value the normal parse refused stood."""

    def __init__(self, what: str) -> None:
        self.what = what


def decode_json(raw: bytes) -> object:
    """The decoded body; every malformed or hostile body is a 400 naming the parameter."""
    try:
        return _decode(raw)
    except _Syntax as error:
        raise refusals.invalid_request(
            f"We could not parse the JSON body of your request: {error}. "
            "(HINT: The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from None


def _decode(raw: bytes) -> object:
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep(_deep_key(raw)) from None
    except _NonFinite:
        raise _non_json_value(raw) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _Syntax(f"{error.__class__.__name__}: {error}") from None
    except ValueError:  # an integer longer than Python converts
        raise _non_json_value(raw) from None
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        deep = _path_deeper_than(value, MAX_DEPTH)
        if deep is not None:
            raise _too_deep(deep)
    if _SURROGATE_HINT.search(raw):
        where = _find(value, lambda item: isinstance(item, str) and _SURROGATE.search(item) is not None)
        if where is not None:
            raise refusals.invalid_request(
                f"Invalid '{where}': the string contains a lone UTF-16 surrogate, which is not valid "
                "Unicode and cannot be sent on.",
                param=where,
                code="invalid_value",
            )
    return value


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> object:
    # NaN and Infinity are not JSON; Python's decoder accepts them, OpenAI's does not.
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON that no double holds: Python makes it inf, which cannot be sent on as
    # JSON (the encoder would write Infinity, or null), so it is refused like Infinity itself.
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(text)
    return value


def _marked_float(text: str) -> object:
    value = float(text)
    return value if math.isfinite(value) else _Rejected("number")


def _non_json_value(raw: bytes) -> refusals.Refusal:
    """A NaN/Infinity or an integer too long to convert: re-parse marking it, to name where."""

    def marked_int(text: str) -> object:
        return _Rejected("number") if len(text.lstrip("-")) > _MAX_INT_DIGITS else int(text)

    try:
        value = json.loads(raw, parse_int=marked_int, parse_float=_marked_float, parse_constant=_Rejected)
    except (RecursionError, ValueError):
        value = None
    where = _find(value, lambda item: isinstance(item, _Rejected))
    return refusals.invalid_request(
        f"Invalid '{where or 'body'}': a number that is not finite or has more than "
        f"{_MAX_INT_DIGITS} digits.",
        param=where,
        code="invalid_value",
    )


def _too_deep(param: str | None) -> refusals.Refusal:
    return refusals.invalid_request(
        f"Invalid '{param or 'body'}': JSON nested more than {MAX_DEPTH} levels deep.",
        param=param,
        code="invalid_value",
    )


def _join(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _find(value: object, wanted: Callable[[object], bool]) -> str | None:
    """The JSON path (``messages[0].content``) of the first item, key or value, that is ``wanted``."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if wanted(item):
            return path or None
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                here = _join(path, key)
                if wanted(key):
                    return here
                stack.append((child, here))
        elif isinstance(item, list):
            stack.extend((child, _join(path, i)) for i, child in reversed(list(enumerate(item))))
    return None


def _path_deeper_than(value: object, limit: int) -> str | None:
    """The top-level parameter under which nesting exceeds ``limit``, or None."""
    stack: list[tuple[object, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, top = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return top or "body"
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(child, dict | list):
                    stack.append((child, depth + 1, top or _join("", key)))
    return None


def _deep_key(raw: bytes) -> str | None:
    """The top-level key of a body too deep to decode at all, from its bytes."""
    depth, key = 0, None
    for token in _TOKEN.finditer(raw):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
            if depth > MAX_DEPTH:
                return key
        elif text in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and _COLON.match(raw, token.end()):
            try:
                key = json.loads(text)
            except ValueError:
                key = None
    return key


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
    route = classify(method, path)
    endpoint = route.endpoint if route is not None and route.endpoint in METERED_ENDPOINTS else None
    body: dict[str, Any] | None = None
    content_type = headers.get("Content-Type", "")
    form = None
    if endpoint in FORM_ENDPOINTS and form_body.is_form(content_type):
        form = form_body.parse_form(raw, content_type)
        body = validate_body(endpoint, form.as_body())
    elif endpoint is not None:
        body = validate_body(endpoint, decode_json(raw))
    elif raw and "json" in content_type:
        # Pass-through paths: look at the model when the body is a JSON object. What is not JSON
        # goes on as is (the upstream answers it); JSON the sidecar cannot handle safely is
        # refused, or a lone surrogate would be a way around the model allow-list.
        try:
            decoded = _decode(raw)
        except _Syntax:
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
        route=route,
        form=form,
    )


def encode_body(body: dict[str, Any]) -> bytes:
    """The JSON bytes sent upstream for a body a stage rewrote."""
    return dumps_body(body)


async def parse_request(ctx: RequestContext, request: web.Request, max_body_bytes: int) -> ParsedRequest:
    """Read and validate one request; record what it asks for in ``ctx.request``.

    Every later decision, and the upstream call, uses the normalised path (surfaces.normalise_path).
    """
    path = request_path(request)
    ctx.request.path = path
    if not (path == "/v1" or path.startswith("/v1/")):
        raise refusals.not_found(path)
    raw = await read_body(request, max_body_bytes)
    parsed = parse(request.method, path, request.query_string, request.headers, raw)
    facts = ctx.request
    facts.endpoint, facts.stream = parsed.endpoint, parsed.stream
    facts.user, facts.feature, facts.model = parsed.user, parsed.feature, parsed.model
    return parsed


def request_path(request: web.Request) -> str:
    """The normalised path of a request, from the target as received (aiohttp's ``path`` is
    already decoded, so an encoded ``/`` could not be told from a real one)."""
    raw = getattr(request, "raw_path", None) or request.path  # test doubles carry only ``path``
    try:
        return normalise_path(raw.partition("?")[0])
    except AmbiguousPath as ambiguous:
        raise refusals.invalid_path(str(ambiguous)) from None
