"""The HTTP server side: a request that enforces ``--max-body`` while the body arrives.

twisted.web spools a request body to memory or a temp file before any resource sees it, so a
size check in the resource would come after the whole upload was stored. This request checks
the declared ``Content-Length`` as soon as the headers are in, and a chunk's declared size as
soon as its size line is in (the channel announces it), counts chunked bytes as they arrive,
and answers 413 without storing the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import HTTPChannel
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource
from zope.interface import implementer

from aistack_tts._config import DEFAULT_CLIENT_TIMEOUT
from aistack_tts._errors import GatewayError, InvalidRequest, NotFound, RequestTooLarge, write_error
from aistack_tts.observe._accesslog import AccessLog, tag_response
from aistack_tts.wire._descriptors import RateLimitedWarning, default_max_connections

from ._channel import ClientLimits, GatewayChannel
from ._connections import ConnectionRegistry

#: A chunked body may come in this many pieces before their mean size is checked.
CHUNKS_BEFORE_CHECK = 1024
#: The smallest mean piece of a chunked body after that: Twisted's decoder costs ~6 us a
#: chunk, so 10**6 one-byte chunks (6 MB on the wire) held the reactor for 5.8 s.
MIN_MEAN_CHUNK = 1024

_log = Logger()


class GatewayRequest(server.Request):
    """A twisted.web request that refuses bodies over ``max_body`` before spooling them."""

    # A response without Content-Type must not gain twisted.web's default text/html.
    defaultContentType = None

    def __init__(
        self,
        channel: HTTPChannel,
        *args: Any,
        max_body: int,
        access_log: AccessLog | None = None,
        connections: ConnectionRegistry | None = None,
        owns: Callable[[bytes], bool] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(channel, *args, **kw)  # type: ignore[no-untyped-call]
        self.max_body = max_body
        self.access_log = access_log
        self.connections = connections
        self._owns = owns
        #: The request is for the embedder's own routes (``proxy.site(root=...)``).
        self.app_route = False
        if access_log is not None:
            # The request line is in: what the client waits from, uploads included.
            access_log.arrived(self)
        self.body_received = 0
        self.body_pieces = 0
        self.body_chunked = False
        self.refused = False

    def gotLength(self, length: int | None) -> None:
        """Headers are in: refuse at once if the declared length is over the limit."""
        self.body_chunked = length is None
        if length is not None and length > self.max_body:
            self._refuse(f"the request body ({length} bytes) is over the limit")
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def body_announced(self, more: int) -> None:
        """Refuse at once if ``more`` bytes more take the body over the limit.

        The channel announces what is left of a chunk as soon as its size line is in.
        """
        if not self.refused and self.body_received + more > self.max_body:
            self._refuse(
                f"the request body is over the limit (a chunk declares {more} more bytes "
                f"after {self.body_received})"
            )

    def handleContentChunk(self, data: bytes) -> None:
        """Count body bytes as they arrive (chunked bodies declare no length)."""
        if self.refused:
            return
        self.body_received += len(data)
        self.body_pieces += 1
        if self.body_received > self.max_body:
            self._refuse("the request body is over the limit")
            return
        if (
            self.body_chunked
            and self.body_pieces > CHUNKS_BEFORE_CHECK
            and self.body_received < self.body_pieces * MIN_MEAN_CHUNK
        ):
            self.refused = True
            channel: Any = self.channel
            channel.refuse(
                InvalidRequest(
                    f"the chunked request body came in {self.body_pieces} pieces for "
                    f"{self.body_received} bytes; pieces must be {MIN_MEAN_CHUNK} bytes on "
                    "average: send larger chunks, or a Content-Length"
                ),
                self,
            )
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request, unless it was already refused."""
        if self.refused:
            return
        if self._owns is not None and not self._owns(path):
            # The embedder's route: as a plain Site serves it, form bodies parsed into
            # ``args`` (Twisted reads the setting from here) and text/html by default.
            self.app_route = True
            self._parsePOSTFormSubmission = True
            self.defaultContentType = b"text/html"
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def process(self) -> None:
        """Serve the request; the asterisk-form target (``OPTIONS *``) is no route here."""
        if self.path == b"*":
            # twisted.web would answer it itself (a bare 405 or 200), bypassing the envelope.
            error = NotFound("no route for *")
            tag_response(self)
            if self.access_log is not None:
                self.access_log.answered(self, error)
            write_error(self, error)
            return
        super().process()  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> None:
        """Write body bytes; the first write sends the headers, which may end keep-alive."""
        if not self.startedWriting and self.connections is not None:
            self.connections.response_starting(self)
        super().write(data)  # type: ignore[no-untyped-call]

    def _refuse(self, why: str) -> None:
        self.refused = True
        # No "100 Continue" after our answer: the channel looks at Expect right after gotLength.
        self.requestHeaders.removeHeader(b"expect")
        error = RequestTooLarge(f"{why}: at most {self.max_body} bytes are accepted")
        channel: Any = self.channel
        # The channel is still parsing this request, so the usual setResponseCode/write path
        # (which needs the request line) is not open yet: it writes the whole answer itself.
        channel.refuse(error, self)


