"""A faithful fake of the OpenAI API, for tests, benchmarks and the demo.

Endpoints: POST /v1/chat/completions (plain and SSE), /v1/responses (plain and SSE events),
/v1/completions, /v1/embeddings (float and base64), /v1/moderations; GET /v1/models[/{id}].
Bodies, stream framing, usage blocks, headers and errors follow the real API (checked against
OpenAI's own OpenAPI schema by tests/devkit/test_fake_openai_schema.py). Faults are scripted with
`add_fault` (see fake_openai_faults.py); every request is recorded with its headers.

Three ways to run it:
- pytest: the `fake_openai` fixture (devkit/openai_policy_devkit/fake_openai_fixture.py), one server per test;
- async code: `async with FakeOpenAI.running() as fake: ...` on the current loop;
- standalone: `python -m openai_policy_devkit.fake_openai --port 8080 [--host 127.0.0.1]`. It then keeps
  no per-request records unless `--record` is given (benchmarks hammer it), and can be scripted
  over HTTP under /_fake/ (fake_openai_admin.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import functools
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from openai_policy_devkit import fake_openai_billing as billing
from openai_policy_devkit import fake_openai_media as media
from openai_policy_devkit import fake_openai_payloads as payloads
from openai_policy_devkit import fake_openai_requests as requests_
from openai_policy_devkit import fake_openai_tokens as tokens
from openai_policy_devkit.fake_openai_admin import admin_routes
from openai_policy_devkit.fake_openai_faults import Fault, FaultBook, make_fault
from openai_policy_devkit.fake_openai_requests import RequestError
from openai_policy_devkit.fake_openai_stored import StoredObjects, stored_routes

DEFAULT_REPLY = "Hello! This is a deterministic reply from the fake OpenAI upstream."
DEFAULT_MODERATION_TRIGGERS = ("kill",)
RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 30_000_000
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)
_CHUNK = 64 * 1024
# Headers a fault adds to every response of the request being handled (each request is a task).
_FAULT_HEADERS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "fault_headers", default=()
)


@dataclass
class RecordedRequest:
    """One request as it reached the fake 'OpenAI'."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]  # case-insensitive
    body: bytes
    query: str = ""
    time: float = field(default_factory=time.monotonic)  # arrival, time.monotonic()

    @functools.cached_property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class _Call:
    """Per-request state the endpoint handlers need."""

    request: web.Request
    body: dict[str, Any]
    faults: dict[str, Fault]
    started: float

    @property
    def streaming(self) -> bool:
        return self.body.get("stream") is True

    @property
    def key(self) -> str:
        """The Bearer token this request carried (faults that echo it)."""
        return self.request.headers.get("Authorization", "").partition(" ")[2].strip()

    def usage(self, usage: Any) -> Any:
        """The usage object to report: the real one, or the `usage` fault's."""
        return self.faults["usage"].usage if "usage" in self.faults else usage


