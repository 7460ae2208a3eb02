"""Graceful drain, deterministically: refuse new calls, finish or cut the ones under way."""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.error import ConnectionDone
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from aistack_tts.server._drain import ABORT_GRACE
from support.deferreds import has_result
from support.harness import Harness
from support.logs import LogCapture
from support.wire import dechunk, envelope, parse_response

GET = b"GET /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_drain_with_nothing_in_flight_is_immediate() -> None:
    """No call under way: the drain is done at once; later requests get 503 draining."""
    h = Harness()
    assert has_result(h.proxy.drain(30))
    client = h.request(GET)
    assert parse_response(client.received())[0] == 503
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("draining", "aistack")
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_drain_lets_a_stream_finish() -> None:
    """A stream under way finishes whole; the drain completes once its connection is closed."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    drained = h.proxy.drain(30)
    assert not has_result(drained)
    assert h.proxy.in_flight == 1
    # Meanwhile a keep-alive client's next request is refused, not queued.
    late = h.request(GET)
    assert envelope(late.received())["type"] == "draining"
    up.send(b"3\r\ndef\r\n0\r\n\r\n")
    assert dechunk(parse_response(client.received())[2]) == (b"abcdef", True)
    assert h.tokens == 1
    # Both connections are closed after their response, which may still be unsent.
    assert client.closed
    assert late.closed
    assert not has_result(drained)
    client.lose(ConnectionDone)
    late.lose(ConnectionDone)
    assert has_result(drained)
    # The drain deadline was disarmed.
    assert [c for c in h.reactor.getDelayedCalls() if "cut" in repr(c)] == []


def test_drain_timeout_cuts_a_stream_short() -> None:
    """Past the drain timeout a stream is cut: client aborted, upstream closed, slot free."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    with LogCapture() as logs:
        drained = h.proxy.drain(5)
        h.reactor.advance(4.9)
        assert not has_result(drained)
        h.reactor.advance(0.1)
    assert client.aborted
    client.lose()
    assert has_result(drained)
    assert up.aborted
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["draining_cut"]
    assert not logs.failures()


def test_drain_timeout_answers_a_waiting_client_with_an_envelope() -> None:
    """A client still waiting for headers at the drain timeout gets 503 draining."""
    h = Harness(idle_timeout=600)
    client = h.request(GET)
    up = h.upstream()
    drained = h.proxy.drain(5)
    h.reactor.advance(5)
    assert envelope(client.received())["type"] == "draining"
    client.lose()
    assert has_result(drained)
    assert up.aborted
    assert h.tokens == 1


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
LENGTH_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"


def test_registry_tracks_connections_until_they_are_lost() -> None:
    """The site's registry counts each client connection until it is lost, and says when
    none is left."""
    h = Harness()
    first, second = h.client(), h.client()
    registry = h.proxy.connections
    assert registry.count == 2
    empty = registry.when_empty()
    first.lose(ConnectionDone)
    assert registry.count == 1
    assert not has_result(empty)
    second.lose()
    assert registry.count == 0
    assert has_result(empty)
    assert has_result(registry.when_empty())


def test_registry_closes_idle_and_aborts_all() -> None:
    """Only a connection with no request under way is idle; abort_all cuts every one."""
    h = Harness()
    idle = h.request(HEALTHZ)
    assert parse_response(idle.received())[0] == 200
    arriving = h.request(b"GET /healthz HTTP/1.1\r\n")
    busy = h.request(GET)
    registry = h.proxy.connections
    channels = [cast(HTTPChannel, p.protocol) for p in (idle, arriving, busy)]
    assert [registry.is_idle(c) for c in channels] == [True, False, False]
    assert registry.close_idle() == 1
    assert (idle.closed, arriving.closed, busy.closed) == (True, False, False)
    assert registry.abort_all() == 3
    assert (idle.aborted, arriving.aborted, busy.aborted) == (True, True, True)