class _ClosedAtOnce(Protocol):
    """A connection over ``--max-connections``: closed as soon as it is made, unread."""

    def connectionMade(self) -> None:
        """Close (after nothing: no byte is read or written)."""
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(INonQueuedRequestFactory)
@frozen
class GatewayRequestFactory:
    """Builds ``GatewayRequest``s with the configured body limit."""

    max_body: int
    access_log: AccessLog | None = None
    connections: ConnectionRegistry | None = None
    owns: Callable[[bytes], bool] | None = None

    def __call__(self, channel: HTTPChannel) -> GatewayRequest:
        return GatewayRequest(
            channel,
            max_body=self.max_body,
            access_log=self.access_log,
            connections=self.connections,
            owns=self.owns,
        )


class GatewaySite(server.Site):
    """A ``Site`` for the gateway: body limit on arrival, multipart left unparsed, quiet.

    Its open connections are in ``connections`` (a new registry unless one is given).
    ``owns`` says which request-targets are the gateway's when ``resource`` also serves an
    embedder's routes (``proxy.site(root=...)``); those others get Twisted's access log line.
    ``preflight`` (``ClientLimits.preflight``) answers a request with ``Expect: 100-continue``
    before its body is invited, when it would be refused at once anyway.
    """

    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        max_body: int,
        reactor: IReactorTime,
        access_log: AccessLog | None = None,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        keepalive_timeout: float | None = None,
        connections: ConnectionRegistry | None = None,
        max_connections: int | None = None,
        preflight: Callable[[server.Request], GatewayError | None] | None = None,
        owns: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.connections = ConnectionRegistry() if connections is None else connections
        super().__init__(  # type: ignore[no-untyped-call]
            resource,
            requestFactory=GatewayRequestFactory(max_body, access_log, self.connections, owns),
            reactor=reactor,
            # Voice-clone uploads are multipart: keep them as opaque bytes for the upstream.
            parsePOSTFormSubmission=False,
            # The channel keeps its own deadlines; Twisted's timer restarts on every byte.
            timeout=None,
        )
        self.limits = ClientLimits(
            reactor,
            client_timeout,
            keepalive_timeout or client_timeout,
            access_log,
            self.connections,
            preflight,
        )
        #: Beyond this many open client connections, new ones are closed at once: each holds
        #: descriptors, and running out of them fails everyone's calls.
        self.max_connections = max_connections or default_max_connections()
        self._refusing = RateLimitedWarning(reactor, "refusing new client connections")

    def protocol(self) -> GatewayChannel:  # type: ignore[override]
        """A channel with this site's client limits (``buildProtocol`` calls this)."""
        return GatewayChannel(self.limits)

    def buildProtocol(self, addr: Any) -> Any:
        """A channel for a new connection, tracked in ``connections``.

        When ``max_connections`` are open, a protocol that closes the connection at once (not
        ``None``, which a TCP port takes as "close", but a TLS listener's wrapper would wrap).
        """
        if self.connections.count >= self.max_connections:
            self._refusing.occurred(
                f"{self.connections.count} client connections are open, the most "
                f"--max-connections allows: new ones are closed at once"
            )
            return _ClosedAtOnce()
        protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if protocol is not None:
            self.connections.add(protocol)
        return protocol

    def log(self, request: Any) -> None:
        """No combined-log line for the gateway's requests: it emits its own access event.

        The embedder's routes get Twisted's line, as in a plain ``Site``.
        """
        if getattr(request, "app_route", False):
            super().log(request)
