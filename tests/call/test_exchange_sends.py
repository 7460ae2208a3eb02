"""When the gateway hands the client's bytes to the kernel: at once, and never a send of nothing.

The client's transport here is a StringTransport with the ``doWrite`` a TCP transport has;
each call records what it would send. The bridge sends relayed bytes as they come, the end of
the call sends what ending it wrote (an empty body's head, a chunked body's last chunk, an
envelope), and nothing else: ending a Content-Length body used to spend a ``send(b"")``
system call on every small request.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from support.harness import Harness, Peer

GET = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"


class Sending(StringTransport):
    """A StringTransport whose ``doWrite`` notes the bytes a socket would be handed."""

    connected = True

    def __init__(self) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.sends: list[bytes] = []
        self._sent = 0

    def written(self) -> bytes:
        """Everything written so far (``value`` without its missing annotation)."""
        return self.io.getvalue()

    def doWrite(self) -> None:
        data = self.written()
        self.sends.append(data[self._sent :])
        self._sent = len(data)


def call(h: Harness, request: bytes) -> Sending:
    protocol = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = Sending()
    protocol.makeConnection(transport)
    Peer(protocol, transport).send(request)
    return transport


def test_a_content_length_body_is_sent_as_it_comes_and_its_end_sends_nothing() -> None:
    h = Harness()
    client = call(h, GET)
    h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    [sent] = client.sends
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert sent.endswith(b"\r\n\r\nok")
    assert h.tokens == 1


def test_an_empty_bodys_head_is_sent_when_the_call_ends() -> None:
    h = Harness()
    client = call(h, b"DELETE /v1/audio/voices/bob HTTP/1.1\r\nHost: gw\r\n\r\n")
    h.upstream().send(b"HTTP/1.1 204 No Content\r\n\r\n")
    [sent] = client.sends
    assert sent.startswith(b"HTTP/1.1 204 No Content\r\n")


def test_a_chunked_bodys_last_chunk_is_sent_when_the_call_ends() -> None:
    h = Harness()
    client = call(h, GET)
    up = h.upstream()
    up.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    up.send(b"0\r\n\r\n")
    assert client.sends[-1] == b"0\r\n\r\n"
    assert b"".join(client.sends) == client.written()
    assert all(client.sends)


def test_an_envelope_is_sent_when_the_call_ends() -> None:
    h = Harness()
    holder = call(h, GET)
    refused = call(h, GET)
    [sent] = refused.sends
    assert sent.startswith(b"HTTP/1.1 503 ")
    assert sent == refused.written()
    assert holder.sends == []
