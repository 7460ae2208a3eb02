"""Client deadlines and request-body work bounds, in memory (the Harness: a fake clock).

Twisted's one channel timer restarts on every byte, so a client dribbling its head or body
held a connection for ever. The gateway's channel keeps a deadline per phase: the head whole
within ``client_timeout`` of its first byte, a body that neither stalls for ``client_timeout``
nor falls under ``MIN_BODY_RATE``, an idle keep-alive connection closed after
``keepalive_timeout``; a request being served has none.
"""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport

from aistack_tts.server._channel import LINGER_SECONDS, MIN_BODY_RATE, GatewayChannel, Phase
from aistack_tts.server._site import CHUNKS_BEFORE_CHECK
from support.harness import Harness, Peer
from support.logs import LogCapture
from support.wire import parse_response

S = 10.0
KEEPALIVE = 30.0
GET = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def harness(**kwargs: float) -> Harness:
    return Harness(client_timeout=S, keepalive_timeout=KEEPALIVE, **kwargs)


def timed_out(client: Peer) -> dict[str, str]:
    """The 408 envelope the client got (and the connection closing)."""
    status, headers, body = parse_response(client.received())
    assert status == 408
    assert headers[b"connection"] == [b"close"]
    assert len(headers[b"date"]) == 1
    error: dict[str, str] = json.loads(body)["error"]
    assert (error["type"], error["provider"]) == ("request_timeout", "aistack")
    assert client.closed
    return error


def test_a_head_dribbled_byte_by_byte_is_cut_at_its_deadline() -> None:
    """One header byte every S/2 restarted Twisted's timer for ever; the head's deadline is S
    after its first byte, whatever comes after."""
    h = harness()
    client = h.client()
    with LogCapture() as logs:
        client.send(b"GET /v1/audio/voices HTTP/1.1\r\n")
        for byte in b"Host: gw\r\nX-Slow: " + b"a" * 100:
            client.send(bytes([byte]))
            h.reactor.advance(S / 2)
            if client.received():
                break
    error = timed_out(client)
    assert "request head" in error["message"]
    assert h.connection_attempts == 0
    [event] = logs.access()
    assert (event["status"], event["outcome"], event["method"]) == (408, "request_timeout", "GET")


def test_a_whole_head_just_before_its_deadline_is_served() -> None:
    h = harness()
    client = h.client()
    client.send(GET[:10])
    h.reactor.advance(S - 0.1)
    client.send(GET[10:])
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200


def test_a_connection_that_sends_nothing_is_closed_quietly() -> None:
    """No byte at all within ``client_timeout``: closed without an answer (nothing began)."""
    h = harness()
    client = h.client()
    h.reactor.advance(S - 0.1)
    assert not client.closed
    h.reactor.advance(0.1)
    assert client.closed
    assert client.received() == b""


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    h = harness()
    client = h.request(GET)
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200
    h.reactor.advance(KEEPALIVE - 0.1)
    assert not client.closed, "the keep-alive deadline, not the client timeout, applies"
    h.reactor.advance(0.1)
    assert client.closed


