"""A call the gateway gives up closes its upstream socket at once, not on the reactor's next turn.

The lean client on pytest-twisted's reactor against a plain blocking socket server. Each test
gives a call up (the body's consumer stops it; the request is cancelled before the head) and
then, without returning to the reactor, waits on the server's socket: the FIN must be there
already. With ``abortConnection`` alone (the code before) the socket closed on the reactor's
next turn, after the gateway's bookkeeping for the cut call (its access line, its metrics), and
these waits saw nothing.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.web.iweb import IResponse

from aistack_tts.client._agent import LeanAgent
from aistack_tts.client._pool import ConnectionPool
from support.reactor import reactor, twisted_test, until

pytestmark = pytest.mark.real_sockets

PATIENCE = 5.0
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nContent-Length: 100000000\r\n\r\n"


@pytest.fixture
def server() -> Iterator[socket.socket]:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    listening.setblocking(False)
    try:
        yield listening
    finally:
        listening.close()


def agent() -> LeanAgent:
    return LeanAgent(reactor, ConnectionPool(reactor, max_idle=2), connect_timeout=PATIENCE)


async def accepted(listening: socket.socket) -> socket.socket:
    """The server side of the client's connection, once it is there (the reactor runs)."""
    got: list[socket.socket] = []

    def ready() -> bool:
        try:
            got.append(listening.accept()[0])
        except BlockingIOError:
            return False
        return True

    await until(ready, "the client's connection", timeout=PATIENCE)
    got[0].settimeout(PATIENCE)
    return got[0]


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)


def closed_already(conn: socket.socket) -> bool:
    """Whether the peer's FIN (or reset) is there now, waiting without running the reactor.

    The client sends nothing after its request, so a readable socket means the close.
    """
    readable, _, _ = select.select([conn], [], [], 0.5)
    if not readable:
        return False
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


class Keeping(Protocol):
    transport: Any

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


@twisted_test
async def test_a_body_its_consumer_stops_closes_the_upstream_at_once(
    server: socket.socket,
) -> None:
    url = f"http://127.0.0.1:{server.getsockname()[1]}/v1/audio/speech".encode()
    waiting = agent().request(b"POST", url)
    conn = await accepted(server)
    read_request(conn)
    conn.sendall(HEAD + b"x" * 1000)
    response: IResponse = await waiting
    body = Keeping()
    response.deliverBody(body)
    await until(lambda: bool(body.data), "the first body bytes", timeout=PATIENCE)
    body.transport.stopProducing()
    assert closed_already(conn), "the FIN left before the reactor's next turn"
    conn.close()


@twisted_test
async def test_a_request_cancelled_before_the_head_closes_the_upstream_at_once(
    server: socket.socket,
) -> None:
    url = f"http://127.0.0.1:{server.getsockname()[1]}/v1/audio/speech".encode()
    waiting: Deferred[IResponse] = agent().request(b"GET", url)
    conn = await accepted(server)
    read_request(conn)
    waiting.cancel()
    assert closed_already(conn), "the FIN left before the reactor's next turn"
    with pytest.raises(CancelledError):
        await waiting
    conn.close()
