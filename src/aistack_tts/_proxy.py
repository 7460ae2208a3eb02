"""``TTSProxy``: the embeddable gateway (slot, upstream agent, limits) and its resource."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource
from twisted.web.server import Request

from ._accesslog import AccessLog
from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_SLOTS,
    DEFAULT_UPSTREAM,
    DEFAULT_WS_IDLE_TIMEOUT,
    GatewayConfig,
)
from ._errors import Draining, GPUBusy, MethodNotAllowed, RequestTooLarge
from ._exchange import _Exchange
from ._health import ReadinessProbe
from ._metrics import GatewayMetrics, MetricsResource
from ._site import GatewaySite
from ._slot import GPUSlot
from ._tunnel import TunnelTarget, WebSocketTunnel, is_websocket_request
from ._upstream import make_agent, make_cooperator

#: The methods the contract proxies; everything else is a 405.
ALLOWED_METHODS = (b"GET", b"POST", b"DELETE")
ALLOW_HEADER = (b"Allow", b", ".join(ALLOWED_METHODS))

_log = Logger()


class TTSProxy:
    """A transparent, slot-guarded proxy for ``/v1/audio/*`` to one Qwen3-TTS upstream.

    ``slot`` is the semaphore that says "the GPU is doing inference"; pass the one your own
    GPU work holds so TTS answers 503 while it runs (a new one of ``slots`` tokens otherwise).
    ``reactor`` and ``agent`` are injectable; by default the global reactor and an ``Agent``
    with a persistent pool and ``connect_timeout`` are used.
    """

    def __init__(
        self,
        upstream: str = DEFAULT_UPSTREAM,
        *,
        slot: DeferredSemaphore | None = None,
        slots: int = DEFAULT_SLOTS,
        reactor: Any = None,
        agent: IAgent | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        ws_idle_timeout: float = DEFAULT_WS_IDLE_TIMEOUT,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
        health: bool = True,
    ) -> None:
        config = GatewayConfig(
            upstream=upstream,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            max_body=max_body,
            ws_idle_timeout=ws_idle_timeout,
            slots=slots if slot is None else max(1, slot.limit),
        )
        if reactor is None:
            from twisted.internet import reactor as _global_reactor

            reactor = _global_reactor
        self.clock: IReactorTime = reactor
        self.upstream_base = config.upstream_base
        self.idle_timeout = config.idle_timeout
        self.max_body = config.max_body
        self.ws_idle_timeout = config.ws_idle_timeout
        #: Where WebSocket sessions are tunnelled: a plain TCP (TLS for https) endpoint.
        self.ws_upstream = TunnelTarget.for_upstream(
            reactor, config.upstream, connect_timeout=config.connect_timeout
        )
        self.slot = GPUSlot(slot if slot is not None else DeferredSemaphore(slots), reactor)
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            agent, self._pool = make_agent(
                reactor, connect_timeout=config.connect_timeout, max_connections=config.slots
            )
        self.agent: IAgent = agent
        self.cooperator = make_cooperator(reactor)
        self.draining = False
        self.metrics = GatewayMetrics(registry)
        self.metrics.watch(lambda: self.slot.in_use, lambda: len(self._in_flight))
        self.access_log = AccessLog(self.metrics)
        self.metrics_route = MetricsResource(self.metrics.registry) if metrics else None
        self.health_routes = health
        self.readiness = ReadinessProbe(reactor, config.upstream, config.connect_timeout)
        self._in_flight: set[_Exchange | WebSocketTunnel] = set()
        self._idle_waiters: list[Deferred[None]] = []

    @classmethod
    def from_config(cls, config: GatewayConfig, **kwargs: Any) -> TTSProxy:
        """Build from a validated L{GatewayConfig} (what the ``twist`` plugin does)."""
        return cls(
            config.upstream,
            slots=config.slots,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            max_body=config.max_body,
            ws_idle_timeout=config.ws_idle_timeout,
            metrics=config.metrics,
            health=config.health,
            **kwargs,
        )

    def resource(self) -> IResource:
        """The ``IResource`` serving ``/v1/audio/*`` (and envelopes elsewhere) at a site root."""
        from ._app import build_resource

        return build_resource(self)

    def site(self) -> GatewaySite:
        """A ``Site`` for L{resource} that enforces the body limit while the body arrives."""
        return GatewaySite(
            self.resource(), max_body=self.max_body, reactor=self.clock, access_log=self.access_log
        )

    @property
    def in_flight(self) -> int:
        """Upstream calls under way, open WebSocket sessions included."""
        return len(self._in_flight)

    def drain(self, timeout: float) -> Deferred[None]:
        """Refuse new calls, let those under way finish, cut the rest after ``timeout`` s.

        New requests get 503 ``draining``. Fires once no call is left (the slot is free then).
        """
        self.draining = True
        if not self._in_flight:
            return succeed(None)
        _log.info(
            "draining: waiting up to {timeout}s for {count} call(s)",
            timeout=timeout,
            count=len(self._in_flight),
        )
        idle: Deferred[None] = Deferred()
        self._idle_waiters.append(idle)

        def cut() -> None:
            _log.warn("drain timeout: cutting {count} call(s) short", count=len(self._in_flight))
            for exchange in list(self._in_flight):
                exchange.cut_short(Draining("the gateway is shutting down"))

        deadline = self.clock.callLater(timeout, cut)

        def disarm(result: None) -> None:
            if deadline.active():
                deadline.cancel()

        return idle.addCallback(disarm)

    def _exchange_done(self, exchange: _Exchange | WebSocketTunnel) -> None:
        self._in_flight.discard(exchange)
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close(self) -> Deferred[None]:
        """Close idle pooled upstream connections (call on shutdown)."""
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def forward(self, request: Request) -> Deferred[None]:
        """Proxy one request, holding the GPU slot for the whole upstream call.

        Raises a L{GatewayError} when the gateway answers itself (405, 413, 503 busy).
        """
        if self.draining:
            raise Draining(
                "the gateway is shutting down; retry on another instance or after it restarts",
                headers=[(b"Retry-After", b"1")],
            )
        if request.method not in ALLOWED_METHODS:
            raise MethodNotAllowed(
                f"method {request.method.decode('latin-1')} is not allowed here",
                headers=[ALLOW_HEADER],
            )
        # The request factory refuses large bodies on arrival; this catches the same when the
        # resource is mounted in someone else's Site, before anything goes upstream.
        content = request.content
        if content is not None:
            content.seek(0, 2)
            size = content.tell()
            content.seek(0, 0)
            if size > self.max_body:
                raise RequestTooLarge(
                    f"the request body ({size} bytes) is over the limit: "
                    f"at most {self.max_body} bytes are accepted"
                )
        hold = self.slot.try_take()
        if hold is None:
            raise GPUBusy(
                "the GPU is busy with another inference; retry after the time in Retry-After",
                headers=self.slot.retry_after().headers(),
            )
        if is_websocket_request(request):
            return WebSocketTunnel(self, request, hold, self.ws_upstream).start()
        exchange = _Exchange(self, request, hold)
        return exchange.start()
