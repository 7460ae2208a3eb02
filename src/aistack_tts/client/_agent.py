"""The lean upstream client: an ``IAgent`` with its own pool, where a call leaves the gateway.

``LeanAgent.request`` takes what ``call._exchange`` hands any ``IAgent`` (method, URL, headers,
an ``IBodyProducer``) and returns a Deferred of an ``IResponse`` whose body goes to an
``IProtocol`` through ``deliverBody``. Below it: ``client._pool`` (idle connections per
upstream), ``client._connection`` (one request at a time on one connection),
``client._request`` (what is written) and ``client._head``/``client._parser`` (what is
read, strictly).

Why not Twisted's ``Agent`` (it was the gateway's client until issue 15): per request it
parses the URL again, makes a ``Request`` object and a retrying wrapper, runs a line-by-line
response parser and a chain of Deferreds, and writes the body a reactor turn after the head;
counted in instructions per small request it cost well over twice what this client costs,
and was over a third of the gateway's time (BENCHMARKS.rst, "Where the time goes", measured
with ``bench/icount.py`` and ``bench/run.py``). Its private API (``_newclient``, the pool's
factory, the request method it is built on) had to be reached into for a strict parser, the
Connection-named headers and a close-delimited body's truth, and could change with any
upgrade.

What this client does per request: one cached route per upstream origin (the
configuration's ``Origin``, parsed once, and its endpoint), the request-target sent exactly
as given (no ``urlunparse``: ``/x?`` and ``/x;`` stay), head and a small body in one send,
one request in flight per connection, the pooled connection reused only after complete
framing with nothing trailing. Cancelling the
returned Deferred aborts the connection (or the connect attempt). A request on a pooled
connection that was closed before any response byte is sent again on a fresh connection,
once, whatever its method, when its body can be sent again: the upstream closed an idle
connection as the request reached it (a short keep-alive, a restart, a proxy in between);
it did not start the call, and the client did not cause the failure.
"""

from __future__ import annotations

from typing import IO, Any

from attrs import frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from aistack_tts._config import ConfigError, Origin

from ._connection import UpstreamConnection
from ._pool import ConnectionPool
from ._request import ClientRequest, SpooledBody, can_resend, request_head, whole_body


@frozen
class Route:
    """One upstream origin as the client reaches it: pool key, ``Origin``, its endpoint."""

    key: bytes
    origin: Origin
    endpoint: IStreamClientEndpoint


class _ConnectionFactory(Factory):
    # Otherwise every new upstream connection logs "Starting factory ...".
    noisy = False

    def __init__(self, key: bytes, pool: ConnectionPool) -> None:
        self._key = key
        self._pool = pool

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return UpstreamConnection(self._key, self._pool)


def split_url(uri: bytes) -> tuple[bytes, bytes]:
    """``(origin, request-target)`` of an absolute URL, the target untouched."""
    scheme_end = uri.find(b"://")
    authority_end = uri.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
    if authority_end < 0:
        return uri, b"/"
    return uri[:authority_end], uri[authority_end:]


@implementer(IAgent)
class LeanAgent:
    """A transparent HTTP/1.1 client for the gateway's upstreams, on an injected reactor."""

    def __init__(self, reactor: Any, pool: ConnectionPool, *, connect_timeout: float) -> None:
        self._reactor = reactor
        self.pool = pool
        self._connect_timeout = connect_timeout
        self._routes: dict[bytes, Route] = {}

    def route(self, origin: bytes) -> Route:
        """The route to ``origin`` (``scheme://host:port``), made once per upstream.

        Any URL may come (an embedder hands an ``IAgent`` what it likes): it is parsed by the
        configuration's own ``Origin.parse``.
        """
        known = self._routes.get(origin)
        if known is not None:
            return known
        try:
            parsed = Origin.parse(origin.decode("ascii"))
        except (ConfigError, UnicodeDecodeError):
            raise SchemeNotSupported(f"unsupported upstream URL {origin!r}") from None
        endpoint = parsed.endpoint(self._reactor, timeout=self._connect_timeout)
        known = self._routes[origin] = Route(origin, parsed, endpoint)
        return known

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """Send one request upstream; the Deferred fires with the response head."""
        origin, target = split_url(uri)
        try:
            route = self.route(origin)
            whole = whole_body(bodyProducer)
            length = None if bodyProducer is None else bodyProducer.length
            head = request_head(method, target, route.origin.host, headers, length)
        except Exception:
            return fail()
        request = ClientRequest(method, uri, headers if headers is not None else Headers())
        return _Attempt(self, route, head, whole, bodyProducer, request).start()

    def connect(self, route: Route) -> Deferred[UpstreamConnection]:
        """A new connection along ``route`` (the pool gets it back after its response)."""
        connected: Deferred[Any] = route.endpoint.connect(_ConnectionFactory(route.key, self.pool))
        return connected


