"""The WebSocket tunnel's two connections: how each is closed, paused, and taken over.

A step below ``tunnel._session``, which decides; this module holds the parts that move
bytes: each connection's state (``Side``), the producers that let one side's slow reader pause
the other side's socket (``Valve``), the protocols that pass each connection's events on, the
hand-over of the client's connection from twisted.web (``take_over``), and what the relayed
frames tell (``Frames``: between frames? who sent the first close frame?).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request
from zope.interface import implementer

from aistack_tts.wire._http import CLIENT_SEND_BUFFER
from aistack_tts.wire._socket_state import PeerWatch, WatchedReading

#: How long a side the gateway closed politely may take to flush what it was still sending
#: (the peer's last frames, a close frame) before its connection is cut.
CLOSE_GRACE_S = 5.0


@define
class Side:
    """One connection of a tunnel: its transport once known, and how it is being closed."""

    name: str
    transport: Any = None
    #: The producer registered with this side's transport (it pauses the other side).
    producer: Valve | None = None
    closing: bool = False
    lost: bool = False
    _linger: IDelayedCall | None = None

    @property
    def open(self) -> bool:
        """Connected and not being closed."""
        return self.transport is not None and not self.closing and not self.lost

    def close(self, clock: IReactorTime, *, abort: bool) -> None:
        """Close this connection: flush politely (cut after a grace period) or abort now."""
        if self.transport is None or self.lost:
            return
        if self.producer is not None:
            # A transport never closes while a streaming producer is registered with it.
            self.producer.stop_watching()
            self.producer = None
            self.transport.unregisterProducer()
        if abort:
            self.closing = True
            self.transport.abortConnection()
        elif not self.closing:
            self.closing = True
            self.transport.loseConnection()
            self._linger = clock.callLater(CLOSE_GRACE_S, self.transport.abortConnection)

    def gone(self) -> None:
        """The connection ended."""
        self.lost = True
        if self.producer is not None:
            self.producer.stop_watching()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


@implementer(IPushProducer)
class Valve:
    """Stops reading from ``side`` while the other side's send buffer is full.

    Registered with the *other* side's transport: that transport pauses it when its buffer
    fills and resumes it when the buffer drains, so unread bytes wait in the kernel's TCP
    window of ``side``, not in the gateway. While ``side`` is not read, ``watch`` (if any)
    looks at its socket, so a peer that leaves is still noticed.
    """

    def __init__(
        self,
        side: Side,
        on_resume: Callable[[], None],
        *,
        on_pause: Callable[[], None] | None = None,
        watch: PeerWatch | None = None,
    ) -> None:
        self._side = side
        self._on_resume = on_resume
        self._on_pause = on_pause
        self._watch = watch
        self.paused = False

    def pauseProducing(self) -> None:
        """The other side is not keeping up: stop reading from ``side``."""
        self.paused = True
        if self._on_pause is not None:
            self._on_pause()
        if self._side.open:
            self._side.transport.pauseProducing()
            if self._watch is not None:
                self._watch.start()

    def resumeProducing(self) -> None:
        """The other side drained its buffer: read from ``side`` again."""
        self.paused = False
        if self._watch is not None:
            self._watch.stop()
        self._on_resume()
        if self._side.open:
            self._side.transport.resumeProducing()

    def stop_watching(self) -> None:
        """The session is ending: no more looks at ``side``'s socket."""
        if self._watch is not None:
            self._watch.stop()

    def stopProducing(self) -> None:
        """The other side's connection is going away.

        Nothing to do here: that connection's ``connectionLost``, which follows at once, ends
        the session.
        """


class UpstreamProtocol(Protocol):
    """The upstream's connection: its bytes and its end go to the tunnel, naming this protocol."""

    def __init__(
        self,
        on_data: Callable[[UpstreamProtocol, bytes], None],
        on_lost: Callable[[UpstreamProtocol, Failure], None],
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def dataReceived(self, data: bytes) -> None:
        self._on_data(self, data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._on_lost(self, reason)


class UpstreamFactory(Factory):
    """Builds the one ``UpstreamProtocol`` of a tunnel."""

    noisy = False

    def __init__(
        self,
        on_data: Callable[[UpstreamProtocol, bytes], None],
        on_lost: Callable[[UpstreamProtocol, Failure], None],
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return UpstreamProtocol(self._on_data, self._on_lost)


class ClientProtocol(Protocol):
    """The client's connection once twisted.web's channel has handed it over."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Failure], None],
        channel_lost: Callable[[Failure], None],
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost
        self._channel_lost = channel_lost

    def dataReceived(self, data: bytes) -> None:
        self._on_data(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self._on_lost(reason)
        # Let twisted.web end the request as it would have (notifyFinish, the router's Deferred).
        self._channel_lost(reason)


def take_over(request: Request, protocol: ClientProtocol) -> tuple[Any, bytes]:
    """Hand the client's connection from twisted.web's HTTP channel to ``protocol``.

    What Twisted's own WebSocket support does (the private
    ``HTTPChannel._protocolUpgradeForWebsockets``), spelled out so it works on every supported
    Twisted: the channel keeps its place as the transport's protocol but passes every byte and
    the end of the connection on. It had also registered itself as the transport's producer;
    that place is freed for the tunnel. Returns the transport and the bytes the client sent
    after its handshake, which the channel held back while the request was being handled.
    """
    channel = request.channel
    if not isinstance(channel, HTTPChannel):
        raise TypeError(f"cannot take over a {type(channel).__name__} connection")
    transport: Any = channel.transport
    transport.unregisterProducer()
    reading = getattr(channel, "_networkProducer", None)
    if isinstance(reading, WatchedReading):
        # The tunnel's own valve watches the client from now on.
        reading.stop_watching()
    early = b"".join(channel._dataBuffer)
    channel._dataBuffer = []
    channel.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
    channel.connectionLost = protocol.connectionLost  # type: ignore[method-assign]
    protocol.makeConnection(transport)  # type: ignore[no-untyped-call]
    return transport, early


def abort_client(client: Side, request: Request, clock: IReactorTime) -> None:
    """Cut the client's connection, whether the tunnel holds it yet or twisted.web still does."""
    if client.transport is not None:
        client.close(clock, abort=True)
        return
    transport: Any = request.transport
    if transport is not None:
        transport.abortConnection()


def couple(
    client: Side,
    upstream: Side,
    on_resume: Callable[[], None],
    *,
    clock: IReactorTime,
    client_slow: Callable[[], None],
) -> None:
    """Make each side of an open tunnel the push producer of the other.

    Both send buffers are set to the gateway's client send buffer; ``on_resume`` runs when a
    side drained its buffer (it counts as activity), ``client_slow`` when the client's filled.
    While the client is not read (the upstream is not reading), its socket is watched: a
    client that resets or closes is cut at once, which ends the session.
    """
    for side in (client.transport, upstream.transport):
        if hasattr(side, "bufferSize"):
            side.bufferSize = CLIENT_SEND_BUFFER
    client.producer = Valve(upstream, on_resume, on_pause=client_slow)
    client.transport.registerProducer(client.producer, True)
    transport = client.transport
    watch = PeerWatch(clock, transport, transport.abortConnection)
    upstream.producer = Valve(client, on_resume, watch=watch)
    upstream.transport.registerProducer(upstream.producer, True)
