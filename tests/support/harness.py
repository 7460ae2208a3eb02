"""In-memory harness: a gateway site driven over StringTransport, its real Agent over MemoryReactor.

Nothing here touches a socket or sleeps: time is the MemoryReactorClock's, the client is a
StringTransport the test writes request bytes into, and each upstream connection the gateway's
real ``Agent`` opens is handed to a StringTransport whose response bytes the test writes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from aistack_tts import TTSProxy

UPSTREAM = "http://127.0.0.1:8091"


class Peer:
    """One side of a connection: the protocol and the StringTransport it writes to."""

    def __init__(self, protocol: IProtocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        data: bytes = self.transport.value()
        return data

    def lose(self, reason: type[Exception] = ConnectionLost) -> None:
        """The network connection drops (as a real transport reports it)."""
        producer = self.transport.producer
        if producer is not None:
            # A TCP transport stops its registered producer before telling the protocol.
            producer.stopProducing()
        self.protocol.connectionLost(Failure(reason()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(getattr(self.transport, "disconnected", False))


class Harness:
    """A gateway with its slot, site, fake clock and upstream connections.

    Unlike ``TTSProxy``'s defaults, a busy GPU is a 503 at once (``queue_timeout=0``) and
    every call takes the slot (``slot_exempt=()``, so ``GET /v1/audio/voices`` is a short
    call that holds it): most tests hold the slot to see the refusal. Tests of the queue or
    the exempt rules pass them; ``defaults=True`` keeps ``TTSProxy``'s own.
    """

    def __init__(self, upstream: Any = UPSTREAM, **proxy_kwargs: Any) -> None:
        if not proxy_kwargs.pop("defaults", False):
            proxy_kwargs.setdefault("queue_timeout", 0)
            proxy_kwargs.setdefault("slot_exempt", ())
        self.reactor = MemoryReactorClock()
        count = 1 if isinstance(upstream, str) else len(upstream)
        default: Any = DeferredSemaphore(1) if count == 1 else None
        self.slot = proxy_kwargs.pop("slot", None) or default
        self.proxy = TTSProxy(upstream, reactor=self.reactor, slot=self.slot, **proxy_kwargs)
        self.site = self.proxy.site()
        self._upstreams: dict[int, Peer] = {}

    def client(self) -> Peer:
        """A new client connection to the gateway."""
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert protocol is not None
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        protocol.makeConnection(transport)
        return Peer(protocol, transport)

    def request(self, raw: bytes) -> Peer:
        """Open a client connection and send ``raw`` on it."""
        client = self.client()
        client.send(raw)
        return client

    @property
    def connection_attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def upstream(self, index: int = -1) -> Peer:
        """Complete the gateway's (index-th) upstream connection attempt (once; then the same)."""
        if index < 0:
            index += len(self.reactor.tcpClients)
        if index not in self._upstreams:
            host, port, factory, _timeout, _bind = self.reactor.tcpClients[index]
            assert host == "127.0.0.1"
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            assert protocol is not None
            transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
            protocol.makeConnection(transport)
            self._upstreams[index] = Peer(protocol, transport)
        # Let the request body producer (a cooperator on this clock) run.
        self.reactor.advance(0)
        return self._upstreams[index]

    def refuse(self, index: int = -1, reason: Exception | None = None) -> None:
        """Make the gateway's upstream connection attempt fail."""
        from twisted.internet.error import ConnectionRefusedError

        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients[index]
        connector: Any = None
        factory.clientConnectionFailed(connector, Failure(reason or ConnectionRefusedError()))
        # HostnameEndpoint reports the failure when its attempt loop next runs (every 0.3 s).
        self.reactor.advance(0.3)

    def port(self, index: int = -1) -> int:
        """The port of the gateway's (index-th) upstream connection attempt."""
        port: int = self.reactor.tcpClients[index][1]
        return port

    @property
    def tokens(self) -> int:
        return int(self.slot.tokens)


def upstream_request(peer: Peer) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """Parse what the gateway wrote upstream: request line, header list, body."""
    head, _, body = peer.received().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers, body
