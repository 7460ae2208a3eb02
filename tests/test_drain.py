"""Graceful drain, deterministically: refuse new calls, finish or cut the ones under way."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from support import Harness, LogCapture, dechunk, envelope, parse_response

GET = b"GET /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def fired(d: Deferred[None]) -> bool:
    result: list[object] = []
    d.addBoth(result.append)
    return bool(result)


def test_drain_with_nothing_in_flight_is_immediate() -> None:
    """No call under way: the drain is done at once; later requests get 503 draining."""
    h = Harness()
    assert fired(h.proxy.drain(30))
    client = h.request(GET)
    assert parse_response(client.received())[0] == 503
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("draining", "aistack")
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_drain_lets_a_stream_finish() -> None:
    """A stream under way finishes whole; the drain completes when it does."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"3\r\nabc\r\n")
    drained = h.proxy.drain(30)
    assert not fired(drained)
    assert h.proxy.in_flight == 1
    # Meanwhile a keep-alive client's next request is refused, not queued.
    late = h.request(GET)
    assert envelope(late.received())["type"] == "draining"
    up.send(b"3\r\ndef\r\n0\r\n\r\n")
    assert dechunk(parse_response(client.received())[2]) == (b"abcdef", True)
    assert fired(drained)
    assert h.tokens == 1
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
        assert not fired(drained)
        h.reactor.advance(0.1)
    assert fired(drained)
    assert client.aborted
    assert up.transport.producerState == "stopped"
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
    assert fired(drained)
    assert envelope(client.received())["type"] == "draining"
    assert up.aborted
    assert h.tokens == 1
