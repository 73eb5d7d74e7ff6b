"""The request path: parse → suspend → model → clamp → input tokens → rate limit → budget →
upstream → stream or return (capturing usage) → settle → record.

Each stage is a plain function in ``stages/``; this class only sequences them and keeps the
bookkeeping (reservation settled or released exactly once, one record per request) in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from . import errors
from .accounting import record
from .context import RequestContext
from .metrics import Metrics
from .policy_source import PolicySource
from .pricing import UnknownModelPrice
from .request_parse import ParsedRequest, parse, read_body
from .runtime import Runtime
from .stages import budget as budget_stage
from .stages.clamp import choices, clamp_output
from .stages.input_limit import check_input_tokens
from .stages.models import ModelChoice, choose_model, is_drift, should_downgrade
from .stages.rate_limit import check_rate
from .stages.suspend import check_suspend
from .state import BudgetLedger, Reservation, StoreUnavailable
from .state.windows import current_buckets
from .streaming import StreamMeter, add_include_usage, split_events
from .tokens import TokenCountError, count_input_tokens
from .upstream import Upstream, downstream_headers, join_url, upstream_headers
from .usage import from_response

log = logging.getLogger("openai_policy_sidecar.proxy")

REQUEST_ID_HEADER = "x-openai-policy-request-id"


class Proxy:
    def __init__(
        self, source: PolicySource, upstream: Upstream, metrics: Metrics, *, concurrent_limits: bool = False
    ) -> None:
        self.source = source
        self.upstream = upstream
        self.metrics = metrics
        self.concurrent_limits = concurrent_limits  # True with a remote store: see _rate_and_budget

    # -- entry point ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        runtime = self.source.runtime
        assert runtime is not None
        ctx = RequestContext(dry_run=runtime.dry_run, method=request.method, path=request.path)
        ctx.ledger = runtime.ledger
        self.metrics.in_flight.inc()
        try:
            try:
                response = await self._handle(request, runtime, ctx)
            except errors.Refusal as refusal:
                response = self._refuse(ctx, refusal)
            except Exception:
                log.exception("internal error handling %s %s", request.method, request.path)
                response = self._refuse(
                    ctx,
                    errors.Refusal(
                        500, "internal_error", "The sidecar failed to handle this request.", type=errors.SERVER
                    ),
                )
            # Send the reply before settling and recording: the caller does not wait for the
            # bookkeeping (with Redis, settling is a round trip). A stream is complete already.
            if not response.prepared:
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    ctx.decision = "client_disconnected"
            ctx.responded = time.perf_counter()
            await self._finish_budget(ctx)
            record(ctx, runtime, self.metrics)
        finally:
            self.metrics.in_flight.dec()  # after the bookkeeping: in flight = not yet settled
        return response

    def _refuse(self, ctx: RequestContext, refusal: errors.Refusal) -> web.Response:
        ctx.refusal = refusal
        ctx.status = refusal.status
        ctx.decision = f"refused:{refusal.code}"
        return refusal.to_response({REQUEST_ID_HEADER: ctx.request_id})

    async def _handle(self, request: web.Request, runtime: Runtime, ctx: RequestContext) -> web.StreamResponse:
        spec = runtime.spec
        if not (request.path == "/v1" or request.path.startswith("/v1/")):
            raise errors.not_found(request.path)
        raw = await read_body(request, spec.requests.max_body_bytes)
        parsed = parse(request.method, request.path, request.query_string, request.headers, raw)
        ctx.endpoint, ctx.stream = parsed.endpoint, parsed.stream
        ctx.user, ctx.feature, ctx.model_requested = parsed.user, parsed.feature, parsed.model
        # The kill switch holds in dry-run mode too: it is an explicit order, not a verdict.
        suspended = check_suspend(spec.suspend)
        if suspended is not None:
            raise suspended
        key = self.source.keys.key
        if not key:
            raise errors.api_key_missing()
        if parsed.metered:
            body = await self._enforce_metered(ctx, runtime, parsed)
        else:
            body = self._enforce_passthrough(ctx, runtime, parsed)
        return await self._forward(request, ctx, runtime, parsed, body, key)

    # -- enforcement ------------------------------------------------------------------------------

    async def _enforce_metered(self, ctx: RequestContext, runtime: Runtime, parsed: ParsedRequest) -> bytes:
        spec = runtime.spec
        body = parsed.body
        endpoint = parsed.endpoint
        assert body is not None and endpoint is not None and parsed.model is not None
        choice = self._choose_model(ctx, runtime, parsed.model)
        body["model"] = choice.sent

        max_out = clamp_output(endpoint, body, spec.requests.max_output_tokens)
        ctx.max_output_tokens = max_out
        output_budget = max_out * choices(endpoint, body)

        priced = True
        try:
            runtime.prices.price(choice.sent)
        except UnknownModelPrice:
            priced = False
            ctx.enforce(
                errors.model_not_allowed(
                    choice.sent,
                    "It has no known price, so its spend could not be metered: add it to spec.pricing.models.",
                )
            )

        try:
            input_tokens = count_input_tokens(endpoint, body, choice.sent)
        except TokenCountError as error:  # a shape no OpenAI endpoint accepts: say which field
            raise errors.invalid_request(
                f"Invalid request body: {error}", param=error.param, code="invalid_type"
            ) from None
        except Exception as error:  # an exotic input shape: never under-count, never crash
            log.warning("token count failed (%s); estimating from the body size", error.__class__.__name__)
            input_tokens = len(parsed.raw)
        ctx.input_tokens = input_tokens
        ctx.enforce(check_input_tokens(input_tokens, spec.requests.max_input_tokens))

        if priced:
            ctx.worst_micros = runtime.prices.worst_case_micros(choice.sent, input_tokens, output_budget)
        await self._rate_and_budget(ctx, runtime, input_tokens + output_budget, ctx.worst_micros)

        if parsed.stream:
            ctx.strip_usage = add_include_usage(endpoint, body)
        if spec.logging.prompts:
            ctx.prompt = body.get("messages", body.get("input", body.get("prompt")))
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def _enforce_passthrough(self, ctx: RequestContext, runtime: Runtime, parsed: ParsedRequest) -> bytes:
        """Other /v1 paths: model allow + pin when the JSON body names a model; counted, not metered."""
        if parsed.body is None or parsed.model is None:
            return parsed.raw
        try:
            choice = choose_model(runtime.spec.models, parsed.model, downgrade=False)
        except errors.Refusal as refusal:
            ctx.enforce(refusal)
            ctx.model_sent = parsed.model
            return parsed.raw
        ctx.model_sent, ctx.pinned = choice.sent, choice.pinned
        if choice.sent == parsed.model:
            return parsed.raw
        parsed.body["model"] = choice.sent
        return json.dumps(parsed.body, separators=(",", ":"), ensure_ascii=False).encode()

    def _choose_model(self, ctx: RequestContext, runtime: Runtime, requested: str) -> ModelChoice:
        spec = runtime.spec
        # The fraction used is the one the reporter read (every ~1 s) or a refusal set: no store
        # round trip on the request path for a threshold that moves slowly.
        fraction = runtime.ledger.last_fraction_used
        downgrade = should_downgrade(fraction, spec.budget.downgrade_at_percent, spec.models.fallback)
        try:
            choice = choose_model(spec.models, requested, downgrade)
        except errors.Refusal as refusal:
            ctx.enforce(refusal)  # dry-run: carry on with the model asked for
            choice = ModelChoice(requested=requested, sent=requested, pinned=False, downgraded=False)
        ctx.model_sent, ctx.pinned, ctx.downgraded = choice.sent, choice.pinned, choice.downgraded
        return choice

    async def _rate_and_budget(self, ctx: RequestContext, runtime: Runtime, tokens: int, worst: int | None) -> None:
        """Count the request against the rate limits, then hold its worst-case cost.

        With a remote store both are asked at once (one round trip of latency instead of two);
        the price is that a request the budget refuses still counts towards the rate limit, as
        OpenAI counts its own refused requests. A reservation taken for a request the rate limit
        then refuses is released by ``_finish_budget``.
        """
        ledger: BudgetLedger = runtime.ledger
        ctx.ledger = ledger
        if worst is None:
            rate = await self._check_rate(runtime, ctx.user, tokens)
            held: tuple[Reservation | None, errors.Refusal | None] = (None, None)
        elif self.concurrent_limits:
            rate, held = await asyncio.gather(
                self._check_rate(runtime, ctx.user, tokens), self._try_reserve(ledger, worst)
            )
        else:
            rate = await self._check_rate(runtime, ctx.user, tokens)
            refused_now = rate[0] is not None and not ctx.dry_run
            held = (None, None) if refused_now else await self._try_reserve(ledger, worst)
        rate_refusal, ctx.rate_headers = rate
        reservation, budget_refusal = held
        if reservation is not None:
            ctx.reservation, ctx.reserved_micros = reservation, worst or 0
        ctx.enforce(rate_refusal)
        if budget_refusal is not None:
            ctx.enforce(budget_refusal)
            # Dry run: no money held, but the real cost is still settled into spent afterwards.
            ctx.reservation = _unheld(ledger)

    async def _check_rate(
        self, runtime: Runtime, user: str | None, tokens: int
    ) -> tuple[errors.Refusal | None, dict[str, str]]:
        try:
            return await check_rate(runtime.limiter, user, tokens)
        except StoreUnavailable:  # the limiter falls back to local counters unless it fails closed
            self.metrics.child(self.metrics.store_errors, "rate_limit").inc()
            return errors.store_unavailable(), {}

    async def _try_reserve(self, ledger: BudgetLedger, worst: int) -> tuple[Reservation | None, errors.Refusal | None]:
        """Hold the worst case. The ledger itself falls back to a local share when the policy says
        localShare; StoreUnavailable reaching us means the policy fails closed."""
        try:
            return await budget_stage.reserve(ledger, worst), None
        except StoreUnavailable:
            self.metrics.child(self.metrics.store_errors, "budget_reserve").inc()
            return None, errors.store_unavailable()
        except errors.Refusal as refusal:
            return None, refusal

    async def _finish_budget(self, ctx: RequestContext) -> None:
        """Settle to the real cost, or release when upstream billed nothing; exactly once."""
        reservation = ctx.reservation
        if reservation is None or ctx.settled:
            return
        ctx.settled = True
        ledger: BudgetLedger = ctx.ledger
        try:
            if ctx.cost_micros is not None:
                await ledger.settle(reservation, ctx.cost_micros)
            else:
                await ledger.release(reservation)
        except StoreUnavailable:
            self.metrics.store_errors.labels(operation="budget_settle").inc()
            log.error("could not settle reservation %s: the shared store is unavailable", reservation.id)

    # -- upstream ---------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        runtime: Runtime,
        parsed: ParsedRequest,
        body: bytes,
        key: str,
    ) -> web.StreamResponse:
        spec = runtime.spec
        limits = spec.requests
        headers = upstream_headers(request.headers.items(), key, spec.upstream.organization, spec.upstream.project)
        url = join_url(spec.upstream.base_url, parsed.path, parsed.query)
        if parsed.stream:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=limits.timeout_seconds, sock_read=limits.stream_idle_timeout_seconds
            )
        else:
            timeout = aiohttp.ClientTimeout(total=limits.timeout_seconds)
        started = time.perf_counter()
        try:
            response = await self.upstream.request(parsed.method, url, headers, body, timeout)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _upstream_failure(ctx, started, error, limits.timeout_seconds) from None
        try:
            ctx.upstream_request_id = response.headers.get("x-request-id")
            ctx.status = response.status
            content_type = response.headers.get("Content-Type", "")
            if response.status < 300 and content_type.startswith("text/event-stream"):
                return await self._relay_stream(request, ctx, runtime, response, started)
            try:
                payload = await response.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                raise _upstream_failure(ctx, started, error, limits.timeout_seconds) from None
            ctx.upstream_seconds = time.perf_counter() - started
            if parsed.metered and 200 <= response.status < 300:
                self._meter_body(ctx, runtime, payload)
            if response.status >= 400:
                payload = self._redact(payload)
            out = web.Response(status=response.status, body=payload, headers=downstream_headers(response.headers))
            out.headers[REQUEST_ID_HEADER] = ctx.request_id
            return out
        finally:
            response.release()

    def _meter_body(self, ctx: RequestContext, runtime: Runtime, payload: bytes) -> None:
        try:
            usage, model = from_response(json.loads(payload))
        except ValueError:
            usage, model = None, None
        self._settle_usage(ctx, runtime, usage, model)

    def _settle_usage(self, ctx: RequestContext, runtime: Runtime, usage: Any, model: str | None) -> None:
        """Turn the reported usage into the real cost; without usage, charge the worst case."""
        ctx.model_reported = model
        ctx.drift = bool(ctx.model_sent) and is_drift(ctx.model_sent or "", model)
        worst = ctx.worst_micros
        if usage is None:
            ctx.cost_micros = worst  # spend is never unmetered: no usage, assume the worst case
            ctx.decision = "forwarded:usage_missing"
            return
        ctx.usage = usage
        if worst is None:
            return  # unpriced model forwarded in dry-run mode
        ctx.cost_micros = runtime.prices.cost_micros(
            ctx.model_sent or "", usage.input_tokens, usage.cached_tokens, usage.output_tokens
        )

    async def _relay_stream(
        self,
        request: web.Request,
        ctx: RequestContext,
        runtime: Runtime,
        response: aiohttp.ClientResponse,
        started: float,
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=response.status, headers=downstream_headers(response.headers))
        out.headers[REQUEST_ID_HEADER] = ctx.request_id
        await out.prepare(request)
        meter = StreamMeter(ctx.endpoint or "", ctx.strip_usage)
        client_gone = False
        try:
            async for event, separator in split_events(response.content.iter_any()):
                forwarded = meter.transform(event) if ctx.endpoint else event
                if forwarded is None:
                    continue
                try:
                    await out.write(forwarded + separator)
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    client_gone = True
                    break
        except TimeoutError:
            ctx.upstream_error = "upstream_timeout"
        except aiohttp.ClientError:
            ctx.upstream_error = "upstream_stream_error"
        ctx.upstream_seconds = time.perf_counter() - started
        if ctx.endpoint:
            self._settle_usage(ctx, runtime, meter.usage, meter.model)
        if client_gone:
            ctx.decision = "client_disconnected"
        else:
            try:
                await out.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                ctx.decision = "client_disconnected"
        return out

    def _redact(self, payload: bytes) -> bytes:
        """Upstream error bodies may quote the key (e.g. "Incorrect API key provided: ..."): never pass it on."""
        for secret in self.source.keys.secrets:
            if secret:
                payload = payload.replace(secret.encode(), b"[REDACTED]")
        return payload


def _upstream_failure(ctx: RequestContext, started: float, error: BaseException, timeout: float) -> errors.Refusal:
    """The refusal for an upstream that timed out or could not be reached (before any reply byte)."""
    ctx.upstream_seconds = time.perf_counter() - started
    if isinstance(error, TimeoutError):
        ctx.upstream_error = "upstream_timeout"
        return errors.upstream_timeout(timeout)
    ctx.upstream_error = "upstream_unreachable"
    return errors.upstream_unreachable(error.__class__.__name__)


def _unheld(ledger: BudgetLedger) -> Reservation:
    """A dry-run stand-in for a refused reservation: holds nothing, but settling it still adds the
    real cost to spent (the store settles an id it does not hold as pure spend)."""
    return Reservation("dryrun-" + uuid.uuid4().hex, 0, tuple(current_buckets(ledger.limits)))
