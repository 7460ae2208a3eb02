"""The lean upstream client on the wire: its pool, its requests, its responses' endings.

``LeanAgent`` alone, over MemoryReactorClock and StringTransport: each upstream connection
attempt is completed by hand, the test writes the upstream's bytes and reads what was sent.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from aistack_tts._config import DEFAULT_POOL_IDLE_TIMEOUT as POOL_IDLE_SECONDS
from aistack_tts.client._head import UpstreamProtocolError
from aistack_tts.client._request import SpooledBody
from support.lean_client import OK, Client, body_of, deliver_ok, result


def test_target_host_and_small_body_go_in_one_send() -> None:
    """The target exactly as given, Host naming the upstream, head and body in one write."""
    c = Client()
    content = io.BytesIO(b'{"input": "hi"}')
    c.request(
        b"POST",
        b"http://127.0.0.1:8091/v1/audio/x;p=/y;?",
        headers=Headers({b"X-A": [b"1", b"2"]}),
        bodyProducer=SpooledBody(content, 15, Cooperator()),
    )
    _p, t = c.connect()
    [sent] = t.writes
    assert sent == (
        b"POST /v1/audio/x;p=/y;? HTTP/1.1\r\nHost: 127.0.0.1:8091\r\nX-A: 1\r\nX-A: 2\r\n"
        b'Content-Length: 15\r\n\r\n{"input": "hi"}'
    )


def test_a_large_body_streams_with_its_length() -> None:
    c = Client()
    payload = b"x" * 200_000
    cooperator = Cooperator(scheduler=lambda work: c.reactor.callLater(0, work))
    c.request(b"POST", bodyProducer=SpooledBody(io.BytesIO(payload), len(payload), cooperator))
    _p, t = c.connect()
    for _ in range(20):
        c.reactor.advance(0)
    head, _, sent = t.value().partition(b"\r\n\r\n")
    assert b"Content-Length: 200000" in head
    assert sent == payload
    assert t.producer is None, "the body producer is unregistered when done"


def test_unknown_length_body_is_chunked() -> None:
    class Once:
        length = UNKNOWN_LENGTH

        def startProducing(self, consumer: Any) -> Deferred[None]:
            consumer.write(b"abc")
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d

        def stopProducing(self) -> None:
            pass

    c = Client()
    c.request(b"POST", bodyProducer=Once())
    _p, t = c.connect()
    assert t.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


def test_a_response_that_ends_before_the_request_body_stops_the_upload_and_closes() -> None:
    """An early answer (a 413 mid-upload): the producer is stopped, the connection not pooled."""

    class Endless:
        length = 10
        stopped = False

        def startProducing(self, consumer: Any) -> Deferred[None]:
            consumer.write(b"abc")
            return Deferred()

        def stopProducing(self) -> None:
            self.stopped = True

    producer = Endless()
    c = Client()
    d = c.request(b"POST", bodyProducer=producer)
    p, t = c.connect()
    p.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    body = body_of(result(d))
    assert body.reason is not None
    assert body.reason.check(ResponseDone)
    assert producer.stopped
    assert t.disconnecting
    assert t.producer is None
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0


def test_response_head_length_and_connection_named_headers() -> None:
    """Content-Length moves into ``length``; Connection and the headers it names are dropped."""
    c = Client()
    d = c.request()
    p, _t = c.connect()
    p.dataReceived(
        b"HTTP/1.1 201 Made\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Keep: 2\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    response = result(d)
    assert (response.code, response.phrase, response.length) == (201, b"Made", 2)
    assert response.headers.getRawHeaders(b"x-keep") == [b"2"]
    for gone in (b"x-hop", b"connection", b"content-length"):
        assert not response.headers.hasHeader(gone)
    body = body_of(response)
    assert body.data == b"ok"
    assert body.reason is not None
    assert body.reason.check(ResponseDone)


def test_a_header_repeated_in_another_case_keeps_every_value_in_order() -> None:
    """``Set-Cookie`` then ``set-cookie``: one header, both values, as the upstream sent them."""
    c = Client()
    d = c.request()
    p, _t = c.connect()
    p.dataReceived(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Other: o\r\nset-cookie: b=2\r\n"
        b"SET-COOKIE: c=3\r\nContent-Length: 0\r\n\r\n"
    )
    response = result(d)
    assert response.headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2", b"c=3"]
    assert response.headers.getRawHeaders(b"x-other") == [b"o"]


@pytest.mark.parametrize(("status_line", "version"), [(b"HTTP/1.1", 1), (b"HTTP/1.0", 0)])
def test_the_response_version_is_the_upstreams(status_line: bytes, version: int) -> None:
    c = Client()
    d = c.request()
    p, _t = c.connect()
    p.dataReceived(status_line + b" 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert result(d).version == (b"HTTP", 1, version)


def test_reuse_after_complete_framing_one_request_at_a_time() -> None:
    """A second request waits for no one: it gets the pooled connection once the first ended."""
    c = Client()
    first = c.request()
    p, t = c.connect()
    second = c.request()
    assert c.attempts == 2, "the busy connection is not shared"
    p.dataReceived(OK)
    body_of(result(first))
    c.request()
    assert c.attempts == 2, "the idle connection was reused"
    assert t.value().count(b"GET /v1/audio/speech") == 2
    assert not result_fired(second)


def result_fired(d: Deferred[Any]) -> bool:
    return bool(d.called)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        OK + b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\nstray",
    ],
    ids=["connection_close", "http_1_0", "trailing_bytes", "body_on_a_204"],
)
def test_not_reused(response: bytes) -> None:
    c = Client()
    d = c.request()
    p, t = c.connect()
    p.dataReceived(response)
    body_of(result(d))
    assert t.disconnecting
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0
    c.request()
    assert c.attempts == 2


def test_close_delimited_body_ends_only_on_a_clean_close_and_is_not_pooled() -> None:
    c = Client()
    d = c.request()
    p, _t = c.connect()
    p.dataReceived(b"HTTP/1.1 200 OK\r\n\r\npart")
    body = body_of(result(d))
    assert body.reason is None
    p.connectionLost(Failure(ConnectionDone()))
    assert body.reason is not None
    assert body.reason.check(PotentialDataLoss)
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0


def test_close_delimited_body_cut_by_a_reset_fails() -> None:
    c = Client()
    d = c.request()
    p, _t = c.connect()
    p.dataReceived(b"HTTP/1.1 200 OK\r\n\r\npart")
    body = body_of(result(d))
    p.connectionLost(Failure(ConnectionLost()))
    assert body.reason is not None
    assert body.reason.check(ResponseFailed)


def test_invalid_chunk_mid_body_fails_the_body_and_aborts() -> None:
    c = Client()
    d = c.request()
    p, t = c.connect()
    p.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0x2\r\n")
    body = body_of(result(d))
    assert body.data == b"ok"
    assert body.reason is not None
    assert body.reason.check(ResponseFailed)
    [inner] = body.reason.value.reasons  # type: ignore[union-attr]
    assert inner.check(UpstreamProtocolError)
    assert t.disconnected


def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    c = Client()
    p, t = deliver_ok(c)
    p.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert t.disconnected
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0
    c.request()
    assert c.attempts == 2


def test_a_fin_on_an_idle_connection_drops_it() -> None:
    c = Client()
    p, _t = deliver_ok(c)
    p.connectionLost(Failure(ConnectionDone()))
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0


def test_idle_timeout_closes_under_uvicorns_keep_alive() -> None:
    c = Client()
    _p, t = deliver_ok(c)
    assert POOL_IDLE_SECONDS < 5
    c.reactor.advance(POOL_IDLE_SECONDS - 0.1)
    assert not t.disconnecting
    c.reactor.advance(0.1)
    assert t.disconnecting
    assert c.pool.idle(b"http://127.0.0.1:8091") == 0


def test_idle_timeout_counts_from_the_last_use() -> None:
    c = Client()
    p, t = deliver_ok(c)
    c.reactor.advance(3)
    d = c.request()
    p.dataReceived(OK)
    body_of(result(d))
    c.reactor.advance(3)
    assert not t.disconnecting, "used 3 s ago: kept"
    c.reactor.advance(1)
    assert t.disconnecting


def test_stale_connection_is_retried_on_a_fresh_one() -> None:
    """Closed before any response byte on a reused connection: GET again on a fresh one."""
    c = Client()
    p, _t = deliver_ok(c)
    d = c.request()
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 2
    fresh, t2 = c.connect()
    assert t2.value().startswith(b"GET /v1/audio/speech")
    fresh.dataReceived(OK)
    assert result(d).code == 200


def test_stale_connection_is_not_retried_for_a_body_that_cannot_be_sent_again() -> None:
    """An embedder's own producer may not start over: its request fails as it failed."""

    class Once:
        length = 2

        def startProducing(self, consumer: Any) -> Deferred[None]:
            consumer.write(b"{}")
            return Deferred()

        def stopProducing(self) -> None:
            pass

    c = Client()
    p, _t = deliver_ok(c)
    d = c.request(b"POST", bodyProducer=Once())
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 1
    assert result(d).check(ResponseNeverReceived)


