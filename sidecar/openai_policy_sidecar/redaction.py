"""Keep the upstream API key out of everything the sidecar passes back to the app.

An upstream may quote the key, in full ("Incorrect API key provided: sk-...") or in OpenAI's
masked form (the key's first characters, a run of ``*`` and its last four, e.g.
``sk-proj-****zz99``), in a body or in a header. The masked form is enough to tell which key a
pod uses, so it is removed too. Keys are ASCII, and JSON never escapes their characters, so a
byte-level search finds every quoted copy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

REDACTED = b"[REDACTED]"
_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_TAIL = 4  # OpenAI shows the last four characters of a masked key


class Redactor:
    """Redacts a fixed set of keys (full and masked) from bytes and header values."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._full = [s.encode() for s in secrets if s]
        self._masked = [
            (key, key[-_TAIL:], re.compile(rb"(?:\*+|\.{3,}|\xe2\x80\xa6)" + re.escape(key[-_TAIL:])))
            for key in self._full
            if len(key) > _TAIL
        ]

    def __bool__(self) -> bool:
        return bool(self._full)

    def bytes(self, data: bytes) -> bytes:
        for key in self._full:
            if key in data:
                data = data.replace(key, REDACTED)
        for key, tail, pattern in self._masked:
            if tail in data:
                data = _redact_masked(data, key, pattern)
        return data

    def text(self, value: str) -> str:
        if not self._full:
            return value
        raw = value.encode("utf-8", "surrogateescape")
        cleaned = self.bytes(raw)
        return value if cleaned is raw else cleaned.decode("utf-8", "surrogateescape")


def _redact_masked(data: bytes, key: bytes, pattern: re.Pattern[bytes]) -> bytes:
    """Replace each ``<prefix of key><mask><last four of key>`` (the prefix may be empty)."""
    out: list[bytes] = []
    done = 0
    for match in pattern.finditer(data):
        end = match.end()
        if end < len(data) and data[end] in _KEY_CHARS:
            continue  # the four characters go on: not the end of a masked key
        start = match.start()
        while start > done and data[start - 1] in _KEY_CHARS:
            start -= 1
        if not key.startswith(data[start : match.start()]):
            continue
        out += [data[done:start], REDACTED]
        done = end
    if not out:
        return data
    out.append(data[done:])
    return b"".join(out)


@lru_cache(maxsize=8)
def _cached(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redactor_for(secrets: Sequence[str]) -> Redactor:
    """The redactor of the keys the sidecar holds now (every key it has held, after a rotation)."""
    return _cached(tuple(secrets))
