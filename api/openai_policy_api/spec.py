"""``OpenAIPolicy.spec``: every field documented, defaulted and validated.

This module is the single source of truth: the CRD schema (``openai_policy_operator.crd``),
the reference documentation and the defaults all derive from it. Field descriptions are what
``kubectl explain openaipolicy.spec...`` prints, so they are written for the platform engineer
writing the policy. Defaults follow production practice (30 s timeouts, 5 failures / 60 s circuit
breaker, backoff capped at 60 s, a queue that refuses beyond 1000 waiting requests).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Literal, get_args
from zoneinfo import available_timezones

from pydantic import ConfigDict, Field, field_validator, model_validator

from .base import CEL_RULES, SpecModel, cel, doc, raise_problems
from .endpoints import EndpointsSpec
from .fields import (
    DNS_SUBDOMAIN,
    GUARDRAIL_PATTERN_MAX_LENGTH,
    HTTP_URL,
    NO_SPACES,
    SECRET_KEY,
    ModelId,
    ModelPattern,
    Percent,
    compile_guardrail_pattern,
)
from .matching import cel_allowed, is_wildcard, model_allowed
from .selector import LabelSelector

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIME_ZONE = "UTC"
Window = Literal["hour", "day", "week", "month"]
PiiType = Literal["email", "phone", "ssn", "creditCard", "ipAddress", "apiKey"]

# The same values as tuples, for code that iterates over them.
WINDOWS: tuple[Window, ...] = get_args(Window)
PII_TYPES: tuple[PiiType, ...] = get_args(PiiType)


@cache
def _zone_names() -> frozenset[str]:
    # Read once: scanning the zone database costs tens of milliseconds.
    return frozenset(available_timezones())


def is_time_zone(name: str) -> bool:
    """True for an IANA zone name the system knows (``UTC``, ``Europe/Paris``...). A listed name, not
    any path ZoneInfo would open: ``localtime`` or a relative path must not pass."""
    return name in _zone_names()


class SecretKeyRef(SpecModel):
    """A key of a Secret in the policy's own namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Name of the Secret, in the same namespace as the policy.",
    )
    key: str = Field(
        default="api-key",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY,
        description="The key within the Secret's data that holds the OpenAI API key.",
    )


class ApiKeySpec(SpecModel):
    """Where the sidecar reads the OpenAI API key.

    The Secret is mounted into the sidecar container only: application containers never see
    the key, and the operator never reads it. Rotating the Secret reaches running pods without
    a restart. Omit to give the key to the sidecar some other way (`--api-key-file` or its
    `OPENAI_API_KEY`).
    """

    secret_ref: SecretKeyRef = Field(
        description="The Secret (same namespace as the policy) and key holding the API key."
    )


class UpstreamSpec(SpecModel):
    """The OpenAI-compatible API that the sidecar forwards to."""

    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        alias="baseURL",
        max_length=2048,
        pattern=HTTP_URL,
        description="Base URL of the upstream API, including the version path. Change it for a regional "
        "endpoint or an OpenAI-compatible gateway.",
    )
    organization: str | None = Field(
        default=None,
        max_length=256,
        pattern=NO_SPACES,
        description="OpenAI organization id sent as the OpenAI-Organization header (e.g. org-...). "
        "Omit to use the key's default organization.",
    )
    project: str | None = Field(
        default=None,
        max_length=256,
        pattern=NO_SPACES,
        description="OpenAI project id sent as the OpenAI-Project header (e.g. proj_...). Use one project "
        "per environment so that usage and limits are separated.",
    )