class _Attempt:
    """One request's way to a response: a pooled connection or a new one, and one retry."""

    __slots__ = (
        "_agent",
        "_body",
        "_cancelled",
        "_connecting",
        "_head",
        "_producer",
        "_request",
        "_result",
        "_retry_spent",
        "_route",
        "_sent",
    )

    def __init__(
        self,
        agent: LeanAgent,
        route: Route,
        head: bytes,
        body: bytes | None,
        producer: IBodyProducer | None,
        request: ClientRequest,
    ) -> None:
        self._agent = agent
        self._route = route
        self._head = head
        self._body = body
        self._producer = producer
        self._request = request
        # A request whose body can be sent again is retried once, whatever its method.
        self._retry_spent = body is None and not can_resend(producer)
        self._cancelled = False
        self._connecting: Deferred[UpstreamConnection] | None = None
        self._sent: Deferred[IResponse] | None = None
        self._result: Deferred[IResponse] = Deferred(self._cancel)

    def start(self) -> Deferred[IResponse]:
        connection = self._agent.pool.take(self._route.key)
        if connection is not None:
            self._send(connection)
        else:
            self._connect()
        return self._result

    def _connect(self) -> None:
        connecting = self._connecting = self._agent.connect(self._route)
        connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: UpstreamConnection) -> None:
        self._connecting = None
        self._send(connection)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self._cancelled:
            self._result.errback(failure)

    def _send(self, connection: UpstreamConnection) -> None:
        stale = connection.reused and not self._retry_spent
        sent = self._sent = connection.request(
            self._head, self._body, self._producer, self._request
        )
        sent.addCallbacks(self._answered, self._failed, errbackArgs=(stale,))

    def _answered(self, response: IResponse) -> None:
        self._sent = None
        self._result.callback(response)

    def _failed(self, failure: Failure, stale: bool) -> None:
        self._sent = None
        if self._cancelled:
            return
        if stale and failure.check(ResponseNeverReceived):
            # The upstream closed an idle connection just as it was reused: nothing of this
            # request was answered, and it may be sent again.
            self._retry_spent = True
            self._connect()
            return
        self._result.errback(failure)

    def _cancel(self, _: Deferred[IResponse]) -> None:
        # Deferred.cancel errbacks the result with CancelledError after this returns; the
        # attempt under way is cancelled (the connection or connect attempt aborted) first.
        self._cancelled = True
        if self._connecting is not None:
            self._connecting.cancel()
        elif self._sent is not None:
            self._sent.cancel()


# The call's entry: what ``call._exchange`` and ``TTSProxy`` ask of the client.


def make_agent(
    reactor: Any, *, connect_timeout: float, max_connections: int, pool_idle_timeout: float
) -> tuple[LeanAgent, ConnectionPool]:
    """The lean client with a persistent pool and a connect timeout.

    The pool keeps as many idle connections per upstream as it has slots (at least 2), each
    for ``pool_idle_timeout`` seconds at most.
    """
    pool = ConnectionPool(reactor, max_idle=max(2, max_connections), idle_timeout=pool_idle_timeout)
    return LeanAgent(reactor, pool, connect_timeout=connect_timeout), pool


def upstream_url(base: bytes, target: bytes) -> bytes:
    """The upstream URL for a raw request-target: the base, then path and query byte-exact."""
    return base + target


def body_producer(content: IO[bytes] | None, cooperator: Cooperator) -> IBodyProducer | None:
    """The spooled request body (memory or temp file) for the upstream; ``None`` when empty.

    Its length is learnt by seeking, so the upstream gets a ``Content-Length``; a small body
    goes out with the head in one send, a large one streams in slices and is never read
    whole into one bytes object.
    """
    if content is None:
        return None
    content.seek(0, 2)
    size = content.tell()
    content.seek(0, 0)
    if size == 0:
        return None
    return SpooledBody(content, size, cooperator)


def make_cooperator(reactor: IReactorTime) -> Cooperator:
    """A cooperator on the injected reactor (the default one uses the global reactor)."""
    return Cooperator(scheduler=lambda work: reactor.callLater(0, work))