def test_no_retry_once_a_response_byte_was_seen() -> None:
    c = Client()
    p, _t = deliver_ok(c)
    d = c.request()
    p.dataReceived(b"HTTP/1.1 2")
    p.connectionLost(Failure(ConnectionDone()))
    assert c.attempts == 1
    failure = result(d)
    assert failure.check(ResponseFailed)
    assert not failure.check(ResponseNeverReceived)


def test_cancel_aborts_the_connection() -> None:
    c = Client()
    d = c.request()
    _p, t = c.connect()
    d.cancel()
    assert t.disconnected
    assert result(d).check(CancelledError)


def test_cancel_while_connecting_stops_the_attempt() -> None:
    c = Client()
    d = c.request()
    connector = c.reactor.connectors[0]
    d.cancel()
    assert result(d).check(CancelledError)
    assert connector.stoppedConnecting


def test_pause_resume_stop_reach_the_transport_only_while_the_body_lasts() -> None:
    c = Client()
    d = c.request()
    p, t = c.connect()
    p.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    response = result(d)
    body = body_of(response)
    body.transport.pauseProducing()
    assert t.producerState == "paused"
    body.transport.resumeProducing()
    assert t.producerState == "producing"
    body.transport.pauseProducing()
    p.dataReceived(b"cd")
    assert t.producerState == "producing", "a pooled connection is not left paused"
    body.transport.stopProducing()
    assert t.producerState == "producing", "stopping after the end does nothing"
    assert c.pool.idle(b"http://127.0.0.1:8091") == 1


def test_max_idle_per_upstream_closes_the_oldest() -> None:
    c = Client(max_idle=1)
    first, second = c.request(), c.request()
    (p1, t1), (p2, t2) = c.connect(), c.connect()
    p1.dataReceived(OK)
    p2.dataReceived(OK)
    body_of(result(first))
    body_of(result(second))
    assert t1.disconnecting
    assert not t2.disconnecting


def test_close_closes_idle_connections_and_later_ones_when_they_end() -> None:
    c = Client()
    done, busy = c.request(), c.request()
    (idle_p, idle_t), (busy_p, busy_t) = c.connect(), c.connect()
    idle_p.dataReceived(OK)
    body_of(result(done))
    closed = c.pool.close()
    assert idle_t.disconnecting
    assert not busy_t.disconnecting
    assert not closed.called
    idle_p.connectionLost(Failure(ConnectionDone()))
    assert closed.called
    busy_p.dataReceived(OK)
    body_of(result(busy))
    assert busy_t.disconnecting