class ModelsSpec(SpecModel):
    """Which models workloads may call, how aliases are pinned, and what to fall back to."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                cel(
                    "!has(self.pin) || !has(self.allow) || self.pin.all(alias, "
                    + cel_allowed("self.pin[alias]")
                    + ")",
                    "every pinned target (a value in models.pin) must be allowed by models.allow",
                    field_path=".pin",
                ),
                cel(
                    "!has(self.fallback) || !has(self.allow) || " + cel_allowed("self.fallback"),
                    "models.fallback must be allowed by models.allow",
                    field_path=".fallback",
                ),
            ]
        }
    )

    allow: list[ModelPattern] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Models that may be called, as exact ids or wildcard patterns (`*` any characters, "
        "`?` one character, `[abc]` one of a set), e.g. `gpt-4o-*`. A request for any other "
        "model is refused with model_not_allowed. Matched after pinning. Default: every model.",
    )
    pin: dict[str, ModelId] = Field(
        default_factory=dict,
        max_length=16,
        description="Aliases rewritten to a dated model version before the call, e.g. `gpt-4o: gpt-4o-2024-08-06`, "
        "so that production does not change behaviour when OpenAI moves an alias. The model "
        "the response reports is compared with the pinned one and a mismatch is counted as drift. "
        "Each target must be allowed by `allow`.",
    )
    fallback: ModelId | None = Field(
        default=None,
        max_length=128,
        description="A cheaper model that requests switch to once spend crosses budget.downgradeAtPercent "
        "(e.g. gpt-4o-mini). Must be allowed by `allow`. Required when downgradeAtPercent is set.",
    )

    @field_validator("allow")
    @classmethod
    def _allow(cls, allow: list[str]) -> list[str]:
        duplicates = sorted({p for p in allow if allow.count(p) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(map(repr, duplicates))} more than once")
        return allow

    @field_validator("pin")
    @classmethod
    def _pin_aliases(cls, pin: dict[str, str]) -> dict[str, str]:
        for alias in pin:
            if not alias or len(alias) > 128 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", alias):
                raise ValueError(
                    f"alias {alias!r} must be an exact model id without wildcards, such as gpt-4o"
                )
        return pin

    @model_validator(mode="after")
    def _targets_allowed(self) -> ModelsSpec:
        problems = [
            (
                f"pin.{alias}",
                f"pinned target {target!r} is not allowed by models.allow "
                f"({', '.join(self.allow)}); add it (or a pattern matching it) to allow",
            )
            for alias, target in self.pin.items()
            if not model_allowed(target, self.allow)
        ]
        if self.fallback is not None and not model_allowed(self.fallback, self.allow):
            problems.append(
                (
                    "fallback",
                    f"{self.fallback!r} is not allowed by models.allow "
                    f"({', '.join(self.allow)}); add it (or a pattern matching it) to allow",
                )
            )
        raise_problems(problems)
        return self

    def resolve(self, model: str) -> str:
        """The model actually called for a request asking for ``model`` (after pinning)."""
        return self.pin.get(model, model)

    def allows(self, model: str) -> bool:
        """True when ``model`` (already resolved) may be called."""
        return model_allowed(model, self.allow)

    def permits(self, requested: str) -> bool:
        """The one allow rule: a request may ask for ``requested`` when what would be *sent* for it
        (after pinning) is allowed. Users allow what may reach OpenAI; an alias pinned to an
        allowed dated id is therefore usable even when the alias itself is not listed."""
        return self.allows(self.resolve(requested))

    def has_wildcards(self) -> bool:
        """True when any allow entry is a pattern rather than an exact id."""
        return any(is_wildcard(p) for p in self.allow)


class BudgetLimit(SpecModel):
    """A spending limit over one calendar window (in budget.timeZone, UTC unless set)."""

    window: Window = Field(
        description="The calendar window, in budget.timeZone (UTC unless set): `hour` (resets on the "
        "local hour), `day` (at local midnight), `week` (ISO week: Monday, local midnight) or `month` "
        "(on the 1st, local midnight)."
    )
    usd: float = Field(
        gt=0,
        le=1_000_000_000,
        description="The most that all pods of this policy together may spend in the window, in US dollars "
        "(e.g. 500 or 12.5). A call that could cross it is refused with budget_exceeded "
        "before it reaches OpenAI: its worst-case cost is reserved first.",
    )


class BudgetSpec(SpecModel):
    """Hard spending limits shared by every pod of the policy, with alert and downgrade thresholds.

    Spend is counted from each response's token usage at the policy's prices, in integer
    micro-dollars, in the shared store (Redis) so that all replicas draw on one budget. Every answer
    of a call that reached the budget check carries what is left after its hold, in USD with six
    decimals: `x-openai-policy-budget-remaining-<window>` per limited window, and
    `x-openai-policy-budget-remaining-user-<window>` / `-feature-<window>` for perUser and
    perFeature limits.
    """

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                *(
                    cel(
                        f"!has(self.{field}) || self.{field}.all(l, self.{field}.exists_one(m, m.window == l.window))",
                        f"each window (hour, day, week, month) may appear at most once in budget.{field}",
                        field_path=f".{field}",
                    )
                    for field in ("limits", "perUser", "perFeature")
                ),
                cel(
                    "!has(self.downgradeAtPercent) || !has(self.alertAtPercent) || "
                    "self.alertAtPercent < self.downgradeAtPercent",
                    "budget.downgradeAtPercent must be greater than budget.alertAtPercent (80 unless set)",
                    field_path=".downgradeAtPercent",
                ),
            ]
        }
    )

    limits: list[BudgetLimit] = Field(
        default_factory=list,
        max_length=len(WINDOWS),
        description="Spending limits, at most one per window; every limit applies. Empty: spend is metered "
        "and reported but never refused.",
    )
    per_user: list[BudgetLimit] = Field(
        default_factory=list,
        max_length=len(WINDOWS),
        description="Spending limits for each end user separately, at most one per window, on top of "
        "`limits`. The user is the request body's `user` or `safety_identifier`, or the "
        "`X-OpenAI-Policy-User` header (at most 256 characters); requests without a user are held "
        "against `limits` only. A call that could cross its user's limit is refused with "
        "budget_exceeded naming the user and the window.",
    )
    per_feature: list[BudgetLimit] = Field(
        default_factory=list,
        max_length=len(WINDOWS),
        description="Spending limits for each feature separately (the `X-OpenAI-Policy-Feature` header, "
        "at most 256 characters), at most one per window, on top of `limits`. Requests without the "
        "header are held against `limits` (and `perUser`) only.",
    )
    time_zone: str = Field(
        default=DEFAULT_TIME_ZONE,
        min_length=1,
        max_length=64,
        description="The IANA time zone the windows follow (e.g. `Europe/Paris`, `America/New_York`): "
        "days start at local midnight, weeks on Monday, months on the 1st, hours on the local hour "
        "(at :30 UTC in Asia/Kolkata). Daylight-saving days last 23 or 25 hours. Changing it starts "
        "new buckets: spend already counted stays in the buckets it was counted in.",
    )
    alert_at_percent: Percent = Field(
        default=80,
        description="When spend in any window reaches this percent of its limit, the policy gets the "
        "BudgetAlert condition and a Warning event.",
    )
    downgrade_at_percent: Percent | None = Field(
        default=None,
        description="When spend in any window reaches this percent of its limit, requests switch to "
        "models.fallback (which must be set). Must be greater than alertAtPercent. "
        "Omit to never downgrade.",
    )
    on_store_unavailable: Literal["failClosed", "localShare"] = Field(
        default="failClosed",
        description="What a sidecar does when the shared store (Redis) is unreachable and the budget "
        "cannot be checked. `failClosed` (default) refuses calls: a budget is a promise that "
        "spend will not pass the limit. `localShare` lets each pod keep spending up to "
        "localSharePercent of each limit from its own memory until the store is back.",
    )
    local_share_percent: int = Field(
        default=10,
        ge=1,
        le=100,
        description="With onStoreUnavailable: localShare, the percent of each limit one pod may spend on "
        "its own while the store is unreachable.",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_time_zone(value):
            raise ValueError(
                f"budget.timeZone: {value!r} is not an IANA time zone name (e.g. UTC, Europe/Paris, "
                "America/New_York)"
            )
        return value

    @model_validator(mode="after")
    def _rules(self) -> BudgetSpec:
        problems: list[tuple[str, str]] = []
        for field, entries in (
            ("limits", self.limits),
            ("perUser", self.per_user),
            ("perFeature", self.per_feature),
        ):
            first: dict[str, int] = {}
            for i, limit in enumerate(entries):
                if limit.window in first:
                    problems.append(
                        (
                            f"{field}[{i}].window",
                            f"{limit.window!r} is already limited by "
                            f"{field}[{first[limit.window]}]; each window may appear once",
                        )
                    )
                first.setdefault(limit.window, i)
        if self.downgrade_at_percent is not None and self.downgrade_at_percent <= self.alert_at_percent:
            problems.append(
                (
                    "downgradeAtPercent",
                    f"must be greater than alertAtPercent "
                    f"({self.alert_at_percent}); got {self.downgrade_at_percent}",
                )
            )
        raise_problems(problems)
        return self

    def limit_for(self, window: str) -> BudgetLimit | None:
        """The limit for ``window``, if any."""
        return next((limit for limit in self.limits if limit.window == window), None)


class PerUserRateLimitSpec(SpecModel):
    """Limits applied to each end user separately.

    The user is the request body's `user` or `safety_identifier`, or the
    `X-OpenAI-Policy-User` header. Requests without a user share the policy-wide limits only.
    """

    requests_per_minute: int = Field(
        default=10, ge=1, le=10_000_000, description="Requests per minute allowed for one user."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000_000,
        description="Tokens (input plus maximum output) per minute allowed for one user. Omit for no limit.",
    )


class RateLimitSpec(SpecModel):
    """Requests and tokens per minute, for the policy as a whole and per end user.

    Counted in the shared store across every pod, as buckets that refill continuously (a limit of
    N per minute regains one unit every 60/N seconds), so no burst can straddle a minute's end. A
    refused request is answered 429 rate_limit_exceeded with Retry-After and x-ratelimit-*
    headers, like OpenAI's own.
    """

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Requests per minute for all pods of the policy together. Omit for no limit. Set it "
        "below your OpenAI tier's limit so that the sidecar, not OpenAI, refuses the excess.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000_000,
        description="Tokens (input plus maximum output) per minute for all pods together. Omit for no limit.",
    )
    per_user: PerUserRateLimitSpec | None = Field(
        default=None, description="Limits for each end user. Omit for none."
    )


class RequestsSpec(SpecModel):
    """Limits on a single request: size, output tokens and time."""

    max_output_tokens: int = Field(
        default=500,
        ge=1,
        le=1_000_000,
        description="Output tokens a request may ask for. max_tokens, max_completion_tokens and "
        "max_output_tokens are capped at this value, and set to it when absent, so that "
        "every call has a bounded cost.",
    )
    max_tool_calls: int = Field(
        default=4,
        ge=0,
        le=1_000,
        description="Calls to fee-charging built-in tools (web_search, file_search, code_interpreter) "
        "one Responses request may make. max_tool_calls is capped at this value, and set to it when "
        "absent, so that each call's fees are bounded and reserved before it is made; 0 refuses "
        "requests that offer such tools.",
    )
    max_input_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Input tokens a request may carry, counted with the model's tokenizer before the call. "
        "Larger inputs are refused with input_too_large. Omit for no limit.",
    )
    timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="Time allowed for one upstream attempt to answer (for a stream, until its first event); "
        "past it the attempt is abandoned and retried or answered 504 upstream_timeout.",
    )
    stream_idle_timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="For streamed responses: the longest gap allowed between two events before the stream "
        "is cut.",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        le=1_073_741_824,
        description="Largest request body accepted, in bytes; larger bodies are refused with 413 "
        "input_too_large before they are read. Default 1 MiB.",
    )
    max_response_bytes: int = Field(
        default=8_388_608,
        ge=1024,
        le=1_073_741_824,
        description="Largest upstream reply body the sidecar reads, in bytes (it holds a plain reply whole "
        "to meter it). A larger reply is cut and answered 502 upstream_response_too_large, and the call is "
        "charged its worst case. A successful unmetered reply (a file's content) is relayed as it arrives, without "
        "this cap. Default 8 MiB: ten such replies at once stay under the sidecar's 256 Mi memory limit; "
        "raise it with that limit for very large embedding batches.",
    )
    max_stream_event_bytes: int = Field(
        default=8_388_608,
        ge=1024,
        le=1_073_741_824,
        description="Largest single event of a streamed reply, in bytes (an event is held until its blank "
        "line arrives). A larger event, or a stream without event separators, ends the stream with an "
        "upstream_response_too_large error event, and the call is charged its worst case. Default 8 MiB.",
    )


class RetriesSpec(SpecModel):
    """Retries of failed upstream calls (429, 5xx and connection errors; a timed-out call has no time left).

    Backoff is exponential with full jitter, honours Retry-After, and never exceeds
    maxRetryDurationSeconds in total, so that a stuck request cannot retry all weekend.
    """

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                cel(
                    "!has(self.baseDelaySeconds) || !has(self.maxDelaySeconds) || "
                    "self.baseDelaySeconds <= self.maxDelaySeconds",
                    "retries.baseDelaySeconds must not be greater than retries.maxDelaySeconds",
                    field_path=".baseDelaySeconds",
                ),
            ]
        }
    )

    max_attempts: int = Field(
        default=6,
        ge=1,
        le=20,
        description="Attempts per request, the first included (6 = one call and up to 5 retries). "
        "1 disables retries.",
    )
    base_delay_seconds: float = Field(
        default=1, ge=0, le=3600, description="Delay before the first retry; doubled for each further retry."
    )
    max_delay_seconds: float = Field(
        default=60, ge=0, le=3600, description="Longest delay between two attempts."
    )
    max_retry_duration_seconds: float = Field(
        default=120,
        gt=0,
        le=86400,
        description="Total time a request may spend retrying; past it the last error is returned.",
    )

    @model_validator(mode="after")
    def _delays(self) -> RetriesSpec:
        if self.base_delay_seconds > self.max_delay_seconds:
            raise_problems(
                [
                    (
                        "baseDelaySeconds",
                        f"must not be greater than maxDelaySeconds "
                        f"({self.max_delay_seconds:g}); got {self.base_delay_seconds:g}",
                    )
                ]
            )
        return self


class CircuitBreakerSpec(SpecModel):
    """Stops calling an upstream that keeps failing, so that callers fail fast instead of piling up.

    After failureThreshold consecutive failures the circuit opens: calls are refused with 503
    circuit_open and Retry-After for recoverySeconds, then one trial call decides whether it
    closes again.
    """

    enabled: bool = Field(default=True, description="Whether the circuit breaker is active.")
    failure_threshold: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Consecutive upstream failures (5xx, timeouts, connection errors) that open the circuit.",
    )
    recovery_seconds: float = Field(
        default=60,
        gt=0,
        le=86400,
        description="How long the circuit stays open before a trial call is let through.",
    )


class QueueSpec(SpecModel):
    """Concurrency per pod: how many calls run at once, and how many may wait for a slot."""

    # Not the seeds' 10 (that is their client's requests per minute, not a concurrency): a proxy that
    # made the 11th concurrent stream of a pod wait would be a surprise. 1,000 sits just below the
    # listener's 1,024 connections, so the queue, not a refused connection, is what a burst meets.
    max_concurrent: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Upstream calls in flight at once from one pod (streams included, for as long as they "
        "are open). Lower it to protect an upstream; spending is bounded by the budgets and rate limits.",
    )
    max_depth: int = Field(
        default=1000,
        ge=0,
        le=1_000_000,
        description="Requests that may wait for a slot in one pod; beyond it requests are refused at once "
        "with 503 queue_full. 0 means never wait.",
    )
    max_wait_seconds: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="Longest a request waits for a slot before it is refused with queue_full.",
    )


class CacheSpec(SpecModel):
    """A shared response cache for identical requests (kept in the shared store)."""

    enabled: bool = Field(
        default=False, description="Whether identical requests are answered from the cache."
    )
    ttl_seconds: int = Field(
        default=3600,
        ge=1,
        le=2_592_000,
        description="How long a cached response is served: hours suit FAQ-like answers, minutes at most "
        "for content that changes.",
    )
    deterministic_only: bool = Field(
        default=True,
        description="Cache only requests whose answer should not vary: temperature 0 (or a seed set) "
        "(streamed requests too: a hit is replayed as a stream). Turn off to cache every identical request.",
    )


class PiiSpec(SpecModel):
    """Detection of personal data in request inputs."""

    action: Literal["off", "flag", "redact", "block"] = Field(
        default="off",
        description="What to do when personal data is found: `off`, `flag` (count and log only), `redact` "
        "(replace each match with a placeholder before the call), `block` (refuse with pii_detected).",
    )
    types: list[PiiType] = Field(
        default_factory=lambda: list(PII_TYPES),
        min_length=1,
        max_length=len(PII_TYPES),
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="The kinds of personal data looked for: email, phone, ssn, creditCard, ipAddress, "
        "apiKey (an OpenAI key such as sk-... pasted into a prompt). "
        "Default: all of them.",
    )

    @field_validator("types")
    @classmethod
    def _unique(cls, types: list[str]) -> list[str]:
        duplicates = sorted({t for t in types if types.count(t) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(map(repr, duplicates))} more than once")
        return types


class PromptInjectionSpec(SpecModel):
    """Detection of prompt-injection phrases ("ignore previous instructions", ...) in user input."""

    action: Literal["off", "flag", "block"] = Field(
        default="off",
        description="What to do on a match: `off`, `flag` (count and log only), `block` (refuse with "
        "prompt_injection_detected).",
    )
    extra_patterns: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Additional regular expressions (case-insensitive) that count as an injection "
        "attempt, on top of the built-in ones. RE2 syntax, matched in linear time: backreferences and "
        "lookaround are refused.",
    )

    @field_validator("extra_patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            if not pattern or len(pattern) > GUARDRAIL_PATTERN_MAX_LENGTH:
                raise ValueError(
                    f"entry {i} must be a regular expression of 1 to {GUARDRAIL_PATTERN_MAX_LENGTH} characters"
                )
            try:
                compile_guardrail_pattern(pattern)
            except ValueError as exc:
                raise ValueError(
                    f"entry {i} ({pattern!r}) is not a valid regular expression: {exc}"
                ) from None
        return patterns


class ModerationSpec(SpecModel):
    """Checks of inputs and outputs with OpenAI's moderation endpoint (free of charge)."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                cel(
                    "!has(self.action) || self.action == 'off' || self.input || self.output",
                    "safety.moderation must check input, output or both when its action is not off",
                    field_path=".action",
                ),
            ]
        }
    )

    action: Literal["off", "flag", "block"] = Field(
        default="off",
        description="What to do with flagged content: `off`, `flag` (count and log only), `block` (refuse "
        "with content_flagged).",
    )
    input: bool = Field(default=True, description="Check the request's input before the call.")
    output: bool = Field(
        default=False,
        description="Check the response's text after the call (adds latency; not applied to streams).",
    )
    on_error: Literal["allow", "block"] = Field(
        default="allow",
        description="When the moderation call itself fails: `allow` the request (default: moderation is a "
        "safety net, not a dependency) or `block` it.",
    )

    @model_validator(mode="after")
    def _something_checked(self) -> ModerationSpec:
        if self.action != "off" and not (self.input or self.output):
            raise_problems(
                [
                    (
                        "action",
                        f"is {self.action!r} but both input and output are false; "
                        "enable one of them or set action to 'off'",
                    )
                ]
            )
        return self