def test_drain_ends_keep_alive() -> None:
    """The drain closes an idle keep-alive connection at once; a response begun during the
    drain says Connection: close, and each connection closes after its response."""
    h = Harness(slots=2, slot=DeferredSemaphore(2))
    idle = h.request(HEALTHZ)
    streaming = h.request(GET)
    h.upstream(0).send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    waiting = h.request(GET)
    arriving = h.request(b"GET /healthz HTTP/1.1\r\n")
    h.proxy.drain(30)
    assert idle.closed
    assert (streaming.closed, waiting.closed, arriving.closed) == (False, False, False)
    h.upstream(1).send(LENGTH_HEAD + b"xyz")
    status, headers, body = parse_response(waiting.received())
    assert (status, headers.get(b"connection"), body) == (200, [b"close"], b"xyz")
    assert waiting.closed
    arriving.send(b"Host: gw\r\n\r\n")
    status, headers, _ = parse_response(arriving.received())
    assert (status, headers.get(b"connection")) == (200, [b"close"])
    assert arriving.closed
    # Its headers went out before the drain: no Connection header, but closed after.
    h.upstream(0).send(b"0\r\n\r\n")
    assert dechunk(parse_response(streaming.received())[2]) == (b"abc", True)
    assert streaming.closed


def test_drain_waits_for_connections_then_aborts_them_at_the_deadline() -> None:
    """A finished call's connection that has not closed (a slow reader) holds the drain up to
    its timeout; then it is aborted, and the drain ends once it is gone."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(LENGTH_HEAD + b"xyz")
    assert not client.closed
    drained = h.proxy.drain(5)
    # Idle now: closed once what it has to send is sent, which a slow reader delays.
    assert client.closed
    h.reactor.advance(4.9)
    assert not has_result(drained)
    assert not client.aborted
    with LogCapture() as logs:
        h.reactor.advance(0.1)
    assert client.aborted
    assert not has_result(drained)
    client.lose()
    assert has_result(drained)
    assert not logs.failures()
    assert [c for c in h.reactor.getDelayedCalls() if c.active()] == []


def test_drain_gives_up_on_a_connection_that_never_reports_its_loss() -> None:
    """An aborted connection that never reports its loss ends the drain ABORT_GRACE later."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    drained = h.proxy.drain(5)
    h.reactor.advance(5)
    assert client.aborted
    h.reactor.advance(ABORT_GRACE - 0.01)
    assert not has_result(drained)
    h.reactor.advance(0.01)
    assert has_result(drained)


def test_cut_now_ends_the_drain_at_once() -> None:
    """cut_now (a second signal) cuts the calls and aborts the connections without waiting
    for the drain timeout; the slot is free."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    drained = h.proxy.drain(30)
    with LogCapture() as logs:
        assert h.proxy.cut_now() == 1
        h.reactor.advance(0)
    assert client.aborted
    assert up.aborted
    assert h.tokens == 1
    client.lose()
    assert has_result(drained)
    assert [e["outcome"] for e in logs.access()] == ["draining_cut"]
    assert h.proxy.cut_now() == 0
    assert [c for c in h.reactor.getDelayedCalls() if c.active()] == []


def test_cut_now_before_the_drain_began_starts_and_cuts_it() -> None:
    """A cut that comes before the drain began still refuses new calls and cuts the rest;
    the drain begun afterwards is the same, already over."""
    h = Harness()
    client = h.request(GET)
    h.upstream()
    assert h.proxy.cut_now() == 1
    h.reactor.advance(0)
    assert envelope(client.received())["type"] == "draining"
    client.lose()
    assert has_result(h.proxy.drain(30))


def test_drain_in_an_embedder_site_waits_only_for_the_calls() -> None:
    """Mounted in someone else's Site there is no registry: the drain ends with the calls."""
    h = Harness()
    h.site = Site(h.proxy.resource())  # type: ignore[assignment]
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    drained = h.proxy.drain(30)
    up.send(b"0\r\n\r\n")
    assert dechunk(parse_response(client.received())[2]) == (b"abc", True)
    assert has_result(drained)
    assert h.proxy.connections.count == 0
