"""What the sidecar learns about one request on its way through the stages."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import refusals
from .reported_usage import Usage

# Unique without a syscall per request: a random per-process prefix and a counter (uuid4 reads
# /dev/urandom each time, measurable at thousands of requests per second).
_PROCESS_TAG = os.urandom(6).hex()
_SEQUENCE = itertools.count(1)


def new_request_id() -> str:
    return f"oaip-{_PROCESS_TAG}{next(_SEQUENCE):010x}"


@dataclass
class RequestContext:
    dry_run: bool
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    method: str = ""
    path: str = ""
    endpoint: str | None = None
    stream: bool = False
    user: str | None = None
    feature: str | None = None
    model_requested: str | None = None
    model_sent: str | None = None
    model_reported: str | None = None
    pinned: bool = False
    downgraded: bool = False
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    reservation: Any = None  # state.Reservation
    ledger: Any = None  # the BudgetLedger the reservation was taken on (shared, or local share)
    worst_micros: int | None = None  # worst-case cost; None when the model has no price
    strip_usage: bool = False  # we added stream_options.include_usage and must undo its effect
    reserved_micros: int = 0
    settled: bool = False
    usage: Usage | None = None
    cost_micros: int | None = None
    status: int = 0
    decision: str = "forwarded"
    refusal: refusals.Refusal | None = None
    dry_run_refusals: list[str] = field(default_factory=list)
    upstream_request_id: str | None = None
    upstream_seconds: float = 0.0
    upstream_error: str | None = None
    drift: bool = False
    rate_headers: dict[str, str] = field(default_factory=dict)
    prompt: Any = None  # only kept when logging.prompts is on
    responded: float | None = None  # perf_counter when the reply was complete on the wire
    # issue 4: guardrails, cache, queue, retries
    guardrails: list[dict[str, Any]] = field(default_factory=list)  # kinds and actions, never the text
    cache_key: str | None = None  # set when the request may be served from / stored into the cache
    cache: str | None = None  # "hit" | "miss" | None (not cacheable)
    saved_micros: int = 0  # what a cache hit would have cost
    attempts: int = 0  # upstream calls made (retries = attempts - 1)
    retry_reasons: list[str] = field(default_factory=list)  # why each retry happened (status / error)
    cache_entry: Any = None  # response_cache.CachedResponse to store once the reply went out

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def finding(self, guardrail: str, kind: str, action: str, count: int = 1) -> None:
        """Remember a guardrail finding (its kind and the action taken; never the matched text)."""
        self.guardrails.append({"guardrail": guardrail, "type": kind, "action": action, "count": count})

    def enforce(self, refusal: refusals.Refusal | None) -> None:
        """Raise the refusal, or in dry-run mode only remember that we would have refused."""
        if refusal is None:
            return
        if self.dry_run:
            self.dry_run_refusals.append(refusal.code)
            return
        raise refusal

    @property
    def added_seconds(self) -> float:
        """Time the caller waited on the sidecar itself: the whole request minus the upstream."""
        end = self.responded if self.responded is not None else time.perf_counter()
        return max(0.0, end - self.started - self.upstream_seconds)