class SafetySpec(SpecModel):
    """Input and output safety checks, each with its own action."""

    pii: PiiSpec = Field(default_factory=PiiSpec, description=doc(PiiSpec))
    prompt_injection: PromptInjectionSpec = Field(
        default_factory=PromptInjectionSpec, description=doc(PromptInjectionSpec)
    )
    moderation: ModerationSpec = Field(default_factory=ModerationSpec, description=doc(ModerationSpec))


SERVICE_TIERS = ("default", "flex", "priority", "scale")


class PriceOverride(SpecModel):
    """The price of one model, in US dollars per million tokens.

    Overriding a model of the bundled table restates its token prices only: the row's context
    window, long-context rates and per-image, per-character, per-minute and per-search prices
    still apply (set contextWindowTokens to change the window).
    """

    input_per_million: float = Field(ge=0, le=100_000, description="USD per million input tokens.")
    cached_input_per_million: float | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="USD per million cached input tokens. Omit to charge cached tokens at the input price.",
    )
    output_per_million: float = Field(ge=0, le=100_000, description="USD per million output tokens.")
    cache_write_per_million: float | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="USD per million input tokens written to the prompt cache. Omit to charge them at the "
        "input price.",
    )
    image_input_per_million: float | None = Field(
        default=None, ge=0, le=100_000, description="USD per million image input tokens."
    )
    audio_input_per_million: float | None = Field(
        default=None, ge=0, le=100_000, description="USD per million audio input tokens."
    )
    audio_output_per_million: float | None = Field(
        default=None, ge=0, le=100_000, description="USD per million audio output tokens."
    )
    context_window_tokens: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="The model's context window in tokens: what a request that pulls in server-side "
        "content (previous_response_id, conversation, files) is reserved at.",
    )
    service_tier_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description="Price of each service tier the model is offered at, as a multiple of these prices "
        "(e.g. priority: 2, flex: 0.5). A tier not listed is billed at these prices.",
    )

    @field_validator("service_tier_multipliers")
    @classmethod
    def _multipliers(cls, tiers: dict[str, float]) -> dict[str, float]:
        for tier, factor in tiers.items():
            if tier not in SERVICE_TIERS:
                raise ValueError(f"{tier!r} is not a service tier; use one of {', '.join(SERVICE_TIERS)}")
            if not 0 <= factor <= 100:
                raise ValueError(f"{tier}: a multiplier must be between 0 and 100, not {factor}")
        return tiers


