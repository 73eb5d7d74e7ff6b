"""Moderation through the upstream ``/v1/moderations`` (free), cached by content hash.

The seeds' two lessons: the moderation filter is inconsistent (the same text judged
differently at different times) and every call costs latency. So each distinct text is judged
once per model and the verdict is cached (LRU with a TTL): identical text gets the same answer
every time and costs no second call. Concurrent requests carrying the same text share one call.

The HTTP call is injected (``post(json_body) -> (status, json)``) so that the proxy can send it
with the policy's key and upstream, and tests can script it. When moderation itself fails
(error status, timeout, unreadable answer), ``spec.safety.moderation.onError`` decides: ``allow``
(fail open, the default: a safety net must not become an outage) or ``block`` (fail closed).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .text_extraction import DEVELOPER_ROLES, TextSlot, iter_output_texts, iter_texts

DEFAULT_MODEL = "omni-moderation-latest"
_BATCH = 32  # texts per upstream call

HttpPost = Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]]


class ModerationSpecLike(Protocol):
    """The attributes of ``spec.safety.moderation`` this module reads (read-only, so that the
    policy model's ``Literal`` fields fit)."""

    @property
    def action(self) -> str: ...  # off | flag | block

    @property
    def input(self) -> bool: ...

    @property
    def output(self) -> bool: ...

    @property
    def on_error(self) -> str: ...  # allow | block


class ModerationError(Exception):
    """The moderation call itself failed."""


@dataclass(frozen=True)
class ModerationResult:
    flagged: bool
    categories: tuple[str, ...]  # names of the flagged categories


class ModerationClient:
    """Judges texts through ``post``; verdicts cached by SHA-256 of (model, text)."""

    def __init__(
        self,
        post: HttpPost,
        *,
        model: str = DEFAULT_MODEL,
        cache_entries: int = 10_000,
        cache_ttl_seconds: float = 3600.0,
        timeout_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self.model = model
        self._cache: OrderedDict[str, tuple[float, ModerationResult]] = OrderedDict()
        self._cache_entries = cache_entries
        self._ttl = cache_ttl_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._pending: dict[str, asyncio.Future[ModerationResult]] = {}
        self.calls = 0  # upstream calls made (metrics)
        self.cache_hits = 0

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model}\0{text}".encode()).hexdigest()

    def _cached(self, key: str) -> ModerationResult | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        stored_at, result = entry
        if self._clock() - stored_at > self._ttl:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return result

    def _remember(self, key: str, result: ModerationResult) -> None:
        self._cache[key] = (self._clock(), result)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    async def classify(self, texts: Sequence[str]) -> list[ModerationResult]:
        """One verdict per text, in order; raises :class:`ModerationError` when the call fails."""
        keys = [self._key(text) for text in texts]
        results: dict[str, ModerationResult] = {}
        waits: dict[str, asyncio.Future[ModerationResult]] = {}
        mine: dict[str, str] = {}  # key -> text this call must send
        for key, text in zip(keys, texts, strict=True):
            if key in results or key in waits or key in mine:
                continue
            cached = self._cached(key)
            if cached is not None:
                self.cache_hits += 1
                results[key] = cached
            elif key in self._pending:
                waits[key] = self._pending[key]
            else:
                mine[key] = text
        if mine:
            loop = asyncio.get_running_loop()
            futures = {key: loop.create_future() for key in mine}
            self._pending.update(futures)
            try:
                fresh = await self._fetch(list(mine.values()))
            except BaseException as exc:
                for key, future in futures.items():
                    self._pending.pop(key, None)
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, ModerationError) else ModerationError(str(exc))
                        )
                        future.exception()  # mark retrieved: other waiters may not exist
                raise
            for (key, future), result in zip(futures.items(), fresh, strict=True):
                self._pending.pop(key, None)
                self._remember(key, result)
                results[key] = result
                future.set_result(result)
        for key, future in waits.items():
            results[key] = await future
        return [results[key] for key in keys]

    async def _fetch(self, texts: list[str]) -> list[ModerationResult]:
        out: list[ModerationResult] = []
        for start in range(0, len(texts), _BATCH):
            batch = texts[start : start + _BATCH]
            self.calls += 1
            try:
                async with asyncio.timeout(self._timeout):
                    status, payload = await self._post({"model": self.model, "input": batch})
            except TimeoutError as exc:
                raise ModerationError(f"moderation timed out after {self._timeout:g}s") from exc
            except ModerationError:
                raise
            except Exception as exc:  # noqa: BLE001 - any transport error is a moderation failure
                raise ModerationError(f"moderation call failed: {type(exc).__name__}: {exc}") from exc
            if status != 200:
                raise ModerationError(f"moderation answered HTTP {status}")
            out.extend(_parse(payload, len(batch)))
        return out


