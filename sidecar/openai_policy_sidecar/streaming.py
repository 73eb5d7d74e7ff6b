"""Relay a server-sent-events stream event by event, metering it on the way.

Each event is written to the caller as soon as it is complete: nothing waits for the end of
the stream. To learn a chat/completions stream's usage the sidecar may have asked upstream
for ``stream_options.include_usage``; then the usage-only final chunk and the ``"usage": null``
field it adds to every other chunk are removed again, so the caller receives exactly the
stream it would have received without the sidecar. Responses API streams always report usage
in their ``response.completed`` (or ``.incomplete`` / ``.failed``) event, so they pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .buffer_budget import Held
from .reported_usage import Usage, parse_usage, with_response_facts

_SEPARATORS = (b"\r\n\r\n", b"\n\n")
_NULL_USAGE_LAST = b',"usage":null}'
_TERMINAL_RESPONSE_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


def add_include_usage(endpoint: str, body: dict[str, Any]) -> bool:
    """Ask upstream for usage on a chat/completions stream; True when we changed the request."""
    if endpoint not in ("chat.completions", "completions"):
        return False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    body["stream_options"] = {**(options or {}), "include_usage": True}
    return True


def _data_of(event: bytes) -> bytes | None:
    """The payload of an event's ``data:`` line(s); None for comments/keep-alives."""
    if event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event:
        return event[6:]  # the usual event: one data line
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def _without_usage(data: bytes, obj: dict[str, Any]) -> bytes:
    """``data`` with its ``usage`` member removed, keeping every other byte when possible."""
    stripped = {key: value for key, value in obj.items() if key != "usage"}
    for needle in (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, '):
        if needle in data:
            candidate = data.replace(needle, b"", 1)
            try:
                if json.loads(candidate) == stripped:
                    return candidate
            except ValueError:
                pass
    return json.dumps(stripped, separators=(",", ":"), ensure_ascii=False).encode()


class StreamMeter:
    """Watches (and, when we added include_usage, repairs) the events of one stream."""

    def __init__(self, endpoint: str, strip_usage: bool) -> None:
        self.endpoint = endpoint
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.model: str | None = None
        self.response_id: str | None = None  # a Responses stream's response (remembered when stored)
        self.upstream_events = 0
        self.completed = False  # saw [DONE] or a terminal Responses event

    def transform(self, event: bytes) -> bytes | None:
        """The bytes to forward for one complete event (separator excluded), or None to drop it."""
        self.upstream_events += 1
        data = _data_of(event)
        if data is None:
            return event
        if data == b"[DONE]":
            self.completed = True
            return event
        if self.endpoint == "responses":
            self._watch_response_event(data)
            return event
        needs_model = self.model is None
        if not needs_model and data.endswith(_NULL_USAGE_LAST) and data.count(b'"usage"') == 1:
            # The common chunk of a stream we asked usage for: its last member (the top level's:
            # nothing but the object's own brace follows) is "usage":null and no other "usage"
            # is in it. Nothing to read; cut those bytes without parsing the chunk (the relay's
            # biggest cost per event otherwise).
            if not self.strip_usage:
                return event
            if event.endswith(data):
                return event[: -len(_NULL_USAGE_LAST)] + b"}"
        has_usage = b'"usage"' in data
        if not (needs_model or has_usage):
            return event
        try:
            obj = json.loads(data)
        except ValueError:
            return event
        if not isinstance(obj, dict):
            return event
        if needs_model and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if "usage" not in obj:
            return event
        usage = parse_usage(obj.get("usage"))
        if usage is not None:
            self.usage = with_response_facts(usage, obj)  # the tier the chunk names
        if not self.strip_usage:
            return event
        if obj.get("usage") is not None and not obj.get("choices"):
            return None  # the usage-only chunk exists only because we asked for it (even a malformed one)
        new_data = _without_usage(data, obj)
        return event.replace(data, new_data, 1) if data in event else b"data: " + new_data

    def _watch_response_event(self, data: bytes) -> None:
        is_terminal = any(marker in data for marker in _TERMINAL_RESPONSE_EVENTS)
        if not is_terminal and self.model is not None:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        response = obj.get("response") if isinstance(obj, dict) else None
        if not isinstance(response, dict):
            return
        if self.model is None and isinstance(response.get("model"), str):
            self.model = response["model"]
        if is_terminal:
            self.completed = True
            if isinstance(response.get("id"), str):
                self.response_id = response["id"]
            usage = parse_usage(response.get("usage"))
            if usage is not None:
                self.usage = with_response_facts(usage, response)  # tier and built-in tool calls


class StreamEventTooLarge(Exception):
    """One event of an upstream stream (or a stream without separators) outgrew its cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a stream event was larger than {limit} bytes")
        self.limit = limit


async def split_events(
    chunks: AsyncIterator[bytes], max_event_bytes: int | None = None, held: Held | None = None
) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield (event, separator) for each complete SSE event as soon as its blank line arrives.

    At most ``max_event_bytes`` of one event are held: an event that grows past it (a stream that
    never sends a blank line is one endless event) raises ``StreamEventTooLarge``. Each byte is
    searched once, so a long event costs linear time, not a rescan per chunk. ``held`` counts
    what is buffered against the process's budget (``buffer_budget``), which may cut it sooner.
    """
    buffer = bytearray()
    scanned = 0  # bytes of buffer known to hold no separator start
    async for chunk in chunks:
        if not buffer and len(chunk) > 1 and chunk.find(b"\n\n") == len(chunk) - 2 and b"\r" not in chunk:
            # The usual read of a paced stream: exactly one whole event (its only separator ends
            # the chunk). Yield it without copying it through the buffer.
            if max_event_bytes is not None and len(chunk) - 2 > max_event_bytes:
                raise StreamEventTooLarge(max_event_bytes)
            yield chunk[:-2], b"\n\n"
            continue
        buffer += chunk
        if held is not None:
            held.resize(len(buffer))
        while True:
            start = max(0, scanned - 3)  # a separator may straddle the previous chunk's end
            cut = -1
            separator = b""
            for candidate in _SEPARATORS:
                index = buffer.find(candidate, start)
                if index != -1 and (cut == -1 or index < cut):
                    cut, separator = index, candidate
            if cut == -1:
                scanned = len(buffer)
                if held is not None:
                    held.resize(len(buffer))  # what the events yielded freed
                if max_event_bytes is not None and len(buffer) > max_event_bytes:
                    raise StreamEventTooLarge(max_event_bytes)
                break
            if max_event_bytes is not None and cut > max_event_bytes:
                raise StreamEventTooLarge(max_event_bytes)
            event = bytes(buffer[:cut])
            del buffer[: cut + len(separator)]
            scanned = 0
            yield event, separator
    if bytes(buffer).strip():
        yield bytes(buffer), b""
