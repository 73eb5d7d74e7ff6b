"""JSON encoding on the request path: orjson, or the standard library where orjson would differ.

orjson encodes a request body some ten times faster than ``json.dumps`` (0.7 against 7.9 µs for
the bench's chat body, 56 µs against 2.1 ms for a 500 KB prompt) with the same output for what a
decoded body can hold (str keys, str, int, float, bool, None, lists, dicts), except integers
beyond 64 bits, which it refuses: those go through ``json``. Decoding stays with ``json`` (see
``pipeline.parse``): orjson turns a long integer into a float, silently.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Dataclasses and datetimes reach ``default`` (str), as with json.dumps(default=str).
_LINE_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps_body(value: Any) -> bytes:
    """Compact UTF-8 JSON: ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps_line(value: dict[str, Any]) -> str:
    """One log line: compact JSON, anything JSON has no type for written as its ``str``."""
    try:
        return orjson.dumps(value, default=str, option=_LINE_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, default=str)
