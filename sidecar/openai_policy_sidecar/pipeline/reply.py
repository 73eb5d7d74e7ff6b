"""Stage reply: a plain (non-streamed) upstream reply, read within the deadline and a size cap and
metered; and the headers every reply of the sidecar carries.

A metered 2xx answer is metered (``settle``), moderated when the policy says so (``safety``) and
kept for the cache. Every body is redacted, since the upstream may quote the key in it (in full
or masked), an error body as much as a successful one.

A metered or error body is held whole (usage sits at its end), so it is read against
``spec.requests.maxResponseBytes``, and with every other reply held at once against the
process's budget (``buffer_budget``): past either the call is cut, answered 502
``upstream_response_too_large`` and charged its worst case, instead of growing the sidecar past
its memory limit. An unmetered 2xx body (a file's content, a list) has nothing to meter: it is
relayed as it arrives (``pass_through``), redacted chunk by chunk, so a download of any size
costs the sidecar one chunk of memory; like a stream it is bounded by the idle timeout.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from openai_policy_api import PolicySpec

from .. import refusals
from ..buffer_budget import SHARED, BufferBudgetExceeded, Held
from ..context import RequestContext
from ..guardrails import ModerationClient
from ..pricing import PriceTable
from ..rate_headers import tighter, without
from ..redaction import ChunkRedactor, redactor_for
from ..resilience import idle_timeout, run_with_deadline
from ..response_cache import response_entry
from ..upstream import downstream_headers
from . import safety, settle
from .forward import UpstreamCall, upstream_failure

REQUEST_ID_HEADER = "x-openai-policy-request-id"
OPENAI_REQUEST_ID_HEADER = "x-request-id"
CACHE_HEADER = "x-openai-policy-cache"


class ResponseTooLarge(Exception):
    """The upstream's reply is larger than the policy lets the sidecar hold."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


def request_id_headers(ctx: RequestContext) -> dict[str, str]:
    """Every answer names its request: apps log OpenAI's ``x-request-id`` when reporting an error,
    so an answer the upstream never saw (a refusal, a cache hit) carries the sidecar's own id."""
    return {
        REQUEST_ID_HEADER: ctx.request_id,
        OPENAI_REQUEST_ID_HEADER: ctx.upstream.request_id or ctx.request_id,
    }


def set_rate_headers(out: web.StreamResponse, *sources: Mapping[str, str]) -> None:
    """Replace the reply's x-ratelimit-* headers with the tightest of ``sources``."""
    merged = tighter(*sources)
    if not merged:
        return
    for name in without(list(out.headers)):
        out.headers.popall(name, None)
    out.headers.update(merged)


