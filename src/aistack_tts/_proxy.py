"""``TTSProxy``: the embeddable gateway (slot, upstream agent, limits) and its resource."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import evolve
from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource
from twisted.web.server import Request

from ._config import (
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DOWN_COOLDOWN,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_SLOT_EXEMPT,
    DEFAULT_SLOTS,
    DEFAULT_UPSTREAM,
    DEFAULT_WS_IDLE_TIMEOUT,
    ConfigError,
    GatewayConfig,
)
from ._errors import Draining, GatewayError, RequestTooLarge, method_not_allowed
from .call._admission import Verdict, admit, preflight, refusal
from .call._context import CallContext, InFlight
from .call._exchange import _Exchange
from .call._slot import GPUSlot
from .call._upstreams import Grant, Upstream, UpstreamPool, WaitTimedOut
from .client._agent import make_agent, make_cooperator
from .client._pool import ConnectionPool
from .observe._accesslog import AccessLog
from .observe._health import ReadinessProbe
from .observe._metrics import GatewayMetrics, MetricsResource
from .observe._outcome import Outcome
from .server._connections import ConnectionRegistry
from .server._drain import Drain
from .server._routes import build_resource
from .server._site import GatewaySite
from .tunnel._session import WebSocketTunnel
from .wire._descriptors import RateLimitedWarning
from .wire._http import ALLOWED_METHODS, is_websocket_request

_log = Logger()


def _semaphores(
    slot: DeferredSemaphore | Sequence[DeferredSemaphore] | None, upstreams: int, slots: int
) -> list[DeferredSemaphore]:
    """One semaphore per upstream: the given ones, or new ones of ``slots`` tokens."""
    if slot is None:
        return [DeferredSemaphore(slots) for _ in range(upstreams)]
    given = [slot] if isinstance(slot, DeferredSemaphore) else list(slot)
    if len(given) != upstreams:
        raise ConfigError(
            f"slot: pass one semaphore per upstream ({upstreams} upstream(s), {len(given)} given)"
        )
    return given


class TTSProxy:
    """A transparent, slot-guarded proxy for ``/v1/audio/*`` to Qwen3-TTS upstreams.

    ``upstream`` is one URL, or one per GPU. ``slot`` is the semaphore that says "the GPU is
    doing inference" (one per upstream); pass the one your own GPU work holds so TTS answers
    503 while it runs (new ones of ``slots`` tokens otherwise). ``reactor`` and ``agent`` are
    injectable; by default the global reactor and the lean client (``client._agent.LeanAgent``)
    with a persistent pool and ``connect_timeout`` are used. ``queue_timeout`` > 0 lets a
    request wait that long for a busy GPU (``0``: 503 at once); ``slot_exempt`` rules
    (``"GET:/v1/audio/voices"``, the default; ``()`` or ``["none"]``: none) name calls that
    take no slot; an upstream that refused a connection is passed over for ``down_cooldown``
    seconds while another is up. The defaults are the command line's.
    """

    def __init__(
        self,
        upstream: str | Sequence[str] = DEFAULT_UPSTREAM,
        *,
        slot: DeferredSemaphore | Sequence[DeferredSemaphore] | None = None,
        slots: int = DEFAULT_SLOTS,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
        slot_exempt: Sequence[str] = DEFAULT_SLOT_EXEMPT,
        down_cooldown: float = DEFAULT_DOWN_COOLDOWN,
        reactor: Any = None,
        agent: IAgent | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        ws_idle_timeout: float = DEFAULT_WS_IDLE_TIMEOUT,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        keepalive_timeout: float | None = None,
        max_connections: int | None = None,
        pool_idle_timeout: float = DEFAULT_POOL_IDLE_TIMEOUT,
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
            client_timeout=client_timeout,
            keepalive_timeout=keepalive_timeout,
            max_connections=max_connections,
            pool_idle_timeout=pool_idle_timeout,
            slots=slots,
            queue_timeout=queue_timeout,
            slot_exempt=list(slot_exempt),
            down_cooldown=down_cooldown,
        )
        semaphores = _semaphores(slot, len(config.upstream), slots)
        if reactor is None:
            from twisted.internet import reactor as _global_reactor

            reactor = _global_reactor
        self.clock: IReactorTime = reactor
        self.idle_timeout = config.idle_timeout
        self.connect_timeout = config.connect_timeout
        self.max_body = config.max_body
        self.ws_idle_timeout = config.ws_idle_timeout
        self.client_timeout = config.client_timeout
        self.keepalive_timeout = config.keepalive_timeout or config.client_timeout
        self.max_connections = config.max_connections
        self.queue_timeout = config.queue_timeout
        self.exempt = config.exempt_rules
        self.pool = UpstreamPool(
            [
                Upstream(origin, GPUSlot(semaphore, reactor))
                for origin, semaphore in zip(config.origins, semaphores, strict=True)
            ],
            reactor,
            cooldown=config.down_cooldown,
        )
        #: The first upstream's slot (the only one, with a single upstream).
        self.slot = self.pool.upstreams[0].slot
        #: Where WebSocket sessions are tunnelled: a plain TCP (TLS for https) endpoint each.
        self._ws_endpoints = {
            u: u.origin.endpoint(reactor, timeout=config.connect_timeout)
            for u in self.pool.upstreams
        }
        self._pool: ConnectionPool | None = None
        if agent is None:
            agent, self._pool = make_agent(
                reactor,
                connect_timeout=config.connect_timeout,
                max_connections=max(s.limit for s in semaphores),
                pool_idle_timeout=config.pool_idle_timeout,
            )
        self.cooperator = make_cooperator(reactor)
        self.draining = False
        self.metrics = GatewayMetrics(registry)
        #: The calls and WebSocket sessions under way.
        self.calls = InFlight()
        self.metrics.watch(
            lambda: sum(u.slot.in_use for u in self.pool.upstreams), lambda: len(self.calls)
        )
        self.access_log = AccessLog(self.metrics, reactor)
        self.metrics_route = MetricsResource(self.metrics.registry) if metrics else None
        self.health_routes = health
        self.readiness = [
            ReadinessProbe(reactor, origin, config.connect_timeout) for origin in config.origins
        ]
        #: What each call takes from the gateway.
        self.context = CallContext(
            clock=reactor,
            agent=agent,
            cooperator=self.cooperator,
            pool=self.pool,
            metrics=self.metrics,
            access_log=self.access_log,
            in_flight=self.calls,
            exhaustion_warning=RateLimitedWarning(reactor, "out of file descriptors"),
            idle_timeout=config.idle_timeout,
            connect_timeout=config.connect_timeout,
            ws_idle_timeout=config.ws_idle_timeout,
            queue_timeout=config.queue_timeout,
        )
        #: The client connections of ``site``'s sites (none when mounted in another Site).
        self.connections = ConnectionRegistry()
        self._drain: Drain | None = None

    @property
    def agent(self) -> IAgent:
        """The HTTP client every call goes upstream with."""
        return self.context.agent

    @agent.setter
    def agent(self, agent: IAgent) -> None:
        # Calls take it from the context: a new agent makes a new context.
        self.context = evolve(self.context, agent=agent)

    @classmethod
    def from_config(cls, config: GatewayConfig, **kwargs: Any) -> TTSProxy:
        """Build from a validated ``GatewayConfig`` (what the ``twist`` plugin does)."""
        return cls(
            config.upstream,
            slots=config.slots,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            max_body=config.max_body,
            ws_idle_timeout=config.ws_idle_timeout,
            client_timeout=config.client_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_connections=config.max_connections,
            pool_idle_timeout=config.pool_idle_timeout,
            queue_timeout=config.queue_timeout,
            slot_exempt=config.slot_exempt,
            down_cooldown=config.down_cooldown,
            metrics=config.metrics,
            health=config.health,
            **kwargs,
        )

    def resource(self) -> IResource:
        """The gateway's ``IResource``, for the root of a ``Site`` (``site`` is the way).

        It serves ``/v1/audio/*``, ``/metrics``, ``/healthz``, ``/readyz`` at those paths and
        envelopes elsewhere; mounted below a root (``putChild``) it refuses every request.
        """
        return build_resource(self)

    def site(self, root: IResource | None = None) -> GatewaySite:
        """A ``Site`` for the gateway that enforces the body limit while the body arrives.

        ``root``: the embedder's own resource tree (a ``Resource`` or a Klein app's
        ``resource()``). The gateway's routes stay at their fixed paths from the site root
        (``/v1/audio/*`` forwarded byte-exact, ``/metrics``, ``/healthz``, ``/readyz``);
        every other path goes to ``root``. The body limit, the client connection rules and
        the drain cover both. A ``root`` child at a gateway path is a ``ConfigError``.
        """
        resource = build_resource(self, root)
        return GatewaySite(
            resource,
            max_body=self.max_body,
            reactor=self.clock,
            access_log=self.access_log,
            client_timeout=self.client_timeout,
            keepalive_timeout=self.keepalive_timeout,
            connections=self.connections,
            max_connections=self.max_connections,
            preflight=self.preflight,
            owns=None if root is None else resource.owns,
        )

    def preflight(self, request: Request) -> GatewayError | None:
        """What ``forward`` would answer ``request`` at once (a busy GPU's 503), or ``None``.

        Asked before the body of an ``Expect: 100-continue`` request is invited; takes nothing.
        """
        return preflight(self, request)

    @property
    def in_flight(self) -> int:
        """Upstream calls under way, open WebSocket sessions included."""
        return len(self.calls)

    def drain(self, timeout: float) -> Deferred[None]:
        """Refuse new calls, let those under way finish, cut the rest after ``timeout`` s.

        New requests get 503 ``draining``. On ``site``'s connections keep-alive ends (idle ones
        are closed now, the others after their response) and the drain also waits for each
        to deliver its response and close; at the deadline what is left is aborted. Fires
        once no call (the slot is free then) and no such connection is left.
        """
        return self._start_drain(timeout).when_done()

    def cut_now(self) -> int:
        """Cut every call and client connection now (a second signal during the drain).

        Starts the drain if it had not begun. Returns how many calls were cut.
        """
        return self._start_drain(0).cut_now()

    def _start_drain(self, timeout: float) -> Drain:
        self.draining = True
        if self._drain is None:
            self._drain = Drain(
                self.clock,
                self.connections,
                in_flight=lambda: len(self.calls),
                when_idle=self.calls.when_idle,
                cut_calls=lambda: self.calls.cut(Draining("the gateway is shutting down")),
            )
            self._drain.start(timeout)
        return self._drain

    def close(self) -> Deferred[None]:
        """Close idle pooled upstream connections (call on shutdown)."""
        if self._pool is None:
            return succeed(None)
        return self._pool.close()

    def forward(self, request: Request) -> Deferred[None]:
        """Proxy one request, holding the GPU slot for the whole upstream call.

        Raises a ``GatewayError`` when the gateway answers itself (405, 413, 503 busy).
        """
        if self.draining:
            raise Draining(
                "the gateway is shutting down; retry on another instance or after it restarts",
                headers=[(b"Retry-After", b"1")],
            )
        if request.method not in ALLOWED_METHODS:
            raise method_not_allowed(request.method)
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
        websocket = is_websocket_request(request)
        exempt = not websocket and any(r.matches(request.method, request.uri) for r in self.exempt)
        admission = admit(self.pool, exempt=exempt, queue_timeout=self.queue_timeout)
        if admission.verdict is Verdict.EXEMPT:
            assert admission.upstream is not None
            return _Exchange(self.context, request, admission.upstream, None).start()
        if admission.verdict is Verdict.GRANTED:
            assert admission.grant is not None
            return self._start(request, admission.grant, websocket)
        if admission.verdict is Verdict.QUEUE:
            return self._queue(request, websocket)
        raise refusal(admission.verdict, self.pool.retry_after(self.queue_timeout))

    def _start(self, request: Request, grant: Grant, websocket: bool) -> Deferred[None]:
        if websocket:
            upstream = grant.upstream
            endpoint = self._ws_endpoints[upstream]
            return WebSocketTunnel(
                self.context, request, grant.hold, upstream.origin, endpoint
            ).start()
        return _Exchange(self.context, request, grant.upstream, grant.hold).start()

    def _queue(self, request: Request, websocket: bool) -> Deferred[None]:
        """Wait up to the queue timeout for a slot; a client that leaves leaves the queue."""
        waited = self.pool.wait(self.queue_timeout)

        def timed_out(failure: Failure) -> None:
            failure.trap(WaitTimedOut)
            waited = self.access_log.since_arrival(request)
            raise refusal(Verdict.BUSY, self.pool.retry_after(), queue_wait=waited)

        def left(failure: Failure) -> None:
            # The router cancels this when the client disconnects while it waits.
            failure.trap(CancelledError)
            self.access_log.finished(
                request,
                status=None,
                outcome=Outcome.CLIENT_ABORT_QUEUED,
                provider="none",
                slot="none",
                cause="the client closed the connection while waiting for the GPU",
                queue_wait=self.access_log.since_arrival(request),
            )

        started: Deferred[None] = waited.addCallbacks(
            lambda grant: self._start(request, grant, websocket), timed_out
        )
        return started.addErrback(left)