def test_a_stalled_body_is_cut_with_408() -> None:
    h = harness()
    client = h.request(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    h.reactor.advance(S - 0.1)
    assert client.received() == b""
    h.reactor.advance(0.1)
    assert "request body" in timed_out(client)["message"]
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_a_body_dribbled_under_the_minimum_rate_is_cut() -> None:
    """One byte every S/2 never stalls, but its mean rate is far under ``MIN_BODY_RATE``: cut
    once the grace (S, plus what the bytes bought) is over."""
    h = harness()
    client = h.request(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n"
    )
    sent = 0
    while not client.received():
        client.send(b"x")
        sent += 1
        h.reactor.advance(S / 2)
        assert sent < 10, "never cut"
    timed_out(client)
    assert sent * S / 2 <= S + sent / MIN_BODY_RATE + S / 2


def test_a_steady_body_with_pauses_under_the_timeout_is_served() -> None:
    """100 KB in 10 KB pieces a second apart: well over the minimum rate, never stalled."""
    h = harness()
    client = h.request(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n"
    )
    for _ in range(10):
        h.reactor.advance(S * 0.9)
        client.send(b"x" * 10_000)
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200


def test_a_request_being_served_has_no_client_deadline() -> None:
    """An upstream thinking for 5 x ``client_timeout`` is ``--idle-timeout``'s business."""
    h = harness(idle_timeout=1000.0)
    client = h.request(GET)
    h.upstream()
    assert client.protocol.phase is Phase.SERVING  # type: ignore[attr-defined]
    h.reactor.advance(5 * S)
    assert not client.closed
    h.upstream().send(OK)
    assert parse_response(client.received())[0] == 200


def test_pipelined_requests_are_both_served() -> None:
    """A second head that arrives with the first replays through the parser, not
    ``dataReceived``: it is still timed and served."""
    h = harness()
    client = h.request(GET + GET)
    h.upstream().send(OK)
    h.reactor.advance(0)
    h.upstream().send(OK)
    assert client.received().count(b"HTTP/1.1 200 OK") == 2
    assert client.protocol.phase is Phase.IDLE  # type: ignore[attr-defined]


def test_a_connection_closing_after_its_answer_is_cut_if_the_client_never_reads() -> None:
    """``Connection: close``: the channel closes after the answer is flushed; a client that
    never reads it may not hold the connection past ``client_timeout``."""
    h = harness()
    client = h.request(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    h.upstream().send(OK)
    assert client.closed
    h.reactor.advance(S)
    assert client.aborted


# Bounded work per request body.


def chunked(pieces: bytes) -> bytes:
    return (
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + pieces
    )


def test_a_flood_of_one_byte_chunks_is_refused_and_no_longer_parsed() -> None:
    """10**6 one-byte chunks held the reactor for seconds; after ``CHUNKS_BEFORE_CHECK``
    pieces under the mean size the body is refused, and what follows is dropped unparsed."""
    h = harness()
    with LogCapture() as logs:
        client = h.request(chunked(b""))
        request = client.protocol.requests[-1]  # type: ignore[attr-defined]
        calls: list[bytes] = []
        decoder = client.protocol._transferDecoder  # type: ignore[attr-defined]
        handle = decoder.dataCallback

        def counted(data: bytes) -> None:
            calls.append(data)
            handle(data)

        decoder.dataCallback = counted
        # All in one read: what follows the refusal in it is not walked chunk by chunk.
        client.send(b"1\r\nx\r\n" * (CHUNKS_BEFORE_CHECK + 5000))
        assert len(calls) == CHUNKS_BEFORE_CHECK + 1
        status, _headers, body = parse_response(client.received())
        assert status == 400
        assert "chunked request body" in json.loads(body)["error"]["message"]
        assert client.closed
        stored = request.content.tell()
        client.send(b"1\r\nx\r\n" * 10_000 + b"0\r\n\r\n")
        assert request.content.tell() == stored
    assert h.connection_attempts == 0
    assert [e["outcome"] for e in logs.access()] == ["invalid_request"]
    h.reactor.advance(LINGER_SECONDS)
    assert client.aborted


def test_many_ordinary_chunks_are_forwarded() -> None:
    h = harness()
    client = h.request(chunked(b""))
    pieces = (b"400\r\n" + b"x" * 1024 + b"\r\n") * (CHUNKS_BEFORE_CHECK + 100) + b"0\r\n\r\n"
    client.send(pieces)
    up = h.upstream()
    assert b"Content-Length: %d" % ((CHUNKS_BEFORE_CHECK + 100) * 1024) in up.received()


# Early answers carry Date; metrics are never cached.


def test_the_413_answer_has_date_and_closes() -> None:
    h = Harness(max_body=10)
    client = h.request(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n")
    status, headers, _body = parse_response(client.received())
    assert status == 413
    assert len(headers[b"date"]) == 1
    assert headers[b"connection"] == [b"close"]


def test_metrics_are_not_cached() -> None:
    h = Harness()
    client = h.request(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
    status, headers, _body = parse_response(client.received())
    assert status == 200
    assert headers[b"cache-control"] == [b"no-store"]


def test_connections_over_max_connections_are_closed_at_once() -> None:
    """Once ``max_connections`` are open, a new connection is closed as soon as it is made
    (nothing read, not counted); a place frees as soon as one closes; one warning per
    interval, with a count."""
    h = Harness(max_connections=2)
    first, _second = h.client(), h.client()
    with LogCapture() as logs:
        for _ in range(2):
            refused = h.site.buildProtocol(None)
            transport = StringTransport()
            refused.makeConnection(transport)
            assert transport.disconnecting
            refused.dataReceived(GET)
            assert transport.value() == b""
        assert h.site.connections.count == 2
        first.lose()
        assert isinstance(h.site.buildProtocol(None), GatewayChannel)
    [warning] = [e for e in logs.events if e.get("log_namespace") == "aistack_tts.resources"]
    assert "2 client connections are open" in warning["detail"]


def test_max_connections_defaults_to_what_the_descriptor_limit_allows() -> None:
    from aistack_tts.wire._descriptors import default_max_connections

    assert Harness().site.max_connections == default_max_connections()
    assert [default_max_connections(n) for n in (64, 256, 1024, -1)] == [24, 96, 480, 524256]
