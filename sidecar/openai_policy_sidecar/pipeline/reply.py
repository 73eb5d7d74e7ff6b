"""Stage reply: a plain (non-streamed) upstream reply, read within the deadline and metered; and
the headers every reply of the sidecar carries.

A metered 2xx answer is metered (``settle``), moderated when the policy says so (``safety``) and
kept for the cache; an error body is redacted, since the upstream may quote the key in it.
"""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from openai_policy_api import PolicySpec

from .. import refusals
from ..context import RequestContext
from ..guardrails import ModerationClient
from ..pricing import PriceTable
from ..resilience import run_with_deadline
from ..response_cache import response_entry
from ..upstream import downstream_headers
from . import safety, settle
from .forward import UpstreamCall, upstream_failure

REQUEST_ID_HEADER = "x-openai-policy-request-id"
CACHE_HEADER = "x-openai-policy-cache"


def mark(ctx: RequestContext, out: web.StreamResponse) -> None:
    """Our headers on a forwarded reply."""
    out.headers[REQUEST_ID_HEADER] = ctx.request_id
    if ctx.cache.state == "miss":
        out.headers[CACHE_HEADER] = "miss"
    if ctx.retries:
        out.headers["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it


def refusal_reply(ctx: RequestContext, refusal: refusals.Refusal) -> web.Response:
    """The reply for a refusal, recorded as the request's outcome."""
    ctx.refuse(refusal)
    extra = {REQUEST_ID_HEADER: ctx.request_id}
    if ctx.retries:
        extra["x-should-retry"] = "false"  # we retried already: the app's SDK must not multiply it
    return refusal.to_response(extra)


async def plain_reply(
    ctx: RequestContext,
    call: UpstreamCall,
    spec: PolicySpec,
    prices: PriceTable,
    moderation: ModerationClient,
    secrets: list[str],
    *,
    metered: bool,
) -> web.Response:
    response = call.response
    try:
        payload = await run_with_deadline(response.read(), call.deadline)
    except (TimeoutError, aiohttp.ClientError) as error:
        call.failed()
        raise upstream_failure(ctx, call.started, error, call.timeout_seconds) from None
    ctx.upstream.seconds = time.perf_counter() - call.started
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
    if response.status >= 400:
        payload = redact(payload, secrets)
    out = web.Response(status=response.status, body=payload, headers=downstream_headers(response.headers))
    mark(ctx, out)
    return out


def redact(payload: bytes, secrets: list[str]) -> bytes:
    """Upstream error bodies may quote the key (e.g. "Incorrect API key provided: ..."): never pass it on."""
    for secret in secrets:
        if secret:
            payload = payload.replace(secret.encode(), b"[REDACTED]")
    return payload
