"""Connection limits for the sidecar's two listeners: the proxy (loopback, the app's) and the admin
port (all interfaces of the pod, anyone in the cluster network).

aiohttp bounds the request line and each header, and closes an idle keep-alive connection, but a
client that sends half a request head (or nothing) keeps its connection, and one file descriptor,
until the idle timeout; and it accepts any number of connections. So each listener here gets:

- a header-read timeout: a request head must be complete within ``header_timeout`` of the
  connection opening or of its first byte arriving on an idle connection;
- an idle timeout between requests (aiohttp's keep-alive timeout);
- a cap on open connections. Beyond it the oldest connections that are not in the middle of a
  request (half a head, or idle) are closed to make room, a moment after the newcomer arrived
  (so that its head, if it sent one, is read first); at twice the cap this happens at once, and
  only when every connection is busy is a new one refused with a 503. A flood of half-open
  connections therefore cannot lock out a kubelet probe or a Prometheus scrape, and cannot hold
  more than twice the cap in descriptors.
- bounded request line, header count and header size (aiohttp's parser answers 400 beyond).

The hooks use a few of aiohttp's RequestHandler internals (the request counter, the message
queue, the future its loop waits on for the next head); aiohttp is pinned in constraints.txt and tests/sidecar cover them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from .metrics import Metrics

# How long a connection accepted beyond the cap lives before the oldest idle ones are trimmed:
# a few loop iterations, enough for a head already sent to be read.
_TRIM_DELAY = 0.1
_BUSY_REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout: float  # seconds for a whole request head
    idle_timeout: float  # seconds a keep-alive connection may sit between requests
    max_connections: int
    max_line_size: int  # request line (method, path and query), bytes
    max_headers: int
    max_field_size: int  # one header line, bytes
    # Connections the kernel completes before they are accepted. Roomy, so that a burst of
    # connections does not overflow it and leave a probe's handshake unanswered for seconds;
    # a queued connection costs kernel memory, not a descriptor, until accepted (and evicted).
    backlog: int = 1024

    def handler_args(self) -> dict[str, Any]:
        return {
            "keepalive_timeout": self.idle_timeout,
            "max_line_size": self.max_line_size,
            "max_headers": self.max_headers,
            "max_field_size": self.max_field_size,
        }


# The app talks to the proxy over loopback: a request head arrives at once, but the app may hold
# a pool of keep-alive connections (longer idle than the SDKs' own pool expiry, so the sidecar is
# not the one closing a connection a client is about to reuse), and up to the queue's depth of
# requests in flight (spec.queue.maxDepth defaults to 1000).
PROXY_LIMITS = ListenerLimits(
    header_timeout=10.0,
    idle_timeout=75.0,
    max_connections=1024,
    max_line_size=8190,
    max_headers=64,
    max_field_size=8190,
)
# Probes and scrapes send a small GET at once and need a handful of connections; anything else
# on this port is at best a mistake. The cap is still roomy: under a flood a probe's connection
# survives until its head is read as long as fewer than the cap arrive meanwhile, and 256 x 32 x
# 4 KiB of header buffers stays far below the pod's memory limit.
ADMIN_LIMITS = ListenerLimits(
    header_timeout=5.0,
    idle_timeout=15.0,
    max_connections=256,
    max_line_size=2048,
    max_headers=32,
    max_field_size=4096,
)


class GuardedServer(Server):
    """aiohttp's Server, making :class:`GuardedHandler` protocols and counting what it closes."""

    def __init__(
        self, *args: Any, limits: ListenerLimits, name: str, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.name = name
        self.metrics = metrics
        self._trim_handle: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def closed(self, reason: str) -> None:
        self.metrics.child(self.metrics.connections_closed, self.name, reason).inc()

    def make_room(self) -> bool:
        """Whether a new connection may be taken. Up to the cap, always. Beyond it the oldest
        connections not inside a request are closed, a moment later: a connection that has just
        been accepted (a probe's, in the middle of a flood) gets the chance to have its head read
        first. Only at twice the cap is room made at once, or the new connection refused when
        every connection is busy."""
        count = len(self._connections)
        if count < self.limits.max_connections:
            return True
        if count < 2 * self.limits.max_connections:
            if self._trim_handle is None:
                self._trim_handle = self._loop.call_later(_TRIM_DELAY, self._trim)
            return True
        return self._evict(count - 2 * self.limits.max_connections + 1) > 0

    def _trim(self) -> None:
        self._trim_handle = None
        self._evict(len(self._connections) - self.limits.max_connections)

    def _evict(self, wanted: int) -> int:
        """Close up to ``wanted`` of the oldest connections not inside a request."""
        evicted = 0
        for handler in list(self._connections):  # oldest first: dicts keep insertion order
            if evicted >= wanted:
                break
            if isinstance(handler, GuardedHandler) and not handler.busy:
                handler.force_close()
                self.closed("evicted")
                # force_close only drops the transport: forget the connection now, not when
                # its task finishes, so that the count is right for the next one.
                self._connections.pop(handler, None)
                evicted += 1
        return evicted


class GuardedHandler(RequestHandler):
    __slots__ = ("_head_timer", "_armed_count", "_refused")

    def __init__(self, manager: Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_count = 0
        self._refused = False

    @property
    def _server(self) -> GuardedServer:
        assert isinstance(self._manager, GuardedServer)
        return self._manager

    @property
    def busy(self) -> bool:
        """A request head arrived and its request is queued, handled or being answered: anything
        but a connection waiting for a (next) head."""
        if self._messages:
            return True
        waiting = self._waiter is not None and not self._waiter.done()
        return self._request_count > 0 and not waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if not server.make_room():
            self._refused = True
            server.closed("refused")
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_BUSY_REFUSAL)
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._disarm()  # a whole head arrived: the request's own deadlines take over
        elif self._head_timer is None and not self.busy and self.transport is not None:
            self._arm()  # the first bytes of a new head on an idle connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._armed_count = self._request_count
        self._head_timer = self._loop.call_later(self._server.limits.header_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._request_count == self._armed_count and not self.busy and self.transport is not None:
            self._server.closed("header_timeout")
            self.force_close()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server applies ``limits`` to every connection."""

    def __init__(
        self, app: web.Application, limits: ListenerLimits, name: str, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(app, **limits.handler_args(), **kwargs)
        self.limits = limits
        self.name = name
        self.metrics = metrics

    async def _make_server(self) -> Server:
        made = await super()._make_server()
        return GuardedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            limits=self.limits,
            name=self.name,
            metrics=self.metrics,
            **made._kwargs,
        )
