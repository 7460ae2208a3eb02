"""The lean client on an in-memory reactor: a recording transport, a client, results.

Shared by the client's tests (``client/test_agent.py``, ``client/test_reuse.py``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from aistack_tts.client._agent import LeanAgent
from aistack_tts.client._pool import ConnectionPool

URL = b"http://127.0.0.1:8091/v1/audio/speech"


class Recording(StringTransport):
    """A StringTransport that keeps each ``write`` (to count sends)."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 8091))  # type: ignore[no-untyped-call]
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)  # type: ignore[no-untyped-call]


class Body(Protocol):
    """A body protocol that keeps what it gets, and how the body ended."""

    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason


class Client:
    """A ``LeanAgent`` on a fake reactor, and its upstream connections."""

    def __init__(self, max_idle: int = 2) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = ConnectionPool(self.reactor, max_idle=max_idle)
        self.agent = LeanAgent(self.reactor, self.pool, connect_timeout=5)
        self.connections: list[tuple[Any, Any]] = []

    def request(
        self, method: bytes = b"GET", uri: bytes = URL, **kwargs: Any
    ) -> Deferred[IResponse]:
        return self.agent.request(method, uri, **kwargs)

    def connect(self) -> tuple[Any, Any]:
        """Complete the newest connection attempt."""
        host, port, factory, timeout, _bind = self.reactor.tcpClients[len(self.connections)]
        assert (host, port, timeout) == ("127.0.0.1", 8091, 5)
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = Recording()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return protocol, transport

    @property
    def attempts(self) -> int:
        return len(self.reactor.tcpClients)


def result(d: Deferred[Any]) -> Any:
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "the Deferred has not fired"
    return got[0]


def body_of(response: IResponse) -> Body:
    body = Body()
    response.deliverBody(body)
    return body


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def deliver_ok(c: Client) -> tuple[Any, Any]:
    d = c.request()
    p, t = c.connect() if len(c.connections) < c.attempts else c.connections[-1]
    p.dataReceived(OK)
    body_of(result(d))
    return p, t
