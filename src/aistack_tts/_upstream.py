"""The upstream call: a transparent HTTP client on Twisted's ``Agent`` and a persistent pool.

Why not ``treq.HTTPClient.request``: it wraps every agent in a ``CookieAgent`` (would replay
one client's ``Set-Cookie`` on another client's request), a ``ContentDecoderAgent`` (adds
``Accept-Encoding: gzip`` and un-gzips bodies), a ``RedirectAgent`` (follows 3xx the client
should see) and, unless told otherwise, a ``_BufferedResponse``; it also re-serialises the URL
through hyperlink (an empty ``?`` vanishes). A transparent proxy wants none of that, so it
calls the ``Agent`` treq itself is built on, directly, with the same pool treq would use.
"""

from __future__ import annotations

from typing import IO, Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse

from ._headers import connection_tokens
from ._twisted_private import AgentRequest as _AgentRequest
from ._twisted_private import HTTP11ClientProtocol, _DataLoss, _IdentityTransferDecoder
from ._twisted_private import PoolFactory as _PoolFactory
from ._upstream_head import StrictParser

#: How long an idle pooled connection is kept. Below uvicorn's (vLLM's server) 5 s keep-alive,
#: so the gateway drops a connection before the upstream does and a POST is never sent on a
#: socket the upstream is closing (the Agent retries only idempotent, body-less requests).
POOL_IDLE_SECONDS = 4


class _LostBody:
    """The decoder of a close-delimited body whose connection was not closed cleanly.

    ``HTTPClientParser.connectionLost`` turns ``_DataLoss`` from ``noMoreData`` into a
    ``ResponseFailed`` for the body protocol: the same failure as a short Content-Length body.
    """

    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("no body bytes are expected after the connection was lost")

    def noMoreData(self) -> None:
        raise _DataLoss()


class _HygienicProtocol(HTTP11ClientProtocol):
    """Drops the response headers that the upstream's ``Connection`` header names.

    The Agent keeps ``Connection`` itself out of ``response.headers`` (it is in the parser's
    ``connHeaders``), so past this point nobody could tell which headers it declared
    hop-by-hop (RFC 9110 section 7.6.1). Its parser is a ``StrictParser`` (bounded, valid
    head), and a close-delimited body ends cleanly only on a clean close of the connection
    (see ``_disconnectParser``).
    """

    def _disconnectParser(self, reason: Failure | Exception) -> None:
        # A body with neither Content-Length nor chunking ends when the connection does, and is
        # whole only if it closed cleanly (FIN: ConnectionDone). Twisted's parser tells the body
        # protocol PotentialDataLoss for any loss, a reset (ConnectionLost) included, and no
        # public API hands it the loss reason; so the parser's decoder for such a body
        # (HTTPClientParser.bodyDecoder, twisted.web.http._IdentityTransferDecoder, both
        # private) is swapped for one that reports data loss, just before the parser hears.
        # (The quiescent path passes a bare ConnectionDone, not a Failure.)
        lost = reason.value if isinstance(reason, Failure) else reason
        parser = self._parser
        if parser is not None and not isinstance(lost, ConnectionDone):
            decoder = getattr(parser, "bodyDecoder", None)
            if isinstance(decoder, _IdentityTransferDecoder) and decoder.contentLength is None:
                cast(Any, parser).bodyDecoder = _LostBody()
        super()._disconnectParser(reason)  # type: ignore[no-untyped-call]

    def request(self, request: _AgentRequest) -> Deferred[IResponse]:
        d = super().request(request)
        parser = self._parser
        if parser is not None:
            StrictParser.adopt(parser)

        def strip(response: IResponse) -> IResponse:
            if parser is not None:
                for name in connection_tokens(parser.connHeaders):
                    response.headers.removeHeader(name)
            return response

        return d.addCallback(strip)


class _QuietFactory(_PoolFactory):
    # Otherwise every new upstream connection logs "Starting factory ...".
    noisy = False

    def buildProtocol(self, addr: object) -> HTTP11ClientProtocol:
        return _HygienicProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class _ExactAgent(Agent):
    """An ``Agent`` that sends the request-target exactly as it is given.

    ``Agent.request`` rebuilds the target with ``urlunparse`` (``URI.originForm``), which
    drops an empty query (``/x?``) or path parameter (``/x;``): not byte-exact, and it turns
    ``/v1/audio/..;`` into ``/v1/audio/..``. This is ``Agent.request`` with the raw target.
    """

    _origins: dict[bytes, tuple[URI, IStreamClientEndpoint]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._origins = {}

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        scheme_end = uri.find(b"://")
        authority_end = uri.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
        origin, target = (
            (uri[:authority_end], uri[authority_end:]) if authority_end >= 0 else (uri, b"/")
        )
        # One parsed origin and one endpoint per upstream, reused: parsing every URL, and
        # making an endpoint per request (Agent's way, with an IDNA encoding of the host), cost
        # several percent of a small call.
        known = self._origins.get(origin)
        if known is None:
            parsed = URI.fromBytes(origin)
            try:
                endpoint = self._getEndpoint(parsed)  # type: ignore[no-untyped-call]
            except SchemeNotSupported:
                return fail()
            known = self._origins[origin] = (parsed, endpoint)
        base, endpoint = known
        # The request's own URI (Request.absoluteURI), made without parsing the target again.
        parsed = URI(base.scheme, base.netloc, base.host, base.port, target, b"", b"", b"")
        requested: Deferred[IResponse] = self._requestWithEndpoint(
            (base.scheme, base.host, base.port),
            endpoint,
            method,
            parsed,
            headers,
            bodyProducer,
            target,
        )
        return requested


def make_agent(
    reactor: object, *, connect_timeout: float, max_connections: int
) -> tuple[IAgent, HTTPConnectionPool]:
    """An ``Agent`` with a persistent connection pool and a connect timeout."""
    pool = _QuietPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = max(2, max_connections)
    pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
    agent = _ExactAgent(reactor, connectTimeout=connect_timeout, pool=pool)
    return agent, pool


def upstream_url(base: bytes, target: bytes) -> bytes:
    """The upstream URL for a raw request-target: the base, then path and query byte-exact."""
    return base + target


def body_producer(content: IO[bytes] | None, cooperator: Cooperator) -> IBodyProducer | None:
    """Stream the spooled request body (memory or temp file) upstream; ``None`` when empty.

    ``FileBodyProducer`` reads it in slices and learns its length by seeking, so the upstream
    gets a ``Content-Length`` and the body is never read whole into one bytes object.
    """
    if content is None:
        return None
    content.seek(0, 2)
    size = content.tell()
    content.seek(0, 0)
    if size == 0:
        return None
    return FileBodyProducer(content, cooperator=cooperator)


def make_cooperator(reactor: IReactorTime) -> Cooperator:
    """A cooperator on the injected reactor (the default one uses the global reactor)."""
    return Cooperator(scheduler=lambda work: reactor.callLater(0, work))
