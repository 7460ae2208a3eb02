"""The HTTP server side: a request that enforces ``--max-body`` while the body arrives.

twisted.web spools a request body to memory or a temp file before any resource sees it, so a
size check in the resource would come after the whole upload was stored. This request checks
the declared ``Content-Length`` as soon as the headers are in, counts chunked bytes as they
arrive, and answers 413 without storing the rest.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import HTTPChannel
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.resource import IResource
from zope.interface import implementer

from ._accesslog import AccessLog
from ._connections import ConnectionRegistry
from ._errors import NotFound, RequestTooLarge, write_error

#: How long a refused upload may keep sending (discarded) before its connection is cut. Closing
#: at once would reset the connection under a client still writing, and it would never read
#: the 413 (a "lingering close", as nginx does).
LINGER_SECONDS = 2.0

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
        **kw: Any,
    ) -> None:
        super().__init__(channel, *args, **kw)  # type: ignore[no-untyped-call]
        self.max_body = max_body
        self.access_log = access_log
        self.connections = connections
        self.body_received = 0
        self.refused = False

    def gotLength(self, length: int | None) -> None:
        """Headers are in: refuse at once if the declared length is over the limit."""
        if length is not None and length > self.max_body:
            self._refuse(f"the request body ({length} bytes) is over the limit")
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        """Count body bytes as they arrive (chunked bodies declare no length)."""
        if self.refused:
            return
        self.body_received += len(data)
        if self.body_received > self.max_body:
            self._refuse("the request body is over the limit")
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Process the request, unless it was already refused."""
        if self.refused:
            return
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def process(self) -> None:
        """Serve the request; the asterisk-form target (``OPTIONS *``) is no route here."""
        if self.path == b"*":
            # twisted.web would answer it itself (a bare 405 or 200), bypassing the envelope.
            error = NotFound("no route for *")
            if self.access_log is not None:
                self.access_log.finished(
                    self,
                    status=error.status,
                    outcome=error.type,
                    provider=error.provider,
                    slot="none",
                )
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
        error = RequestTooLarge(f"{why}: at most {self.max_body} bytes are accepted")
        body = error.envelope()
        # The channel is still parsing this request, so the usual setResponseCode/write path
        # (which needs the request line) is not open yet: write the whole answer ourselves.
        transport: Any = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body
        )
        # No "100 Continue" after our answer: the channel looks at Expect right after gotLength.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.persistent = False
        if self.access_log is not None:
            # The request line is the channel's until the body is in; borrow it for the log.
            self.method = getattr(self.channel, "_command", b"?")
            self.uri = getattr(self.channel, "_path", b"?")
            self.access_log.finished(
                self, status=413, outcome=error.type, provider=error.provider, slot="none"
            )
        # Half-close so the client sees the end of our answer, keep reading (and dropping)
        # what it still sends for a moment, then cut the connection.
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
            self.channel.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            self.channel.loseConnection()


@implementer(INonQueuedRequestFactory)
@frozen
class GatewayRequestFactory:
    """Builds L{GatewayRequest}s with the configured body limit."""

    max_body: int
    access_log: AccessLog | None = None
    connections: ConnectionRegistry | None = None

    def __call__(self, channel: HTTPChannel) -> GatewayRequest:
        return GatewayRequest(
            channel,
            max_body=self.max_body,
            access_log=self.access_log,
            connections=self.connections,
        )


class GatewaySite(server.Site):
    """A ``Site`` for the gateway: body limit on arrival, multipart left unparsed, quiet.

    Its open connections are in ``connections`` (a new registry unless one is given).
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
        connections: ConnectionRegistry | None = None,
    ) -> None:
        self.connections = ConnectionRegistry() if connections is None else connections
        super().__init__(  # type: ignore[no-untyped-call]
            resource,
            requestFactory=GatewayRequestFactory(max_body, access_log, self.connections),
            reactor=reactor,
            # Voice-clone uploads are multipart: keep them as opaque bytes for the upstream.
            parsePOSTFormSubmission=False,
        )

    def buildProtocol(self, addr: Any) -> Any:
        """A channel for a new connection, tracked in ``connections``."""
        protocol = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if protocol is not None:
            self.connections.add(protocol)
        return protocol

    def log(self, request: Any) -> None:
        """No combined-log line: the gateway emits its own structured access event."""
