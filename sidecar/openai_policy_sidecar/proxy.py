"""The request path, in the order of design.md: parse → suspend → model → clamp → input tokens →
safety (PII, injection, moderation) → rate limits + budget hold → cache → queue → circuit breaker
+ upstream with timeout and retries → stream relay or plain reply, capturing usage → settle →
record.

Each stage is a function in ``pipeline/`` (see its docstring for the calling convention); this
module only sequences them, and keeps in one place the bookkeeping every request gets whatever
happens: the budget hold settled or released exactly once, the reply sent before the
bookkeeping, one record per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import aiohttp
from aiohttp import web

from . import media, refusals
from .context import RequestContext
from .durable import DurableState
from .genai_telemetry import GenAITelemetry
from .metrics import Metrics
from .pipeline import (
    cache,
    clamp,
    endpoint_gate,
    forward,
    input_limit,
    model_choice,
    queue,
    rate_and_budget,
    record,
    reply,
    safety,
    server_context,
    settle,
    stream_relay,
    suspend,
)
from .pipeline.parse import ClientGone, ParsedRequest, encode_body, parse_request
from .policy_source import PolicySource
from .resilience import CircuitOpen
from .snapshot import PolicySnapshot
from .upstream import Upstream

log = logging.getLogger("openai_policy_sidecar.proxy")


class Proxy:
    def __init__(
        self,
        source: PolicySource,
        upstream: Upstream,
        metrics: Metrics,
        *,
        durable: DurableState | None = None,
        attribution: dict[str, str | None] | None = None,
        telemetry: GenAITelemetry | None = None,
    ) -> None:
        self.source = source
        self.upstream = upstream
        self.metrics = metrics
        self.durable = durable or DurableState(
            source.store, metrics, upstream, source.keys, shared_cache=False
        )
        self.attribution = attribution or {}  # workload and namespace, for the access line
        self.telemetry = telemetry  # the optional OTLP GenAI metrics

    async def handle(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.source.snapshot
        assert snapshot is not None
        self.durable.sync(snapshot)
        ctx = RequestContext(dry_run=snapshot.dry_run)
        ctx.request.method, ctx.request.path = request.method, request.path
        self.metrics.in_flight.inc()
        try:
            try:
                response = await self._handle(request, snapshot, ctx)
            except refusals.Refusal as refusal:
                response = reply.refusal_reply(ctx, refusal, self.upstream.rate_view.headers())
            except ClientGone:
                # Not an error of ours nor a refusal: nobody is left to answer (nginx's 499).
                ctx.outcome.decision, ctx.outcome.status = "client_disconnected", 499
                response = web.Response(status=499)
            except asyncio.CancelledError:
                # The handler was cancelled (client gone, shutdown): never leak the hold.
                await asyncio.shield(settle.finish_budget(ctx, self.metrics))
                raise
            except Exception:
                log.exception("internal error handling %s %s", request.method, request.path)
                response = reply.refusal_reply(
                    ctx,
                    refusals.Refusal(
                        500,
                        "internal_error",
                        "The sidecar failed to handle this request.",
                        type=refusals.SERVER,
                    ),
                )
            # Send the reply before settling and recording: the caller does not wait for the
            # bookkeeping (with Redis, settling is a round trip). A stream is complete already.
            if not response.prepared:
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    ctx.outcome.decision = "client_disconnected"
            ctx.responded = time.perf_counter()
            await settle.finish_budget(ctx, self.metrics)
            sizes = server_context.sizes_for(self.source.store, snapshot.ref, snapshot.spec.endpoints)
            await server_context.remember(ctx, sizes, ctx.request.route, response)
            await cache.store_after_reply(ctx, self.durable.cache, snapshot.spec.cache.ttl_seconds)
            record.record(ctx, snapshot, self.metrics, self.attribution)
            if self.telemetry is not None:
                self.telemetry.record(ctx)
        finally:
            self.metrics.in_flight.dec()  # after the bookkeeping: in flight = not yet settled
        return response

    async def _handle(
        self, request: web.Request, snapshot: PolicySnapshot, ctx: RequestContext
    ) -> web.StreamResponse:
        spec = snapshot.spec
        parsed = await parse_request(ctx, request, spec.requests.max_body_bytes)
        suspend.stop_if_suspended(spec)
        endpoint_gate.check(ctx, spec.endpoints, parsed)
        server_context.note_conversation(ctx, ctx.request.route, parsed.body)
        if endpoint_gate.spends_unmetered(parsed):
            await endpoint_gate.admit_unmetered(ctx, snapshot.limiter, snapshot.ledger, self.metrics)
        key = forward.require_key(self.source.keys)
        if parsed.metered:
            body = await self._enforce_metered(ctx, snapshot, parsed)
        else:
            body = model_choice.pin_passthrough(ctx, spec.models, parsed)
        entry = await cache.lookup(ctx, self.durable.cache)
        if entry is not None:
            return await cache.serve(request, ctx, snapshot.prices, entry)
        upstream_queue = self.durable.queue
        assert upstream_queue is not None
        client_gone = functools.partial(queue.caller_left, request)
        if not await queue.wait_for_slot(upstream_queue, client_gone, self.metrics):
            ctx.outcome.decision, ctx.outcome.status = "client_disconnected", 499
            return web.Response(status=499)
        held = time.monotonic()
        try:
            return await self._call_upstream(request, ctx, snapshot, parsed, body, key)
        finally:
            upstream_queue.release(time.monotonic() - held)

    async def _enforce_metered(
        self, ctx: RequestContext, snapshot: PolicySnapshot, parsed: ParsedRequest
    ) -> bytes:
        """The policy's stages on a metered request; returns the body to send upstream."""
        spec = snapshot.spec
        body, endpoint = parsed.body, parsed.endpoint
        assert body is not None and endpoint is not None
        requested = parsed.model or server_context.prompt_model(spec.endpoints, body)
        choice = model_choice.choose(ctx, spec, snapshot.ledger.last_fraction_used, requested)
        body["model"] = choice.sent
        output_tokens = clamp.clamp(ctx, endpoint, body, spec.requests.max_output_tokens)
        tools = clamp.clamp_tools(ctx, endpoint, body, spec.requests.max_tool_calls, snapshot.prices)
        tools = tools or media.demand(ctx, endpoint, body, parsed.form, choice.sent, snapshot.prices)
        priced = model_choice.require_price(ctx, snapshot.prices, choice.sent)
        input_tokens = input_limit.count_input(
            ctx, endpoint, body, choice.sent, len(parsed.raw), spec.requests.max_input_tokens
        )
        sizes = server_context.sizes_for(self.source.store, snapshot.ref, spec.endpoints)
        input_tokens = await server_context.reserve_input(
            ctx, spec.endpoints, snapshot.prices, sizes, endpoint, body, choice.sent, input_tokens
        )
        input_tokens += server_context.tool_results(
            ctx, spec.endpoints, snapshot.prices, endpoint, body, choice.sent
        )
        await safety.check_request(ctx, spec.safety, self.durable.moderation, endpoint, body)
        worst = (
            rate_and_budget.worst_case(
                ctx,
                snapshot.prices,
                spec.pricing.auto_service_tier,
                endpoint,
                body,
                choice.sent,
                input_tokens,
                output_tokens,
                tools,
            )
            if priced
            else None
        )
        await rate_and_budget.check_and_reserve(
            ctx, snapshot.limiter, snapshot.ledger, input_tokens + output_tokens, worst, self.metrics
        )
        cache.key_for(ctx, spec.cache, endpoint, body)
        if parsed.stream:
            stream_relay.ask_for_usage(ctx, endpoint, body)
        if spec.logging.prompts:
            ctx.request.prompt = body.get("messages", body.get("input", body.get("prompt")))
        return encode_body(body) if parsed.form is None else parsed.form.encode_fields(body)

    async def _call_upstream(
        self,
        request: web.Request,
        ctx: RequestContext,
        snapshot: PolicySnapshot,
        parsed: ParsedRequest,
        body: bytes,
        key: str,
    ) -> web.StreamResponse:
        spec = snapshot.spec
        assert self.durable.breakers is not None
        try:
            call = await forward.call_upstream(
                ctx,
                spec,
                parsed,
                request.headers.items(),
                body,
                key,
                self.upstream,
                self.durable.breakers,
                self.metrics,
            )
        except CircuitOpen as circuit:
            # While open: serve from the cache when there is an entry (it may have been stored
            # while this request queued), else fail fast.
            entry = await cache.lookup(ctx, self.durable.cache)
            if entry is not None:
                return await cache.serve(request, ctx, snapshot.prices, entry)
            raise forward.circuit_refusal(ctx, circuit) from None
        try:
            if stream_relay.is_event_stream(call.response):
                idle = spec.requests.stream_idle_timeout_seconds
                return await stream_relay.relay(
                    request,
                    ctx,
                    call,
                    snapshot.prices,
                    idle,
                    max_event_bytes=spec.requests.max_stream_event_bytes,
                    secrets=self.source.keys.secrets,
                )
            return await reply.plain_reply(
                ctx,
                call,
                spec,
                snapshot.prices,
                self.durable.moderation,
                self.source.keys.secrets,
                metered=parsed.metered,
                # None: buffered, so that server_context can read the id of what it creates.
                request=None if server_context.wants_body(ctx) else request,
            )
        finally:
            call.response.release()
