"""OpenAI-shaped refusals.

Every refusal the sidecar makes has the body OpenAI itself uses
(``{"error": {"message", "type", "param", "code"}}``) so that every OpenAI SDK raises its usual
exception class with our ``code``. A refusal that retrying cannot fix carries
``x-should-retry: false``, which the official SDKs obey; refusals that clear with time carry
``Retry-After`` instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from aiohttp import web

INVALID_REQUEST = "invalid_request_error"
RATE_LIMIT = "rate_limit_error"  # the type OpenAI uses for its own 429s (rate limits and quota)
PERMISSION = "permission_error"  # the type OpenAI uses for its 403s
SERVER = "server_error"


@dataclass
class Refusal(Exception):
    """A decision not to forward a request (or an error reaching upstream), rendered as OpenAI would."""

    status: int
    code: str
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        headers["x-should-retry"] = "true" if self.retryable else "false"
        if self.retry_after is not None:
            # Whole seconds for Retry-After (HTTP), exact milliseconds for the SDKs that read -ms.
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return headers

    def to_response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        headers = self.response_headers()
        if extra_headers:
            headers.update(extra_headers)
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=headers,
        )


# --- the refusals of the design, one constructor each -------------------------------------------------


def budget_exceeded(
    window: str, limit_usd: str, spent_usd: str, reserved_usd: str, owner: str | None = None
) -> Refusal:
    """``owner``: whose budget, e.g. ``user 'alice'``; None for the policy's own. The figures are
    that budget's only: a user's refusal never shows another user's or the policy's spend."""
    if owner is None:
        message = (
            f"The {window} budget of ${limit_usd} for this policy would be exceeded by this request "
            f"(spent ${spent_usd}, reserved by requests in flight ${reserved_usd})."
        )
    else:
        message = (
            f"The {window} budget of {owner} (${limit_usd}) is spent: this request could exceed it "
            f"(spent ${spent_usd}, reserved by requests in flight ${reserved_usd}; spec.budget)."
        )
    return Refusal(429, "budget_exceeded", message, type=RATE_LIMIT)


def rate_limit_exceeded(message: str, retry_after: float, headers: dict[str, str]) -> Refusal:
    return Refusal(
        429,
        "rate_limit_exceeded",
        message,
        type=RATE_LIMIT,
        retryable=True,
        retry_after=retry_after,
        headers=headers,
    )


def model_not_allowed(model: str, reason: str = "") -> Refusal:
    message = f"The model `{model}` is not allowed by this policy."
    if reason:
        message = f"{message} {reason}"
    # OpenAI answers a project without access to a model with a 403 (the SDKs raise
    # PermissionDeniedError): apps already handle that, and retrying cannot fix it.
    return Refusal(403, "model_not_allowed", message, param="model")


def input_too_large(message: str, status: int = 400, param: str | None = None) -> Refusal:
    return Refusal(status, "input_too_large", message, param=param)


def policy_suspended() -> Refusal:
    return Refusal(
        403,
        "policy_suspended",
        "Requests are suspended by this workload's OpenAIPolicy (spec.suspend is true).",
        type=PERMISSION,
    )


def upstream_timeout(seconds: float) -> Refusal:
    # Retrying may help: the upstream may answer faster next time.
    return Refusal(
        504,
        "upstream_timeout",
        f"The upstream API did not answer within {seconds:g}s.",
        type=SERVER,
        retryable=True,
    )


def upstream_unreachable(detail: str) -> Refusal:
    return Refusal(
        502,
        "upstream_unreachable",
        f"The upstream API could not be reached: {detail}",
        type=SERVER,
        retryable=True,
    )


def upstream_response_too_large(limit: int, *, busy: bool = False) -> Refusal:
    # Not retried by the SDKs: the upstream billed the cut call already, and asking again would
    # most likely get the same oversized answer.
    if busy:
        message = (
            f"The upstream API's reply was cut: the sidecar already holds as much of other replies as its "
            f"memory allows ({limit} bytes). Try again when fewer large replies are in flight."
        )
    else:
        message = (
            f"The upstream API's reply was larger than this policy allows the sidecar to relay "
            f"({limit} bytes, spec.requests.maxResponseBytes / maxStreamEventBytes); it was cut."
        )
    return Refusal(502, "upstream_response_too_large", message, type=SERVER, retryable=False)


def store_unavailable() -> Refusal:
    return Refusal(
        503,
        "store_unavailable",
        "The shared budget store is unreachable and this policy fails closed (spec.budget.onStoreUnavailable).",
        type=SERVER,
        retryable=True,
        retry_after=1,
    )


def api_key_missing() -> Refusal:
    return Refusal(
        503,
        "api_key_missing",
        "The sidecar has no upstream API key loaded (see --api-key-file / OPENAI_API_KEY).",
        type=SERVER,
        retryable=False,
    )


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = "invalid_request"
) -> Refusal:
    return Refusal(400, code or "invalid_request", message, param=param)


def endpoint_not_allowed(message: str) -> Refusal:
    # 403 like OpenAI's own "no access" answers: the SDKs raise PermissionDeniedError and never
    # retry it (nor x-should-retry: false): only a policy change helps.
    return Refusal(403, "endpoint_not_allowed", message, type=PERMISSION)


def invalid_path(reason: str) -> Refusal:
    return Refusal(
        400,
        "invalid_path",
        f"The request path is ambiguous ({reason}); send the plain path, e.g. /v1/chat/completions.",
    )


def not_found(path: str) -> Refusal:
    return Refusal(404, "unknown_url", f"Unknown request URL: {path}. The sidecar only proxies /v1/* paths.")


def from_stage_error(error: BaseException) -> Refusal:
    """The refusal for a stage's own exception (guardrails, queue, circuit breaker, deadline).

    Those modules stay free of HTTP: each exception carries ``code``, ``status``, ``error_type``,
    ``retryable`` and, where it applies, ``retry_after`` and ``param``. The message never quotes
    the matched text (the stages only name kinds and paths).
    """
    retry_after = getattr(error, "retry_after", None)
    return Refusal(
        int(getattr(error, "status", 500)),
        str(getattr(error, "code", "internal_error")),
        str(error),
        type=str(getattr(error, "error_type", SERVER)),
        param=getattr(error, "param", None),
        retryable=bool(getattr(error, "retryable", False)),
        retry_after=float(retry_after) if retry_after is not None else None,
    )


def circuit_open(retry_after: float, message: str) -> Refusal:
    return Refusal(
        503, "circuit_open", message, type=SERVER, retryable=True, retry_after=max(1.0, retry_after)
    )
