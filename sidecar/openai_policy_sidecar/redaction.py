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
        # The most bytes a match can span, but for an unusually long mask run (whose cut-off part
        # never holds the last four, the identifying part).
        self.window = 2 * max((len(key) for key in self._full), default=0) + 8

    def __bool__(self) -> bool:
        return bool(self._full)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where the keys and their masked forms are in ``data``: sorted, overlaps merged."""
        found: list[tuple[int, int]] = []
        for key in self._full:
            index = data.find(key)
            while index != -1:
                found.append((index, index + len(key)))
                index = data.find(key, index + len(key))
        for key, tail, pattern in self._masked:
            if tail in data:
                found.extend(_masked_spans(data, key, pattern))
        if len(found) < 2:
            return found
        found.sort()
        merged = [found[0]]
        for start, end in found[1:]:
            if start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def bytes(self, data: bytes) -> bytes:
        spans = self.spans(data) if self._full else []
        if not spans:
            return data
        out: list[bytes] = []
        done = 0
        for start, end in spans:
            out += [data[done:start], REDACTED]
            done = end
        out.append(data[done:])
        return b"".join(out)

    def text(self, value: str) -> str:
        if not self._full:
            return value
        raw = value.encode("utf-8", "surrogateescape")
        cleaned = self.bytes(raw)
        return value if cleaned is raw else cleaned.decode("utf-8", "surrogateescape")


def _masked_spans(data: bytes, key: bytes, pattern: re.Pattern[bytes]) -> list[tuple[int, int]]:
    """Each ``<prefix of key><mask><last four of key>`` (the prefix may be empty)."""
    spans = []
    for match in pattern.finditer(data):
        end = match.end()
        if end < len(data) and data[end] in _KEY_CHARS:
            continue  # the four characters go on: not the end of a masked key
        start = match.start()
        while start > 0 and data[start - 1] in _KEY_CHARS:
            start -= 1
        if key.startswith(data[start : match.start()]):
            spans.append((start, end))
    return spans


class ChunkRedactor:
    """Redacts a body relayed chunk by chunk: a key split across two chunks is still found.

    The last ``window`` bytes of what arrived are held back until the next chunk (or the end),
    and never cut inside a match, so no key can leave half in one chunk and half in the next.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._redactor:
            return chunk
        data = self._held + chunk
        cut = len(data) - self._redactor.window
        if cut <= 0:
            self._held = data
            return b""
        for start, end in self._redactor.spans(data):
            if start < cut < end:
                cut = start
                break
        self._held = data[cut:]
        return self._redactor.bytes(data[:cut])

    def flush(self) -> bytes:
        data, self._held = self._held, b""
        return self._redactor.bytes(data)


@lru_cache(maxsize=8)
def _cached(secrets: tuple[str, ...]) -> Redactor:
    return Redactor(secrets)


def redactor_for(secrets: Sequence[str]) -> Redactor:
    """The redactor of the keys the sidecar holds now (every key it has held, after a rotation)."""
    return _cached(tuple(secrets))
