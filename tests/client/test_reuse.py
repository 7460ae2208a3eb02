"""Issue 23: when the lean client reuses an upstream connection, and when it sends again.

Rules: a connection is pooled only when the upstream took the whole request (nothing of the
body unwritten, buffered or unacknowledged when the response ended), and one given up with
bytes of its request still unsent is aborted, not flushed; a request that failed on a reused
connection before any response byte is sent once more on a fresh one, whatever its method;
``Keep-Alive: timeout=N`` and the pool's idle lifetime bound how long a connection is kept; a
connection whose peer has gone is never handed out.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from aistack_tts.client._agent import LeanAgent
from aistack_tts.client._pool import ConnectionPool, keep_alive_expiry
from aistack_tts.client._request import SpooledBody
from support.lean_client import OK, Client, Recording, body_of, deliver_ok, result

ORIGIN = b"http://127.0.0.1:8091"
EARLY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


class Unread(Recording):
    """A transport whose last ``unread`` bytes sit unsent (the upstream is not reading)."""

    def __init__(self, unread: int) -> None:
        super().__init__()
        self.dataBuffer = b"\0" * unread
        self.offset = 0
        self._tempDataLen = 0


def connect_with(c: Client, transport: Recording) -> Any:
    factory = c.reactor.tcpClients[len(c.connections)][2]
    protocol: Any = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    c.connections.append((protocol, transport))
    return protocol


def streamed(c: Client, size: int) -> SpooledBody:
    cooperator = Cooperator(scheduler=lambda work: c.reactor.callLater(0, work))
    return SpooledBody(io.BytesIO(b"v" * size), size, cooperator)


def test_an_answer_while_request_bytes_are_unsent_is_not_pooled_and_aborts() -> None:
    """The 3 MB upload case: all handed to the socket, most of it never read upstream."""
    c = Client()
    d = c.request(b"POST", bodyProducer=SpooledBody(io.BytesIO(b"{}"), 2, Cooperator()))
    transport = Unread(3_000_000)
    p = connect_with(c, transport)
    p.dataReceived(EARLY_OK)
    assert body_of(result(d)).data == b"ok"
    assert c.pool.idle(ORIGIN) == 0, "the next call would queue behind unread bytes"
    assert transport.disconnected, "aborted: a flush of bytes nobody reads would never end"
    c.request()
    assert c.attempts == 2, "the next call gets a fresh connection"


def test_a_response_that_ends_before_the_body_is_written_aborts_not_flushes() -> None:
    """The 20 MB case: the writer still has body to send; a flush would never finish."""
    c = Client()
    d = c.request(b"POST", bodyProducer=streamed(c, 200_000))
    p, t = c.connect()
    p.dataReceived(EARLY_OK)  # before the cooperator wrote any slice
    assert body_of(result(d)).data == b"ok"
    assert t.disconnected
    assert c.pool.idle(ORIGIN) == 0


def test_an_answer_after_the_whole_body_was_taken_is_pooled() -> None:
    c = Client()
    d = c.request(b"POST", bodyProducer=SpooledBody(io.BytesIO(b"{}"), 2, Cooperator()))
    p, t = c.connect()
    p.dataReceived(EARLY_OK)
    body_of(result(d))
    assert c.pool.idle(ORIGIN) == 1
    assert not t.disconnecting


def test_a_post_on_a_connection_the_upstream_closed_is_sent_again_on_a_fresh_one() -> None:
    c = Client()
    p, _t = deliver_ok(c)
    body = SpooledBody(io.BytesIO(b'{"input": "hi"}'), 15, Cooperator())
    d = c.request(b"POST", bodyProducer=body)
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 2
    fresh, t2 = c.connect()
    assert t2.value().startswith(b"POST /v1/audio/speech HTTP/1.1")
    assert t2.value().endswith(b'\r\n\r\n{"input": "hi"}')
    fresh.dataReceived(OK)
    assert result(d).code == 200


def test_a_streamed_upload_is_sent_again_whole_on_a_fresh_connection() -> None:
    c = Client()
    p, _t = deliver_ok(c)
    d = c.request(b"POST", bodyProducer=streamed(c, 200_000))
    for _ in range(3):
        c.reactor.advance(0)
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 2
    fresh, t2 = c.connect()
    for _ in range(20):
        c.reactor.advance(0)
    head, _, sent = t2.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 200000" in head
    assert sent == b"v" * 200_000
    fresh.dataReceived(OK)
    assert result(d).code == 200


def test_a_fresh_connection_that_fails_is_not_sent_again() -> None:
    c = Client()
    d = c.request(b"POST", bodyProducer=SpooledBody(io.BytesIO(b"{}"), 2, Cooperator()))
    p, _t = c.connect()
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 1
    assert result(d).check(ResponseNeverReceived)


def test_only_one_retry() -> None:
    c = Client()
    p, _t = deliver_ok(c)
    d = c.request(b"POST", bodyProducer=SpooledBody(io.BytesIO(b"{}"), 2, Cooperator()))
    p.connectionLost(Failure(ConnectionDone()))
    fresh, _t2 = c.connect()
    fresh.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 2
    assert result(d).check(ResponseNeverReceived)


def test_keep_alive_timeout_shortens_the_idle_life() -> None:
    c = Client()
    d = c.request()
    p, t = c.connect()
    p.dataReceived(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=1, max=100\r\n\r\n"
    )
    body_of(result(d))
    assert c.pool.idle(ORIGIN) == 1
    c.reactor.advance(0.49)
    assert not t.disconnecting
    c.reactor.advance(0.02)
    assert t.disconnecting, "closed before the upstream's own 1 s"
    assert c.pool.idle(ORIGIN) == 0


def test_keep_alive_expiry() -> None:
    assert keep_alive_expiry(4.0, None) == 4.0
    assert keep_alive_expiry(4.0, 5.0) == 4.0
    assert keep_alive_expiry(4.0, 3.0) == 2.0
    assert keep_alive_expiry(4.0, 1.0) == 0.5
    assert keep_alive_expiry(4.0, 0.0) == 0.0
    assert keep_alive_expiry(0.0, 5.0) == 0.0


def test_keep_alive_timeout_zero_is_not_pooled() -> None:
    c = Client()
    d = c.request()
    p, t = c.connect()
    p.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=0\r\n\r\n")
    body_of(result(d))
    assert c.pool.idle(ORIGIN) == 0
    assert t.disconnecting


def test_pool_idle_timeout_zero_never_reuses() -> None:
    c = Client()
    c.pool = ConnectionPool(c.reactor, max_idle=2, idle_timeout=0)
    c.agent = LeanAgent(c.reactor, c.pool, connect_timeout=5)
    _p, t = deliver_ok(c)
    assert t.disconnecting
    c.request()
    assert c.attempts == 2


def test_a_connection_whose_peer_has_gone_is_not_handed_out() -> None:
    """Its FIN is in the kernel, not yet read by the reactor: the next call connects anew."""
    gone: set[Any] = set()
    c = Client()
    c.pool = ConnectionPool(c.reactor, max_idle=2, gone=lambda t: t in gone)
    c.agent = LeanAgent(c.reactor, c.pool, connect_timeout=5)
    _p, t = deliver_ok(c)
    gone.add(t)
    d: Deferred[Any] = c.request()
    assert c.attempts == 2
    assert t.disconnected
    fresh, _t2 = c.connect()
    fresh.dataReceived(OK)
    assert result(d).code == 200
