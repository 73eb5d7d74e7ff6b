"""Stage stream_relay: relay an upstream event stream to the caller event by event, metering it
on the way (``streaming.StreamMeter``), bounded by the idle timeout, and keep it for the cache
when it completed.

Once the 200 headers are sent an error can only be told inside the stream: a stalled upstream,
or an event larger than ``spec.requests.maxStreamEventBytes`` (a stream without blank lines is
one endless event), ends it with an OpenAI-shaped error event, which the SDKs raise as
``APIError``; an oversized stream is charged its worst case. Every event is redacted of the key
before it is sent or cached: events are whole by then, so a key split across network chunks is
found too.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from .. import refusals
from ..buffer_budget import SHARED, BufferBudgetExceeded
from ..context import RequestContext
from ..pricing import PriceTable
from ..redaction import redactor_for
from ..resilience import StreamIdleTimeout, idle_timeout
from ..response_cache import StreamRecorder
from ..streaming import StreamEventTooLarge, StreamMeter, add_include_usage, split_events
from ..upstream import downstream_headers
from . import settle
from .forward import UpstreamCall
from .reply import mark

log = logging.getLogger("openai_policy_sidecar.pipeline.stream_relay")


def ask_for_usage(ctx: RequestContext, endpoint: str, body: dict[str, Any]) -> None:
    """Ask upstream to report a stream's usage; the relay removes what that adds to the stream."""
    ctx.upstream.strip_usage = add_include_usage(endpoint, body)


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    return response.status < 300 and response.headers.get("Content-Type", "").startswith("text/event-stream")


async def relay(
    request: web.Request,
    ctx: RequestContext,
    call: UpstreamCall,
    prices: PriceTable,
    idle_seconds: float,
    *,
    max_event_bytes: int | None = None,
    secrets: list[str] | None = None,
) -> web.StreamResponse:
    response = call.response
    redactor = redactor_for(secrets or [])
    out = web.StreamResponse(status=response.status, headers=downstream_headers(response.headers, redactor))
    mark(ctx, out)
    await out.prepare(request)
    endpoint = ctx.request.endpoint
    meter = StreamMeter(endpoint or "", ctx.upstream.strip_usage)
    recorder = StreamRecorder() if ctx.cache.key is not None else None
    client_gone = False
    failed = False
    too_large = False
    chunks = idle_timeout(response.content.iter_any(), idle_seconds)
    held = SHARED.hold(max_event_bytes or 0)
    try:
        async for event, separator in split_events(chunks, max_event_bytes, held):
            # Redacted before it is read too: the model name it reports reaches logs and metrics.
            event = redactor.bytes(event)
            forwarded = meter.transform(event) if endpoint else event
            if forwarded is None:
                continue
            if recorder is not None:
                recorder.add(forwarded)
            try:
                await out.write(forwarded + separator)
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                client_gone = True
                break
    except StreamIdleTimeout as stalled:
        failed = True
        ctx.upstream.error = "upstream_timeout"
        log.warning("%s", stalled)
        client_gone = not await write_stream_error(out, "upstream_timeout", str(stalled))
    except (StreamEventTooLarge, BufferBudgetExceeded) as oversized:
        failed = too_large = True
        ctx.upstream.error = "upstream_response_too_large"
        log.warning("cutting an upstream stream: %s", oversized)
        response.close()  # stop reading: the rest of the event never enters the sidecar
        refusal = refusals.upstream_response_too_large(
            oversized.limit, busy=isinstance(oversized, BufferBudgetExceeded)
        )
        client_gone = not await write_stream_error(out, refusal.code, refusal.message)
    except TimeoutError:
        failed = True
        ctx.upstream.error = "upstream_timeout"
    except aiohttp.ClientError:
        failed = True
        ctx.upstream.error = "upstream_stream_error"
    finally:
        held.release()
    if failed and not too_large:
        call.failed()  # a stream that stops talking is a failing upstream (an oversized one is not)
    ctx.upstream.seconds = time.perf_counter() - call.started
    if endpoint:
        # A cut oversized stream may have been billed whole upstream: charge its worst case.
        settle.meter_usage(ctx, prices, None if too_large else meter.usage, meter.model)
        ctx.upstream.response_id = meter.response_id
    if recorder is not None and not failed and not client_gone:
        ctx.cache.entry = recorder.finish(
            completed=meter.completed,
            model=meter.model,
            usage=settle.usage_dict(meter.usage),
            status=response.status,
        )
    if client_gone:
        ctx.outcome.decision = "client_disconnected"
    else:
        try:
            await out.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            ctx.outcome.decision = "client_disconnected"
    return out


async def write_stream_error(out: web.StreamResponse, code: str, message: str) -> bool:
    """An OpenAI-shaped error event at the end of a cut stream; False when the caller is gone."""
    event = {"error": {"message": message, "type": refusals.SERVER, "param": None, "code": code}}
    try:
        await out.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        return False
    return True