def _parse(payload: Any, expected: int) -> list[ModerationResult]:
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or len(results) != expected:
        raise ModerationError("moderation answer has no result per input")
    parsed = []
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("flagged"), bool):
            raise ModerationError("moderation result without a boolean 'flagged'")
        listed = item.get("categories")
        categories = listed if isinstance(listed, dict) else {}
        parsed.append(
            ModerationResult(item["flagged"], tuple(sorted(k for k, v in categories.items() if v is True)))
        )
    return parsed


# -- the stage ---------------------------------------------------------------------------------


class ContentFlagged(Exception):
    """Refusal (maps to ``content_flagged``, 400, ``x-should-retry: false``)."""

    code = "content_flagged"
    status = 400
    error_type = "invalid_request_error"
    retryable = False

    def __init__(self, direction: str, categories: list[str], paths: list[str]) -> None:
        what = "request" if direction == "input" else "response"
        cats = ", ".join(categories) if categories else "unspecified"
        super().__init__(f"The {what} was flagged by moderation (categories: {cats}); this policy blocks it.")
        self.direction = direction
        self.categories = categories
        self.param = paths[0] if paths else None


class ModerationUnavailable(Exception):
    """Moderation failed and the policy fails closed (``moderation_unavailable``, 503, retryable)."""

    code = "moderation_unavailable"
    status = 503
    error_type = "server_error"
    retryable = True
    retry_after = 1.0

    def __init__(self, detail: str) -> None:
        super().__init__(f"Content moderation is unavailable and this policy requires it: {detail}")


@dataclass
class ModerationOutcome:
    action: str
    direction: str  # input | output
    checked: bool = False  # False when this direction is not enabled
    flagged: bool = False
    categories: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    error: str | None = None
    fail_closed: bool = False

    @property
    def blocked(self) -> bool:
        """The request must be refused (the proxy raises ``exception()`` unless in dry-run)."""
        return (self.action == "block" and self.flagged) or (self.error is not None and self.fail_closed)

    def exception(self) -> Exception:
        if self.error is not None and self.fail_closed:
            return ModerationUnavailable(self.error)
        return ContentFlagged(self.direction, list(self.categories), list(self.paths))


async def _judge(
    client: ModerationClient, spec: ModerationSpecLike, direction: str, slots: Sequence[TextSlot]
) -> ModerationOutcome:
    outcome = ModerationOutcome(action=spec.action, direction=direction, checked=True)
    if not slots:
        return outcome
    try:
        results = await client.classify([slot.text for slot in slots])
    except ModerationError as exc:
        outcome.error = str(exc)
        outcome.fail_closed = spec.on_error == "block"
        return outcome
    categories: set[str] = set()
    for slot, result in zip(slots, results, strict=True):
        if result.flagged:
            outcome.flagged = True
            outcome.paths.append(slot.path)
            categories.update(result.categories)
    outcome.categories = sorted(categories)
    return outcome


async def check_input_moderation(
    client: ModerationClient, endpoint: str, body: dict[str, Any], spec: ModerationSpecLike
) -> ModerationOutcome:
    """Moderate the request's user/tool/assistant texts (not the developer's system prompt)."""
    if spec.action == "off" or not spec.input:
        return ModerationOutcome(action=spec.action, direction="input")
    return await _judge(client, spec, "input", iter_texts(endpoint, body, skip_roles=DEVELOPER_ROLES))


async def check_output_moderation(
    client: ModerationClient, endpoint: str, response: dict[str, Any], spec: ModerationSpecLike
) -> ModerationOutcome:
    """Moderate a non-streamed response's answer texts."""
    if spec.action == "off" or not spec.output:
        return ModerationOutcome(action=spec.action, direction="output")
    return await _judge(client, spec, "output", iter_output_texts(endpoint, response))
