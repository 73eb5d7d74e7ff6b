"""Exact-match response cache: key, cacheability, entry format, stream replay, pluggable backends.

Key. SHA-256 over a canonical JSON of the request *as it will be sent upstream, minus what cannot
change the answer*. Rather than list the fields that matter (model after pinning, messages /
input / prompt, temperature, top_p, max tokens, tools, tool_choice, response_format, seed, n,
stop, penalties, logit_bias, reasoning effort, ...) and silently share answers when OpenAI adds
a new one, every field is kept except a short list of pure bookkeeping fields (``user``,
``metadata``, ``store``, ``safety_identifier``, ``prompt_cache_key``...). An unknown field can
only cause a miss, never a wrong hit. Numbers are normalised (``0`` and ``0.0`` are the same
temperature) and keys sorted. The endpoint and whether the answer is streamed are part of the
key: a stream is replayed as a stream, a JSON body served as a body.

Compute the key on the body after model pinning and output clamping, but *before* the proxy
adds ``stream_options.include_usage`` for its own metering: the cached events are the ones the
caller received, and another caller asking with or without ``include_usage`` expects different
events.

Cacheability (``is_cacheable``): off unless ``spec.cache.enabled``; by default
(``deterministicOnly``) only requests whose answer should not vary: temperature 0 or a seed set
(embeddings always). Background Responses-API calls, turns of a conversation (the turn appends to
it upstream) and stored prompts without a version are never cached.

Backends implement ``get(key) -> bytes | None`` and ``set(key, value, ttl_seconds)``:
:class:`MemoryLRUBackend` (bounded, one replica) and :class:`StoreBackend` (over the shared
``Store``'s ``cache_get``/``cache_set``, i.e. Redis across pods). :class:`ResponseCache` turns
every backend error or slow answer into a miss: the cache may degrade, never fail a request.

Integrity. Entries in the shared store are readable and writable by whatever reaches Redis, so
:class:`StoreBackend` seals each one with an HMAC-SHA256 over the request digest and the entry, under a
per-policy key derived from the policy's upstream API key (:func:`cache_mac_key`). Every pod of the
policy mounts that key and nothing else does (app containers, other policies, the operator), so
only a sidecar of the policy can write an entry its peers accept; an entry that does not verify
is a miss, counted as forged, and its "savings" are never reported. Rotating the API key turns
the old entries into misses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

KEY_VERSION = "v1"  # bump when the canonical form changes: old entries then simply miss
CACHEABLE_ENDPOINTS = frozenset({"chat.completions", "responses", "completions", "embeddings"})
# Fields that never change the answer (bookkeeping, attribution, storage on OpenAI's side).
IGNORED_FIELDS = frozenset(
    {"user", "metadata", "store", "safety_identifier", "prompt_cache_key", "prompt_cache_retention"}
)
_SEPARATOR = b"\n\n"
# Events that mean a stream did not end with a complete answer.
_FAILED_STREAM_MARKERS = (b'"response.failed"', b'"response.incomplete"', b"event: error", b'"error":{')


class CacheSpecLike(Protocol):
    """The attributes of ``spec.cache`` this module reads."""

    enabled: bool
    ttl_seconds: int
    deterministic_only: bool


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None: ...


class _CacheStore(Protocol):
    """The part of ``openai_policy_store.Store`` the cache uses."""

    async def cache_get(self, ref: tuple[str, str], digest: str) -> bytes | None: ...

    async def cache_set(
        self, ref: tuple[str, str], digest: str, value: bytes, ttl_seconds: float
    ) -> None: ...


# -- key and cacheability ------------------------------------------------------------------------


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def canonical_request(endpoint: str, body: Mapping[str, Any], *, model: str | None = None) -> bytes:
    """The bytes hashed for the key (exposed for tests and debugging)."""
    fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    if model is not None:
        fields["model"] = model
    fields["stream"] = bool(fields.get("stream"))
    document = {"v": KEY_VERSION, "endpoint": endpoint, "request": _normalise(fields)}
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def cache_key(endpoint: str, body: Mapping[str, Any], *, model: str | None = None) -> str:
    """Hex SHA-256 of the canonical request; ``model``: the pinned model when not yet in ``body``."""
    return hashlib.sha256(canonical_request(endpoint, body, model=model)).hexdigest()


def _is_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def is_cacheable(
    body: Mapping[str, Any], cache_spec: CacheSpecLike, *, endpoint: str = "chat.completions"
) -> bool:
    """Whether this request may be answered from (and stored into) the cache."""
    if not cache_spec.enabled or endpoint not in CACHEABLE_ENDPOINTS:
        return False
    if body.get("background"):
        return False
    # Server-side state: a conversation's turn appends to it upstream (a hit would not), and a
    # stored prompt without a version is whatever its latest version is when the call is made.
    if body.get("conversation") is not None:
        return False
    prompt = body.get("prompt")
    if isinstance(prompt, Mapping) and not prompt.get("version"):
        return False
    if not cache_spec.deterministic_only or endpoint == "embeddings":
        return True
    seed = body.get("seed")
    return _is_zero(body.get("temperature")) or (isinstance(seed, int) and not isinstance(seed, bool))


# -- entries -------------------------------------------------------------------------------------


@dataclass
class CachedResponse:
    """One stored answer: a JSON body, or the SSE events of a stream (each without its separator)."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes | None = None
    events: list[bytes] | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None  # what the original call consumed: the spend a hit saves
    headers: dict[str, str] = field(default_factory=dict)
    stored_at: float = 0.0

    @property
    def streamed(self) -> bool:
        return self.events is not None

    def to_bytes(self) -> bytes:
        """A JSON header line, then the raw payload (no base64: entries stay compact)."""
        if self.events is not None:
            payload = b"".join(self.events)
            lengths: list[int] | None = [len(event) for event in self.events]
        else:
            payload = self.body or b""
            lengths = None
        header = {
            "v": 1,
            "status": self.status,
            "contentType": self.content_type,
            "model": self.model,
            "usage": self.usage,
            "headers": self.headers,
            "storedAt": self.stored_at,
            "events": lengths,
        }
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResponse:
        """Raises ``ValueError`` on anything malformed (the cache then treats it as a miss)."""
        cut = data.find(b"\n")
        if cut < 0:
            raise ValueError("cache entry without a header")
        header = json.loads(data[:cut])
        if not isinstance(header, dict) or header.get("v") != 1:
            raise ValueError("unknown cache entry version")
        payload = data[cut + 1 :]
        entry = cls(
            status=int(header["status"]),
            content_type=str(header["contentType"]),
            model=header.get("model"),
            usage=header.get("usage"),
            headers=dict(header.get("headers") or {}),
            stored_at=float(header.get("storedAt") or 0.0),
        )
        lengths = header.get("events")
        if lengths is None:
            entry.body = payload
        else:
            if sum(lengths) != len(payload):
                raise ValueError("cache entry payload does not match its event lengths")
            entry.events, offset = [], 0
            for length in lengths:
                entry.events.append(payload[offset : offset + length])
                offset += length
        return entry