def mark(ctx: RequestContext, out: web.StreamResponse) -> None:
    """Our headers on a forwarded reply (its upstream headers already in ``out``)."""
    out.headers.update(request_id_headers(ctx))
    set_rate_headers(out, ctx.outcome.rate_headers, dict(out.headers))
    if ctx.cache.state == "miss":
        out.headers[CACHE_HEADER] = "miss"
    if ctx.retries:
        out.headers["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it


def refusal_reply(
    ctx: RequestContext, refusal: refusals.Refusal, upstream_rate: Mapping[str, str] | None = None
) -> web.Response:
    """The reply for a refusal, recorded as the request's outcome. ``upstream_rate``: what the
    upstream last said of its own rate limits (this request may never have reached it)."""
    ctx.refuse(refusal)
    extra = request_id_headers(ctx)
    extra.update(tighter(refusal.headers, ctx.outcome.rate_headers, upstream_rate or {}))
    if ctx.retries:
        extra["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it
    return refusal.to_response(extra)


async def read_capped(response: aiohttp.ClientResponse, limit: int, held: Held | None = None) -> bytes:
    """The whole body, or ``ResponseTooLarge`` as soon as it is known to be over ``limit``
    (``BufferBudgetExceeded`` when ``held`` says the process holds too much already)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise ResponseTooLarge(limit)
    chunks: list[bytes] = []  # joined once at the end: no copy per chunk as a bytearray regrows
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge(limit)
        if held is not None:
            held.resize(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def plain_reply(
    ctx: RequestContext,
    call: UpstreamCall,
    spec: PolicySpec,
    prices: PriceTable,
    moderation: ModerationClient,
    secrets: list[str],
    *,
    metered: bool,
    request: web.Request | None = None,
) -> web.StreamResponse:
    response = call.response
    if request is not None and not metered and 200 <= response.status < 300:
        return await pass_through(request, ctx, call, secrets, spec.requests.stream_idle_timeout_seconds)
    held = SHARED.hold(3 * spec.requests.max_response_bytes)  # alone, a reply at its cap always fits
    try:
        return await _buffered_reply(ctx, call, spec, prices, moderation, secrets, metered, held)
    finally:
        held.release()


async def _buffered_reply(
    ctx: RequestContext,
    call: UpstreamCall,
    spec: PolicySpec,
    prices: PriceTable,
    moderation: ModerationClient,
    secrets: list[str],
    metered: bool,
    held: Held,
) -> web.Response:
    response = call.response
    try:
        payload = await run_with_deadline(
            read_capped(response, spec.requests.max_response_bytes, held), call.deadline
        )
    except (TimeoutError, aiohttp.ClientError) as error:
        call.failed()
        if metered and 200 <= response.status < 300:
            ctx.budget.maybe_billed += 1  # answered, so done and billed: its usage is lost with the body
        raise upstream_failure(ctx, call.started, error, call.timeout_seconds) from None
    except (ResponseTooLarge, BufferBudgetExceeded) as too_large:
        response.close()  # stop reading: the rest of the body never enters the sidecar
        busy = isinstance(too_large, BufferBudgetExceeded)
        raise response_too_large(ctx, call, prices, metered, too_large.limit, busy=busy) from None
    try:
        # Metering parses the body: for a while it exists twice more (decoded and parsed).
        held.resize(3 * len(payload))
    except BufferBudgetExceeded as busy:
        raise response_too_large(ctx, call, prices, metered, busy.limit, busy=True) from None
    ctx.upstream.seconds = time.perf_counter() - call.started
    redactor = redactor_for(secrets)
    payload = redactor.bytes(payload)
    content_type = response.headers.get("Content-Type", "")
    if metered and 200 <= response.status < 300:
        settle.meter_body(ctx, prices, payload)
        await safety.check_answer(ctx, spec.safety.moderation, moderation, payload)
        if ctx.cache.key is not None:
            ctx.cache.entry = response_entry(
                response.status,
                payload,
                content_type=content_type or "application/json",
                model=ctx.model.reported,
                usage=settle.usage_dict(ctx.upstream.usage),
            )
    out = web.Response(
        status=response.status, body=payload, headers=downstream_headers(response.headers, redactor)
    )
    mark(ctx, out)
    return out


async def pass_through(
    request: web.Request, ctx: RequestContext, call: UpstreamCall, secrets: list[str], idle_seconds: float
) -> web.StreamResponse:
    """Relay an unmetered 2xx body as it arrives, redacted across chunk boundaries."""
    response = call.response
    redactor = redactor_for(secrets)
    out = web.StreamResponse(status=response.status, headers=downstream_headers(response.headers, redactor))
    mark(ctx, out)
    scanner = ChunkRedactor(redactor)
    try:
        await out.prepare(request)
        async for chunk in idle_timeout(response.content.iter_any(), idle_seconds):
            await out.write(scanner.feed(chunk))
        await out.write(scanner.flush())
        await out.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        ctx.outcome.decision = "client_disconnected"
    except (TimeoutError, aiohttp.ClientError) as error:
        ctx.upstream.error = (
            "upstream_timeout" if isinstance(error, TimeoutError) else "upstream_stream_error"
        )
        call.failed()
        # The status line is gone: only a cut connection tells the caller the body is incomplete
        # (ending the chunked body cleanly would pass a truncated file off as whole).
        if request.transport is not None:
            request.transport.close()
    ctx.upstream.seconds = time.perf_counter() - call.started
    return out


def response_too_large(
    ctx: RequestContext,
    call: UpstreamCall,
    prices: PriceTable,
    metered: bool,
    limit: int,
    *,
    busy: bool = False,
) -> refusals.Refusal:
    """Cut an oversized reply: the upstream may have billed it whole, so charge the worst case."""
    ctx.upstream.seconds = time.perf_counter() - call.started
    ctx.upstream.error = "upstream_response_too_large"
    if metered:
        settle.meter_usage(ctx, prices, None, None)
    return refusals.upstream_response_too_large(limit, busy=busy)


def redact(payload: bytes, secrets: list[str]) -> bytes:
    """Upstream bodies may quote the key (e.g. "Incorrect API key provided: ..."): never pass it on."""
    return redactor_for(secrets).bytes(payload)
