"""What the sidecar learns about one request on its way through the pipeline.

``RequestContext`` is a handful of small records, each written by the stages named on it and
read by ``pipeline.record`` (metrics, usage counters, the access line) at the end.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

from openai_policy_store import BudgetLedger, Reservation

from . import refusals
from .reported_usage import Usage
from .response_cache import CachedResponse

# Unique without a syscall per request: a random per-process prefix and a counter (uuid4 reads
# /dev/urandom each time, measurable at thousands of requests per second).
_PROCESS_TAG = os.urandom(6).hex()
_SEQUENCE = itertools.count(1)


def new_request_id() -> str:
    return f"oaip-{_PROCESS_TAG}{next(_SEQUENCE):010x}"


@dataclass
class RequestFacts:
    """The request as the caller sent it (parse), sized by clamp and input_limit."""

    method: str = ""
    path: str = ""
    endpoint: str | None = None  # metered endpoint name; None for pass-through paths
    surface: str | None = None  # endpoint_gate: the API surface (spec.endpoints names); None: unknown
    route: str | None = None  # endpoint_gate: the surfaces table's route, e.g. "POST /v1/files"
    stream: bool = False
    user: str | None = None
    feature: str | None = None
    model: str | None = None  # the model asked for
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    prompt: Any = None  # only kept when logging.prompts is on


@dataclass
class ModelDecision:
    """model_choice: what went upstream; settle: what the reply says it came from."""

    sent: str | None = None
    pinned: bool = False
    downgraded: bool = False
    reported: str | None = None
    drift: bool = False


@dataclass
class BudgetHold:
    """rate_and_budget takes the hold; settle turns it into spend exactly once."""

    ledger: BudgetLedger | None = None  # the ledger of the snapshot the request started with
    reservation: Reservation | None = None
    worst_micros: int | None = None  # worst-case cost; None when the model has no price
    reserved_micros: int = 0
    settled: bool = False
    cost_micros: int | None = None  # the real cost (the worst case when usage went missing)
    tier: str | None = "default"  # the service tier reserved at (None: auto, the dearest)
    web_search_tool: str = "web_search"  # the fee a web_search_call item is billed at
    maybe_billed: int = 0  # attempts that failed after their body was sent: billed at worst case
    attempt_open: bool = False  # an upstream attempt is under way (its body may have been sent)
    answered: bool = False  # the upstream answered 2xx: the call is billed even if never metered
    over_reserved: bool = False  # settled above the hold: a bug in the table or the estimate
    expected: Usage | None = None  # media: what the call bills when its answer reports no usage
    fixed_fees: tuple[tuple[str, int], ...] = ()  # per-request fees no answer reports (chat search)


class Finding(TypedDict):
    """A guardrail finding: its kind and the action taken, never the matched text."""

    guardrail: str
    type: str
    action: str
    count: int


@dataclass
class Outcome:
    """What the caller was told."""

    status: int = 0
    decision: str = "forwarded"
    refusal: refusals.Refusal | None = None
    dry_run_refusals: list[str] = field(default_factory=list)  # codes dryRun would have refused
    rate_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* for the reply


@dataclass
class UpstreamFacts:
    """forward and the reply stages: how the upstream call went."""

    request_id: str | None = None  # OpenAI's x-request-id
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 0  # calls made (retries = attempts - 1)
    retry_reasons: list[str] = field(default_factory=list)  # why each retry happened
    strip_usage: bool = False  # we added stream_options.include_usage and must undo its effect
    usage: Usage | None = None  # as the reply reported it
    response_id: str | None = None  # a streamed Response's id (a plain reply's is in its body)


@dataclass
class CacheFacts:
    """cache: whether this request may be served from / stored into the response cache."""

    key: str | None = None  # None: not cacheable (or its answer must not be cached)
    state: str | None = None  # "hit" | "miss" | None (not looked up)
    saved_micros: int = 0  # what a hit would have cost upstream
    entry: CachedResponse | None = None  # to store once the reply went out


@dataclass
class ServerInputFacts:
    """server_context: content the request pulls in from OpenAI's side, and how it was reserved."""

    kinds: list[str] = field(default_factory=list)  # spec.endpoints names: storedResponses, files...
    soft_kinds: list[str] = field(default_factory=list)  # pulled in unreserved (softBudgetInputs)
    reserved_tokens: int = 0  # input tokens reserved on top of what the request itself shows
    exact: bool = False  # reserved from remembered sizes rather than the context window
    conversation: str | None = None  # the conversation the reply extends (its size is remembered)
    stored: bool = True  # the reply is stored by OpenAI (``store`` not false): remember its size
    empty_conversation: bool = False  # POST /v1/conversations without items: its size is 0
    taken: int | None = None  # the conversation's remembered size, taken while this turn runs


@dataclass
class RequestContext:
    dry_run: bool
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    responded: float | None = None  # perf_counter when the reply was complete on the wire
    request: RequestFacts = field(default_factory=RequestFacts)
    model: ModelDecision = field(default_factory=ModelDecision)
    budget: BudgetHold = field(default_factory=BudgetHold)
    outcome: Outcome = field(default_factory=Outcome)
    upstream: UpstreamFacts = field(default_factory=UpstreamFacts)
    cache: CacheFacts = field(default_factory=CacheFacts)
    findings: list[Finding] = field(default_factory=list)
    server_input: ServerInputFacts = field(default_factory=ServerInputFacts)

    @property
    def retries(self) -> int:
        return max(0, self.upstream.attempts - 1)

    def finding(self, guardrail: str, kind: str, action: str, count: int = 1) -> None:
        """Remember a guardrail finding (its kind and the action taken; never the matched text)."""
        self.findings.append({"guardrail": guardrail, "type": kind, "action": action, "count": count})

    def enforce(self, refusal: refusals.Refusal | None) -> None:
        """Raise the refusal, or in dry-run mode only remember that we would have refused."""
        if refusal is None:
            return
        if self.dry_run:
            self.outcome.dry_run_refusals.append(refusal.code)
            return
        raise refusal

    def refuse(self, refusal: refusals.Refusal) -> None:
        """Record that the caller is told this refusal."""
        self.outcome.refusal = refusal
        self.outcome.status = refusal.status
        self.outcome.decision = f"refused:{refusal.code}"

    @property
    def added_seconds(self) -> float:
        """Time the caller waited on the sidecar itself: the whole request minus the upstream."""
        end = self.responded if self.responded is not None else time.perf_counter()
        return max(0.0, end - self.started - self.upstream.seconds)