class _RateWindow:
    """Rolling one-minute counters behind the x-ratelimit-* headers (they never refuse anything)."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.requests = 0
        self.tokens = 0

    def headers(self, request_tokens: int) -> dict[str, str]:
        now = time.monotonic()
        if now - self.start >= 60:
            self.start, self.requests, self.tokens = now, 0, 0
        self.requests += 1
        self.tokens += request_tokens
        reset = _duration(60 - (now - self.start))
        return {
            "x-ratelimit-limit-requests": str(RATE_LIMIT_REQUESTS),
            "x-ratelimit-remaining-requests": str(max(RATE_LIMIT_REQUESTS - self.requests, 0)),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": str(RATE_LIMIT_TOKENS),
            "x-ratelimit-remaining-tokens": str(max(RATE_LIMIT_TOKENS - self.tokens, 0)),
            "x-ratelimit-reset-tokens": reset,
        }


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1.5s', '6m0s'."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


class FakeOpenAI:
    """The fake server. Construct, then `start()` on a loop or `start_in_thread()`; or use `running()`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        api_key: str | None = None,
        reply_text: str = DEFAULT_REPLY,
        cached_tokens: int = 0,
        moderation_triggers: Iterable[str] = DEFAULT_MODERATION_TRIGGERS,
    ) -> None:
        self.host = host
        self.port = port
        self.record = record
        self.api_key = api_key  # None: any Bearer token is accepted
        self.reply_text = reply_text
        self.cached_tokens = cached_tokens
        self.moderation_triggers = tuple(moderation_triggers)
        self.requests: list[RecordedRequest] = []
        self.usage_log: list[dict[str, Any]] = []
        self.billing = billing.Billing()  # what each answered call really costs
        self.stored = StoredObjects()  # files, conversations, stored responses, prompts, batches
        self.auto_service_tier = "default"  # the tier the project serves service_tier auto at
        self.cache_write_tokens = 0  # prompt tokens reported (and billed) as written to the cache
        self._faults = FaultBook()
        self._rate = _RateWindow()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- scripting API ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def add_fault(
        self, kind: str, *, times: int | None = 1, match: str | None = None, **params: Any
    ) -> Fault:
        """Script a fault for the next `times` matching requests (None: until cleared); see FAULT_KINDS."""
        return self._faults.add(make_fault(kind, times=times, match=match, **params))

    def clear_faults(self) -> None:
        self._faults.clear()

    def release_hangs(self) -> None:
        """Let go every call a `hang` fault holds (its connection dropped, as at stop), and every
        later one at once: a test that held calls open ends without waiting for their timeouts."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    @property
    def faults(self) -> list[Fault]:
        """Faults still pending."""
        return self._faults.pending()

    def reset(self) -> None:
        """Forget recorded requests, usage and faults."""
        self.requests.clear()
        self.usage_log.clear()
        self._faults.clear()
        self.billing.clear()
        self.stored.clear()

    def billed_micros(self) -> int:
        """What every call answered so far really cost, in micro-dollars (fake_openai_billing)."""
        return self.billing.total_micros()

    # --- lifecycle ----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        api = self._api
        app.router.add_post("/v1/chat/completions", api(self._chat))
        app.router.add_post("/v1/responses", api(self._responses))
        app.router.add_post("/v1/completions", api(self._completions))
        app.router.add_post("/v1/embeddings", api(self._embeddings))
        app.router.add_post("/v1/moderations", api(self._moderations))
        app.router.add_get("/v1/models", api(self._models))
        app.router.add_get("/v1/models/{model_id:.+}", api(self._model))
        app.router.add_post(
            "/v1/images/generations", api(lambda c: media.images(self, c, "images.generations"))
        )
        app.router.add_post("/v1/images/edits", api(lambda c: media.images(self, c, "images.edits")))
        app.router.add_post(
            "/v1/images/variations", api(lambda c: media.images(self, c, "images.variations"))
        )
        app.router.add_post("/v1/audio/speech", api(lambda c: media.speech(self, c)))
        app.router.add_post(
            "/v1/audio/transcriptions", api(lambda c: media.transcription(self, c, "audio.transcriptions"))
        )
        app.router.add_post(
            "/v1/audio/translations", api(lambda c: media.transcription(self, c, "audio.translations"))
        )
        app.router.add_routes(stored_routes(self))
        app.router.add_routes(admin_routes(self))
        app.router.add_route("*", "/{tail:.*}", api(self._unknown))
        return app

    async def start(self) -> None:
        """Serve on the running loop (port 0: pick a free one, then `self.port` tells which)."""
        tokens.warm_up()
        self._stopping = asyncio.Event()
        # access_log=None: nothing per request. shutdown_timeout: hung handlers are released by
        # `_stopping`, so stop never needs aiohttp's 60 s grace period.
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, shutdown_timeout=2.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **options: Any) -> AsyncIterator[FakeOpenAI]:
        """`async with FakeOpenAI.running() as fake:` — serves on the current loop meanwhile."""
        fake = cls(**options)
        await fake.start()
        try:
            yield fake
        finally:
            await fake.stop()

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Serve from a background thread with its own loop, so sync code (and any loop) can call it."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name=f"fake-openai-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("fake OpenAI server did not start")
        if failure:
            raise failure[0]

    def stop_thread(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        loop, self._loop = self._loop, None

        def begin_stop() -> None:
            if self._stopping is not None:
                self._stopping.set()  # release hung handlers before the loop winds down
            loop.stop()

        loop.call_soon_threadsafe(begin_stop)
        self._thread.join(timeout)
        self._thread = None

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, **options: Any) -> Iterator[FakeOpenAI]:
        fake = cls(**options)
        fake.start_in_thread()
        try:
            yield fake
        finally:
            fake.stop_thread()

    # --- request pipeline ---------------------------------------------------------------------

    def _api(
        self, endpoint: Callable[[_Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Wrap an endpoint: record, authenticate, parse, apply faults, answer errors OpenAI's way."""

        async def handler(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            raw = await request.read()
            if self.record:
                self.requests.append(
                    RecordedRequest(request.method, request.path, request.headers, raw, request.query_string)
                )
            try:
                self._authenticate(request.headers)
                form = request.content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))
                body = requests_.parse_body(raw) if request.method == "POST" and not form else {}
                call = _Call(
                    request, body, self._faults.take(request.path, body.get("stream") is True), started
                )
                if "echo_key_header" in call.faults:
                    _FAULT_HEADERS.set(((str(call.faults["echo_key_header"].name), call.key),))
                if "latency" in call.faults and not call.streaming:
                    # OpenAI bills work a client stopped waiting for: do it, then be late.
                    latency = call.faults.pop("latency")
                    answer = await self._apply_faults(call) or await endpoint(call)
                    await asyncio.sleep(float(latency.seconds))
                    return answer
                early = await self._apply_faults(call)
                if early is not None:
                    return early
                return await endpoint(call)
            except RequestError as exc:
                return self._json(exc.body, started, status=exc.status)

        return handler

    def _authenticate(self, headers: CIMultiDictProxy[str]) -> None:
        value = headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if self.api_key is not None and token.strip() != self.api_key:
            raise RequestError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _apply_faults(self, call: _Call) -> web.StreamResponse | None:
        faults = call.faults
        if not faults:
            return None
        if "latency" in faults:
            await asyncio.sleep(float(faults["latency"].seconds))
        if "hang" in faults:
            await self._wait_until_stopped(None)
            _drop_connection(call.request)
            return web.Response(status=499)  # never reaches the client: the connection is gone
        if "masked_key_401" in faults:
            key = call.key
            masked = f"{key[:8]}{'*' * max(len(key) - 12, 4)}{key[-4:]}"
            raise RequestError(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        if "huge_body" in faults:
            return await self._huge_body(
                call, int(faults["huge_body"].bytes), faults["huge_body"].declare_length
            )
        if "status" in faults:
            fault = faults["status"]
            extra: dict[str, str] = dict(fault.headers or {})
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            if fault.retry_after_ms is not None:
                extra["retry-after-ms"] = str(fault.retry_after_ms)
            body = fault.body if fault.body is not None else payloads.status_error_body(int(fault.status))
            return self._json(body, call.started, status=int(fault.status), extra=extra)
        return None

    async def _wait_until_stopped(self, seconds: float | None) -> None:
        assert self._stopping is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _headers(self, started: float, request_tokens: int) -> dict[str, str]:
        headers = {
            "x-request-id": f"req_{secrets.token_hex(16)}",
            "openai-processing-ms": str(max(int((time.perf_counter() - started) * 1000), 1)),
            "openai-version": "2020-10-01",
        }
        headers.update(self._rate.headers(request_tokens))
        headers.update(dict(_FAULT_HEADERS.get()))
        return headers

    async def _huge_body(self, call: _Call, size: int, declare_length: bool) -> web.StreamResponse:
        """A JSON body of ``size`` bytes, made and sent a chunk at a time."""
        head, tail = b'{"object":"padding","padding":"', b'"}'
        headers = {**self._headers(call.started, 0), "Content-Type": "application/json"}
        response = web.StreamResponse(headers=headers)
        if declare_length:
            response.content_length = size
        await response.prepare(call.request)
        await response.write(head)
        left = max(size - len(head) - len(tail), 0)
        block = b"a" * _CHUNK
        try:
            while left > 0:
                await response.write(block[: min(left, _CHUNK)])
                left -= _CHUNK
            await response.write(tail)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client cut the body short, as it should
        return response

    def _json(
        self,
        body: Any,
        started: float,
        status: int = 200,
        extra: dict[str, str] | None = None,
        request_tokens: int = 0,
    ) -> web.Response:
        headers = self._headers(started, request_tokens)
        if extra:
            headers.update(extra)
        if isinstance(body, (bytes, str)):  # a scripted raw body, sent as is
            return web.Response(
                body=body.encode() if isinstance(body, str) else body,
                status=status,
                headers=headers,
                content_type="application/json",
            )
        return web.Response(
            text=_dumps(body), status=status, headers=headers, content_type="application/json"
        )

    def _log_usage(self, usage: dict[str, Any]) -> None:
        if self.record:
            self.usage_log.append(usage)

    @staticmethod
    def _model_for(call: _Call) -> str:
        """The model the reply reports: the one asked, unless a `model` fault says otherwise."""
        return str(call.faults["model"].model) if "model" in call.faults else str(call.body["model"])

    def _generate(
        self, call: _Call, endpoint: str, limit: int | None, choices: int = 1
    ) -> payloads.Generation:
        body, faults = call.body, call.faults
        model = self._model_for(call)
        prompt = tokens.prompt_tokens(endpoint, body) + self.stored.hidden_tokens(endpoint, body)
        cached = int(faults["cached_tokens"].tokens) if "cached_tokens" in faults else self.cached_tokens
        text = str(faults["reply"].text) if "reply" in faults else self.reply_text
        pieces, count, truncated = tokens.reply_tokens(text, str(body["model"]), limit)
        prices = self.billing.prices
        tier = billing.served_tier(
            prices, str(body["model"]), body.get("service_tier"), self.auto_service_tier
        )
        calls = billing.tool_calls_made(body) if endpoint == "responses" else []
        prompt = billing.with_tool_turns(prompt, len(calls))
        container = f"cntr_{secrets.token_hex(12)}"
        gen = payloads.Generation(
            model=model,
            pieces=pieces,
            completion_tokens=count * choices,
            truncated=truncated,
            prompt_tokens=prompt,
            cached_tokens=max(min(cached, prompt), 0),
            choices=choices,
            service_tier=tier if endpoint != "completions" else "default",
            cache_write_tokens=max(min(self.cache_write_tokens, prompt - max(min(cached, prompt), 0)), 0),
            tool_items=tuple(payloads.tool_call_item(t, i, container) for i, t in enumerate(calls)),
        )
        usage = billing.generation_usage(prices, gen, body, calls)
        self.billing.charge(endpoint, str(body["model"]), usage)
        return gen

    # --- endpoints ----------------------------------------------------------------------------

    async def _chat(self, call: _Call) -> web.StreamResponse:
        limit, choices = requests_.chat_params(call.body)
        gen = self._generate(call, "chat", limit, choices)
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        if not call.streaming:
            result = payloads.chat_completion(ident, created, gen)
            self._log_usage(result["usage"])
            result["usage"] = call.usage(result["usage"])
            return self._json(result, call.started, request_tokens=gen.prompt_tokens)
        options = call.body.get("stream_options") or {}
        include_usage = options.get("include_usage") is True
        chunks = payloads.chat_chunks(
            ident, created, gen, include_usage, options.get("include_obfuscation", True)
        )

        def frames() -> Iterator[bytes]:
            for chunk in chunks:
                if chunk.get("usage"):
                    self._log_usage(chunk["usage"])
                    chunk["usage"] = call.usage(chunk["usage"])
                yield b"data: " + _dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return await self._stream(call, frames(), gen.prompt_tokens)

    async def _responses(self, call: _Call) -> web.StreamResponse:
        self.stored.prepare(call.body)
        gen = self._generate(call, "responses", requests_.responses_params(call.body))
        ident, item_id = f"resp_{secrets.token_hex(24)}", f"msg_{secrets.token_hex(24)}"
        created = int(time.time())
        if not call.streaming:
            result = payloads.response_final(ident, item_id, created, int(time.time()), call.body, gen)
            self.stored.keep(call.body, result)
            self._log_usage(result["usage"])
            result["usage"] = call.usage(result["usage"])
            return self._json(result, call.started, request_tokens=gen.prompt_tokens)
        events = payloads.response_events(ident, item_id, created, int(time.time()), call.body, gen)

        def frames() -> Iterator[bytes]:
            for event in events:
                if event["type"] in ("response.completed", "response.incomplete"):
                    self.stored.keep(call.body, event["response"])
                    self._log_usage(event["response"]["usage"])
                    event["response"]["usage"] = call.usage(event["response"]["usage"])
                yield b"event: " + event["type"].encode() + b"\ndata: " + _dumps(event).encode() + b"\n\n"

        return await self._stream(call, frames(), gen.prompt_tokens)

    async def _completions(self, call: _Call) -> web.StreamResponse:
        gen = self._generate(call, "completions", requests_.completions_params(call.body))
        result = payloads.text_completion(f"cmpl-{secrets.token_hex(12)}", int(time.time()), gen)
        self._log_usage(result["usage"])
        result["usage"] = call.usage(result["usage"])
        return self._json(result, call.started, request_tokens=gen.prompt_tokens)

    async def _embeddings(self, call: _Call) -> web.StreamResponse:
        inputs, encoding_format, dimensions = requests_.embeddings_params(call.body)
        prompt = tokens.prompt_tokens("embeddings", call.body)
        self.billing.charge("embeddings", str(call.body["model"]), billing.Usage(prompt))
        result = payloads.embeddings(self._model_for(call), inputs, encoding_format, dimensions, prompt)
        self._log_usage(result["usage"])
        result["usage"] = call.usage(result["usage"])
        return self._json(result, call.started, request_tokens=prompt)

    async def _moderations(self, call: _Call) -> web.StreamResponse:
        model, texts = requests_.moderation_params(call.body)
        if "model" in call.faults:
            model = str(call.faults["model"].model)
        result = payloads.moderation(f"modr-{secrets.token_hex(12)}", model, texts, self.moderation_triggers)
        return self._json(result, call.started)

    async def _models(self, call: _Call) -> web.StreamResponse:
        return self._json(payloads.models_list(), call.started)

    async def _model(self, call: _Call) -> web.StreamResponse:
        model_id = call.request.match_info["model_id"]
        found = payloads.find_model(model_id)
        if found is None:
            raise RequestError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
        return self._json(found, call.started)

    async def _unknown(self, call: _Call) -> web.StreamResponse:
        raise RequestError(404, f"Invalid URL ({call.request.method} {call.request.path})")

    # --- streaming ----------------------------------------------------------------------------

    async def _stream(self, call: _Call, frames: Iterator[bytes], request_tokens: int) -> web.StreamResponse:
        """Send SSE frames, applying cut_stream / stall_stream after the scripted number of events."""
        response = web.StreamResponse(headers={**SSE_HEADERS, **self._headers(call.started, request_tokens)})
        await response.prepare(call.request)
        cut = call.faults.get("cut_stream")
        stall = call.faults.get("stall_stream")
        try:
            if "stream_no_separators" in call.faults:
                await _write_padding(response, b"data: ", int(call.faults["stream_no_separators"].bytes), b"")
                await response.write_eof()
                return response
            for sent, frame in enumerate(frames):
                if cut is not None and sent >= int(cut.after_events):
                    _drop_connection(call.request)
                    return response
                if stall is not None and sent == int(stall.after_events):
                    await self._wait_until_stopped(stall.seconds)
                if sent == 1 and "huge_event" in call.faults:
                    await _write_padding(
                        response, b'data: {"padding":"', int(call.faults["huge_event"].bytes), b'"}\n\n'
                    )
                if sent == 1 and "key_in_stream" in call.faults:
                    await _write_in_pieces(
                        response, frame, call.key, int(call.faults["key_in_stream"].piece_bytes)
                    )
                    continue
                await response.write(frame)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client cut the stream short
        return response


async def _write_padding(response: web.StreamResponse, head: bytes, size: int, tail: bytes) -> None:
    """``size`` bytes (head, padding, tail), made and written a chunk at a time."""
    await response.write(head)
    left = max(size - len(head) - len(tail), 0)
    block = b"a" * _CHUNK
    while left > 0:
        await response.write(block[: min(left, _CHUNK)])
        left -= _CHUNK
    await response.write(tail)


async def _write_in_pieces(response: web.StreamResponse, frame: bytes, key: str, piece: int) -> None:
    """One chat chunk carrying ``key`` in its text, written ``piece`` bytes at a time."""
    event = json.loads(frame[len(b"data: ") :])
    choices = event.get("choices") or []
    if choices and isinstance(choices[0].get("delta"), dict):
        choices[0]["delta"]["content"] = f"the key is {key}!"
    else:
        event["leak"] = key
    data = b"data: " + _dumps(event).encode() + b"\n\n"
    for start in range(0, len(data), max(piece, 1)):
        await response.write(data[start : start + piece])
        await asyncio.sleep(0.001)  # separate TCP segments: the key crosses chunk boundaries


def _drop_connection(request: web.Request) -> None:
    """Close the TCP connection now, after flushing what was written: the client sees a cut body."""
    transport = request.transport
    if transport is not None:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m openai_policy_devkit.fake_openai", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--record", action="store_true", help="keep every request and usage block (memory grows)"
    )
    parser.add_argument("--api-key", default=None, help="accept only this Bearer token (default: any)")
    parser.add_argument("--cached-tokens", type=int, default=0, help="prompt tokens reported as cached")
    parser.add_argument("--reply", default=DEFAULT_REPLY, help="the reply text every completion returns")
    parser.add_argument(
        "--moderation-trigger",
        action="append",
        default=None,
        help="words that make /v1/moderations flag a text (repeatable; default: kill)",
    )
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        host=args.host,
        port=args.port,
        record=args.record,
        api_key=args.api_key,
        reply_text=args.reply,
        cached_tokens=args.cached_tokens,
        moderation_triggers=args.moderation_trigger or DEFAULT_MODERATION_TRIGGERS,
    )

    async def serve() -> None:
        await fake.start()
        print(f"fake OpenAI listening on {fake.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