async def replay_stream(entry: CachedResponse) -> AsyncIterator[bytes]:
    """The stored events as the caller first received them, each followed by its blank line."""
    for event in entry.events or ():
        yield event + _SEPARATOR


class StreamRecorder:
    """Collects the events of a stream as they are sent to the caller; yields an entry if complete.

    Bounded by ``max_bytes``: a stream larger than that is simply not cached.
    """

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._events: list[bytes] = []
        self._size = 0
        self._max = max_bytes
        self.overflowed = False
        self.failed = False

    def add(self, event: bytes) -> None:
        if self.overflowed:
            return
        if any(marker in event for marker in _FAILED_STREAM_MARKERS):
            self.failed = True
        self._size += len(event)
        if self._size > self._max:
            self.overflowed = True
            self._events = []
            return
        self._events.append(bytes(event))

    def finish(
        self,
        *,
        completed: bool,
        model: str | None = None,
        usage: dict[str, Any] | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> CachedResponse | None:
        """The entry to store, or None: a cut, failed or oversized stream is never cached."""
        if not completed or self.failed or self.overflowed or not self._events or status != 200:
            return None
        return CachedResponse(
            status=status,
            content_type="text/event-stream",
            events=list(self._events),
            model=model,
            usage=usage,
            headers=dict(headers or {}),
        )


def response_entry(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    model: str | None = None,
    usage: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> CachedResponse | None:
    """The entry for a non-streamed answer, or None when it must not be cached (not a 200 JSON)."""
    if status != 200 or not body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or "error" in parsed:
        return None
    return CachedResponse(
        status=status,
        content_type=content_type,
        body=bytes(body),
        model=model,
        usage=usage,
        headers=dict(headers or {}),
    )


# -- backends ------------------------------------------------------------------------------------


class MemoryLRUBackend:
    """In-process cache for one replica: LRU, bounded in entries and bytes, TTL per entry."""

    def __init__(
        self,
        max_entries: int = 1024,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires_at, value = item
        if self._clock() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if len(value) > self._max_bytes:
            return
        self._drop(key)
        self._entries[key] = (self._clock() + ttl_seconds, bytes(value))
        self._bytes += len(value)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1])


class ForgedEntry(Exception):
    """A shared cache entry whose MAC does not verify (not written by a sidecar of this policy)."""


_MAC_MAGIC = b"oapm1"
_MAC_BYTES = 32


def cache_mac_key(api_key: str, ref: tuple[str, str]) -> bytes:
    """The per-policy MAC key: HMAC-SHA256 of a label and the policy's ref under its API key."""
    label = f"openai-policy response cache\0{ref[0]}/{ref[1]}".encode()
    return hmac.new(api_key.encode(), label, hashlib.sha256).digest()


class StoreBackend:
    """The shared store's cache (Redis across pods), scoped to one policy and sealed with a MAC.

    ``api_key`` is read at each call (the key may rotate); without a key nothing is read or written.
    """

    def __init__(
        self, store: _CacheStore, ref: tuple[str, str], api_key: Callable[[], str | None] | None = None
    ) -> None:
        self._store = store
        self._ref = ref
        self._api_key = api_key or (lambda: None)
        self._derived: tuple[str, bytes] | None = None

    def _mac_key(self) -> bytes | None:
        api_key = self._api_key()
        if not api_key:
            return None
        if self._derived is None or self._derived[0] != api_key:
            self._derived = (api_key, cache_mac_key(api_key, self._ref))
        return self._derived[1]

    def _mac(self, mac_key: bytes, key: str, value: bytes) -> bytes:
        return hmac.new(mac_key, key.encode() + b"\0" + value, hashlib.sha256).digest()

    async def get(self, key: str) -> bytes | None:
        mac_key = self._mac_key()
        if mac_key is None:
            return None
        sealed = await self._store.cache_get(self._ref, key)
        if sealed is None:
            return None
        head = len(_MAC_MAGIC)
        tag, value = sealed[head : head + _MAC_BYTES], sealed[head + _MAC_BYTES :]
        if not sealed.startswith(_MAC_MAGIC) or not hmac.compare_digest(tag, self._mac(mac_key, key, value)):
            raise ForgedEntry(f"cache entry {key[:12]} does not carry this policy's MAC")
        return value

    async def set(self, key: str, value: bytes, ttl_seconds: float) -> None:
        mac_key = self._mac_key()
        if mac_key is None:
            return
        sealed = _MAC_MAGIC + self._mac(mac_key, key, value) + value
        await self._store.cache_set(self._ref, key, sealed, ttl_seconds)


# -- the cache -----------------------------------------------------------------------------------


class ResponseCache:
    """Lookups and stores that never fail a request: any backend error or slow answer is a miss."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        timeout_seconds: float = 0.5,
        max_entry_bytes: int = 4 * 1024 * 1024,
        wall_clock: Callable[[], float] = time.time,
        on_forged: Callable[[], None] | None = None,
    ) -> None:
        self.backend = backend
        self._on_forged = on_forged
        self._timeout = timeout_seconds
        self._max_entry_bytes = max_entry_bytes
        self._wall_clock = wall_clock
        self.hits = 0  # counters for metrics
        self.misses = 0
        self.errors = 0
        self.stores = 0
        self.forged = 0

    async def lookup(self, key: str, *, stream: bool | None = None) -> CachedResponse | None:
        """The entry for ``key`` or None; ``stream`` (when given) must match the entry's form."""
        try:
            async with asyncio.timeout(self._timeout):
                data = await self.backend.get(key)
        except ForgedEntry as exc:
            self.forged += 1
            self.misses += 1
            if self._on_forged is not None:
                self._on_forged()
            log.warning("response cache entry refused, treating as a miss: %s", exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a broken cache is a miss (seeds: Redis restarts)
            self.errors += 1
            self.misses += 1
            log.warning("response cache lookup failed, treating as a miss: %s", type(exc).__name__)
            return None
        if data is None:
            self.misses += 1
            return None
        try:
            entry = CachedResponse.from_bytes(data)
        except (ValueError, KeyError, TypeError):
            self.errors += 1
            self.misses += 1
            return None
        if stream is not None and entry.streamed != stream:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    async def store(self, key: str, entry: CachedResponse | None, ttl_seconds: float) -> bool:
        """Store ``entry`` (None is a no-op); False when skipped or when the backend failed."""
        if entry is None or ttl_seconds <= 0:
            return False
        if not entry.stored_at:
            entry.stored_at = self._wall_clock()
        data = entry.to_bytes()
        if len(data) > self._max_entry_bytes:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await self.backend.set(key, data, ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - failing to cache must not fail the request
            self.errors += 1
            log.warning("response cache store failed: %s", type(exc).__name__)
            return False
        self.stores += 1
        return True
