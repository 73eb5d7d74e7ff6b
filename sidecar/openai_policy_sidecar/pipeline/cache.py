"""Stage cache: answer identical requests from the response cache, and fill it after a reply.

A hit is billed nothing (the budget hold is released) and the cost the original call had is
counted as saved. A broken cache is a miss, never an error (``ResponseCache``).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from openai_policy_api import CacheSpec

from ..context import RequestContext
from ..pricing import PriceTable, UnknownModelPrice
from ..rate_headers import tighter
from ..response_cache import CachedResponse, ResponseCache, cache_key, is_cacheable, replay_stream
from .reply import CACHE_HEADER, request_id_headers


def key_for(ctx: RequestContext, spec: CacheSpec, endpoint: str, body: dict[str, Any]) -> None:
    """Set ``ctx.cache.key`` when the request may be served from / stored into the cache.

    Called with the request as sent (pinned, clamped, redacted) but before the include_usage
    added for metering: the cached events are the ones the caller saw.
    """
    if is_cacheable(body, spec, endpoint=endpoint):
        ctx.cache.key = cache_key(endpoint, body)


async def lookup(ctx: RequestContext, cache: ResponseCache | None) -> CachedResponse | None:
    """The cached answer for this request, if any."""
    if ctx.cache.key is None or cache is None:
        return None
    entry = await cache.lookup(ctx.cache.key, stream=ctx.request.stream)
    ctx.cache.state = "hit" if entry is not None else "miss"
    return entry


async def serve(
    request: web.Request, ctx: RequestContext, prices: PriceTable, entry: CachedResponse
) -> web.StreamResponse:
    """Answer from the cache."""
    ctx.cache.state = "hit"
    ctx.outcome.status, ctx.outcome.decision = entry.status, "cache_hit"
    ctx.model.reported = entry.model
    ctx.cache.saved_micros = saved_micros(prices, ctx.model.sent or entry.model or "", entry.usage)
    headers = {"Content-Type": entry.content_type, CACHE_HEADER: "hit", **request_id_headers(ctx)}
    headers.update(tighter(ctx.outcome.rate_headers))  # a hit still counted against the policy's limits
    if not entry.streamed:
        return web.Response(status=entry.status, body=entry.body or b"", headers=headers)
    out = web.StreamResponse(status=entry.status, headers=headers)
    try:
        await out.prepare(request)
        async for chunk in replay_stream(entry):
            await out.write(chunk)
        await out.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        ctx.outcome.decision = "client_disconnected"
    return out


async def store_after_reply(ctx: RequestContext, cache: ResponseCache | None, ttl_seconds: float) -> None:
    """Store the answer the reply stages kept, once the reply went out (the caller does not wait
    for a Redis write)."""
    pending, ctx.cache.entry = ctx.cache.entry, None
    if pending is None or cache is None or ctx.cache.key is None:
        return
    await cache.store(ctx.cache.key, pending, ttl_seconds)


def saved_micros(prices: PriceTable, model: str, usage: dict[str, Any] | None) -> int:
    """What a cached answer would have cost if it had been asked upstream again."""
    if not usage or not model:
        return 0
    try:
        return prices.cost_micros(
            model,
            int(usage.get("input_tokens") or 0),
            int(usage.get("cached_tokens") or 0),
            int(usage.get("output_tokens") or 0),
        )
    except (UnknownModelPrice, TypeError, ValueError):
        return 0
