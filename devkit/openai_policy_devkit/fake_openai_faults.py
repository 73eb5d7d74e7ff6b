"""Scripted faults for the fake OpenAI upstream: what to break, for which requests, how often.

A test queues faults with `add_fault(kind, times=1, match=None, **params)`. For each request the
fake asks `FaultBook.take(path, streaming)`, which returns at most one fault per kind (the oldest
matching one) and counts one use off each; a fault with `times=None` stays until cleared. So two
queued 429s answer two consecutive requests, and a `latency` fault can combine with a `model` one.

Stream faults (`cut_stream`, `stall_stream` and the hostile stream ones in `STREAM_ONLY`) only
match streaming requests, so they wait for the stream they are meant for instead of being used up
by a plain call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# kind -> (required params, optional params with defaults)
FAULT_KINDS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "latency": (("seconds",), {}),
    "status": (("status",), {"retry_after": None, "retry_after_ms": None, "body": None, "headers": None}),
    "hang": ((), {}),
    "cut_stream": ((), {"after_events": 1}),
    "stall_stream": ((), {"after_events": 1, "seconds": None}),
    "model": (("model",), {}),
    # Extras beyond the contract's list, for usage tests: how many prompt tokens the reply reports as
    # served from the prompt cache, and the exact reply text (hence completion token count).
    "cached_tokens": (("tokens",), {}),
    "reply": (("text",), {}),
    # A hostile or broken upstream, for the sidecar's limits and key hygiene:
    # - huge_body: a 200 JSON body of `bytes` bytes, sent in chunks as it is made (never held whole);
    #   with declare_length the Content-Length header announces it.
    # - stream_no_separators: a 200 event stream that sends `bytes` bytes without one blank line.
    # - huge_event: a normal first event, then one event of `bytes` bytes, then the rest.
    # - usage: the reply's usage object replaced by `usage` (any JSON: negative, strings, ...).
    # - echo_key_header: the Bearer token the fake received, echoed in the response header `name`.
    # - masked_key_401: a 401 quoting the received key the way OpenAI masks it (prefix, ****, last four).
    # - key_in_stream: the received key inside one event's text, written a few bytes at a time.
    "huge_body": (("bytes",), {"declare_length": False}),
    "stream_no_separators": (("bytes",), {}),
    "huge_event": (("bytes",), {}),
    "usage": (("usage",), {}),
    "echo_key_header": ((), {"name": "x-upstream-debug-auth"}),
    "masked_key_401": ((), {}),
    "key_in_stream": ((), {"piece_bytes": 5}),
}
STREAM_ONLY = frozenset({"cut_stream", "stall_stream", "stream_no_separators", "huge_event", "key_in_stream"})


class FaultError(ValueError):
    """A fault was scripted with an unknown kind or wrong parameters."""


@dataclass
class Fault:
    kind: str
    params: dict[str, Any]
    times: int | None = 1
    match: str | None = None
    used: int = field(default=0)

    def applies_to(self, path: str, streaming: bool) -> bool:
        if self.kind in STREAM_ONLY and not streaming:
            return False
        return self.match is None or self.match in path

    def __getattr__(self, name: str) -> Any:
        # fault.seconds, fault.status, ... read the kind's parameters.
        try:
            return self.__dict__["params"][name]
        except KeyError:
            raise AttributeError(name) from None


def make_fault(kind: str, times: int | None = 1, match: str | None = None, **params: Any) -> Fault:
    """Validate a fault description (unknown kinds and parameters fail loudly, not silently)."""
    if kind not in FAULT_KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    required, optional = FAULT_KINDS[kind]
    missing = [name for name in required if name not in params]
    unknown = [name for name in params if name not in required and name not in optional]
    if missing or unknown:
        raise FaultError(f"fault {kind!r}: missing {missing or '-'}, unknown {unknown or '-'}")
    if times is not None and times < 1:
        raise FaultError("times must be >= 1, or None for 'until cleared'")
    return Fault(kind=kind, params={**optional, **params}, times=times, match=match)


class FaultBook:
    """The queue of scripted faults; safe to use from the test thread and the server thread."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, path: str, streaming: bool) -> dict[str, Fault]:
        """The faults that hit this request, by kind; uses them up."""
        if not self._faults:  # the benchmark hot path: no lock, no allocation beyond the dict
            return {}
        chosen: dict[str, Fault] = {}
        with self._lock:
            for fault in self._faults:
                if fault.kind not in chosen and fault.applies_to(path, streaming):
                    chosen[fault.kind] = fault
                    fault.used += 1
            self._faults = [f for f in self._faults if f.times is None or f.used < f.times]
        return chosen
