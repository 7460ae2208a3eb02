"""The streaming bridge: upstream response body to client, chunk by chunk, with backpressure.

It is the ``IProtocol`` handed to ``response.deliverBody`` and, at the same time, the
``IPushProducer`` registered with the client's request. When the client's socket buffer fills,
twisted.web pauses it and it pauses the upstream transport, so the kernel's TCP window (not
the gateway's memory) holds what the client has not read yet. A chunked body the lean client
passes on with its framing (``chunksReceived``) goes to the client's connection as it came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from aistack_tts.wire._send_now import send_now

from ._watchdog import Watchdog


@implementer(IPushProducer)
class StreamBridge(Protocol):
    """Relays one upstream body to one client request."""

    def __init__(
        self,
        request: Request,
        watchdog: Watchdog,
        on_end: Callable[[Failure], None],
        on_client_gone: Callable[[], None],
    ) -> None:
        self._request = request
        self._watchdog = watchdog
        self._on_end = on_end
        self._on_client_gone = on_client_gone
        self.bytes_out = 0
        self.paused = False
        self.ended = False
        # The upstream body's transport (a TransportProxyProducer): what backpressure pauses.
        self._upstream: IPushProducer | None = None

    # IProtocol, from the upstream response.

    def makeConnection(self, transport: Any) -> None:
        """Keep the upstream transport as the producer to pause, resume and stop."""
        self._upstream = transport
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def connectionMade(self) -> None:
        """The body starts: let the client's backpressure reach the upstream transport."""
        self._request.registerProducer(self, True)
        self._watchdog.touch("upstream")

    def dataReceived(self, data: bytes) -> None:
        """One upstream chunk: straight to the client, nothing kept."""
        self.bytes_out += len(data)
        if not self.paused:
            self._watchdog.touch("upstream")
        self._request.write(data)
        send_now(self._request.transport)

    def chunksReceived(self, framed: bytes, size: int) -> None:
        """Upstream chunks with their framing (``size`` bytes of body): to the client as they are.

        Only after ``relay_framing``, where twisted.web frames the client's response as chunked
        too: its head is written, and ``Request.finish`` writes the last chunk. What
        ``Request.write`` would do, without taking the chunks apart and framing them again.
        """
        self.bytes_out += size
        if not self.paused:
            self._watchdog.touch("upstream")
        request = self._request
        channel = request.channel
        if channel is not None:  # None once the client is gone: twisted.web drops writes too
            request.sentLength += size
            channel.write(framed)
            send_now(channel.transport)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """The upstream body ended, cleanly or not."""
        self.ended = True
        self._watchdog.stop()
        self._on_end(reason)

    # IPushProducer, for the client's request.

    def pauseProducing(self) -> None:
        """The client is not keeping up: stop reading from the upstream."""
        self.paused = True
        # While we wait on the client, the clock runs against the client.
        self._watchdog.touch("client")
        if self._upstream is not None:
            self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        """The client drained its buffer: read from the upstream again."""
        self.paused = False
        self._watchdog.touch("upstream")
        if self._upstream is not None:
            self._upstream.resumeProducing()

    def stopProducing(self) -> None:
        """The client connection is going away (twisted.web calls this just before)."""
        self._on_client_gone()

    def stop_upstream(self) -> None:
        """Close the upstream connection, so the container stops generating."""
        self._watchdog.stop()
        if self._upstream is not None and not self.ended:
            # TransportProxyProducer.stopProducing closes the underlying TCP connection.
            self._upstream.stopProducing()