class PricingSpec(SpecModel):
    """Overrides of the price table bundled with the sidecar.

    A model with no known price is refused (spend is never unmetered) unless it is priced here,
    e.g. a fine-tuned model or a price negotiated with OpenAI.
    """

    models: dict[str, PriceOverride] = Field(
        default_factory=dict,
        max_length=256,
        description="Prices by model id. An exact id (gpt-4o-2024-08-06) or a base id (gpt-4o, also used "
        "for its dated versions).",
    )
    tool_calls: dict[str, float] = Field(
        default_factory=dict,
        max_length=32,
        description="USD per call of a Responses built-in tool (web_search, web_search_preview, "
        "file_search, code_interpreter per container), replacing the bundled fee.",
    )
    auto_service_tier: Literal["default", "flex", "priority", "scale", "highest"] = Field(
        default="highest",
        description="The tier a request that asks for service_tier auto (or none) is reserved at. "
        "`highest` (default) reserves at the dearest tier the model is offered at, since the "
        "project's settings may make auto mean priority; name the tier your project uses for auto "
        "to reserve exactly. Settlement always uses the tier the response reports.",
    )

    @field_validator("tool_calls")
    @classmethod
    def _fees(cls, fees: dict[str, float]) -> dict[str, float]:
        for tool, fee in fees.items():
            if not re.match(r"^[a-z][a-z0-9_]{0,63}$", tool):
                raise ValueError(f"tool {tool!r} must be a built-in tool type such as web_search")
            if not 0 <= fee <= 1_000:
                raise ValueError(f"{tool}: a fee must be between 0 and 1000 USD per call, not {fee}")
        return fees

    @field_validator("models")
    @classmethod
    def _ids(cls, models: dict[str, PriceOverride]) -> dict[str, PriceOverride]:
        for model in models:
            if not model or len(model) > 128 or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", model):
                raise ValueError(
                    f"model id {model!r} must be an exact model id without wildcards, such as gpt-4o"
                )
        return models


class LoggingSpec(SpecModel):
    """What the sidecar's per-request log line may contain."""

    prompts: bool = Field(
        default=False,
        description="Include request inputs and response outputs in the log. Off by default: prompts "
        "often hold personal or confidential data. The API key is never logged.",
    )


class PolicySpec(SpecModel):
    """The policy every selected workload's OpenAI calls are held to, enforced by the injected sidecar."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL_RULES: [
                cel(
                    "!has(self.budget) || !has(self.budget.downgradeAtPercent) || "
                    "(has(self.models) && has(self.models.fallback))",
                    "budget.downgradeAtPercent requires models.fallback: set the model to downgrade to",
                    field_path=".budget.downgradeAtPercent",
                ),
            ]
        }
    )

    selector: LabelSelector = Field(default_factory=LabelSelector, description=doc(LabelSelector))
    suspend: bool = Field(
        default=False,
        description="Kill switch: when true every call is refused at once with policy_suspended (403), "
        "in every governed pod, within seconds and without a restart.",
    )
    mode: Literal["enforce", "dryRun"] = Field(
        default="enforce",
        description="`enforce` refuses what the policy forbids. `dryRun` decides and records every refusal "
        "it would have made (metrics, logs, status) but forwards the request: use it to try a "
        "policy on live traffic.",
    )
    api_key: ApiKeySpec | None = Field(default=None, description=doc(ApiKeySpec))
    upstream: UpstreamSpec = Field(default_factory=UpstreamSpec, description=doc(UpstreamSpec))
    models: ModelsSpec = Field(default_factory=ModelsSpec, description=doc(ModelsSpec))
    endpoints: EndpointsSpec = Field(default_factory=EndpointsSpec, description=doc(EndpointsSpec))
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description=doc(BudgetSpec))
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec, description=doc(RateLimitSpec))
    requests: RequestsSpec = Field(default_factory=RequestsSpec, description=doc(RequestsSpec))
    retries: RetriesSpec = Field(default_factory=RetriesSpec, description=doc(RetriesSpec))
    circuit_breaker: CircuitBreakerSpec = Field(
        default_factory=CircuitBreakerSpec, description=doc(CircuitBreakerSpec)
    )
    queue: QueueSpec = Field(default_factory=QueueSpec, description=doc(QueueSpec))
    cache: CacheSpec = Field(default_factory=CacheSpec, description=doc(CacheSpec))
    safety: SafetySpec = Field(default_factory=SafetySpec, description=doc(SafetySpec))
    pricing: PricingSpec = Field(default_factory=PricingSpec, description=doc(PricingSpec))
    logging: LoggingSpec = Field(default_factory=LoggingSpec, description=doc(LoggingSpec))

    @model_validator(mode="after")
    def _downgrade_needs_fallback(self) -> PolicySpec:
        if self.budget.downgrade_at_percent is not None and self.models.fallback is None:
            raise_problems(
                [
                    (
                        "budget.downgradeAtPercent",
                        "requires models.fallback: set the model that "
                        "requests switch to (e.g. gpt-4o-mini), or remove downgradeAtPercent",
                    )
                ]
            )
        return self
