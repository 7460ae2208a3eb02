"""The WebSocket tunnel over the wire, deterministically: handshake, relay, backpressure, exits.

The gateway runs on a MemoryReactorClock; the client and the upstream are StringTransports. The
slot is a semaphore that counts its releases, so each exit test proves the slot was given back
exactly once, and that a later event (the other side's close arriving) gives nothing back again.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.web.http_headers import Headers

from aistack_tts._frames import FrameBoundary, close_frame
from aistack_tts._headers import wants_websocket, websocket_handshake
from aistack_tts._tunnel import WebSocketTunnel
from aistack_tts._tunnel_head import MAX_HEAD_BYTES, BadAnswer, parse_head, split_head
from aistack_tts._tunnel_sides import CLOSE_GRACE_S
from support.harness import Harness, Peer
from support.logs import LogCapture
from support.wire import dechunk, envelope, parse_response

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
TARGET = b"/v1/audio/speech/stream?voice=Vivian&x=%2F%20&empty="
HANDSHAKE = (
    b"GET " + TARGET + b" HTTP/1.1\r\n"
    b"Host: gateway.example:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade, X-Hop\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: tts, chat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Authorization: Bearer sk-1\r\n"
    b"X-Custom: one\r\n"
    b"X-Custom: two\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"Proxy-Authorization: Basic eDp5\r\n"
    b"X-Hop: dropped\r\n"
    b"X-Request-Id: ws-1\r\n"
    b"\r\n"
)
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols (as it is)\r\n"
    b"upgrade: websocket\r\n"
    b"CONNECTION: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: tts\r\n"
    b"Server: qwen3-tts\r\n"
    b"\r\n"
)
#: What the client gets: the upstream's 101 as it is, with the request's id added at the end.
SWITCHED = SWITCHING[:-2] + b"X-Request-Id: ws-1\r\n\r\n"
#: An unmasked server text frame and a masked client binary frame: bytes the gateway never reads.
SERVER_FRAME = b"\x81\x05hello"
CLIENT_FRAME = b"\x82\x84\x01\x02\x03\x04" + bytes([0x61 ^ 1, 0x62 ^ 2, 0x63 ^ 3, 0x64 ^ 4])


class CountingSemaphore(DeferredSemaphore):
    """A one-token slot that counts how often it was given back."""

    def __init__(self) -> None:
        super().__init__(1)
        self.releases = 0

    def release(self) -> None:
        self.releases += 1
        super().release()


def harness(**kwargs: Any) -> tuple[Harness, CountingSemaphore]:
    slot = CountingSemaphore()
    kwargs.setdefault("ws_idle_timeout", 30.0)
    kwargs.setdefault("idle_timeout", 10.0)
    return Harness(slot=slot, **kwargs), slot


def tunnel(h: Harness) -> WebSocketTunnel:
    [session] = [t for t in h.proxy.calls if isinstance(t, WebSocketTunnel)]
    return session


def opened(h: Harness, early: bytes = b"") -> tuple[Peer, Peer]:
    """A client whose handshake the upstream accepted; the connection is now a tunnel."""
    client = h.request(HANDSHAKE + early)
    up = h.upstream()
    up.send(SWITCHING)
    client.transport.clear()
    up.transport.clear()
    return client, up


def assert_released_once(h: Harness, slot: CountingSemaphore) -> None:
    assert slot.releases == 1
    assert h.tokens == 1
    assert h.proxy.in_flight == 0


def outcome(logs: LogCapture) -> tuple[Any, Any, Any]:
    [event] = logs.access()
    return event["status"], event["outcome"], event["slot"]


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({b"Upgrade": [b"websocket"], b"Connection": [b"Upgrade"]}, True),
        ({b"Upgrade": [b"WebSocket"], b"Connection": [b"keep-alive, upgrade"]}, True),
        ({b"Upgrade": [b"h2c, websocket"], b"Connection": [b"Upgrade"]}, True),
        ({b"Upgrade": [b"websocket"]}, False),
        ({b"Upgrade": [b"h2c"], b"Connection": [b"Upgrade"]}, False),
        ({b"Connection": [b"Upgrade"]}, False),
    ],
)
def test_wants_websocket(headers: dict[bytes, list[bytes]], expected: bool) -> None:
    """Only Upgrade: websocket that Connection names is an upgrade request (RFC 9110 7.8)."""
    assert wants_websocket(Headers(headers)) is expected


def test_handshake_keeps_the_websocket_headers_and_drops_hop_by_hop() -> None:
    """Upgrade, Connection: Upgrade and Sec-WebSocket-* go on; Host names the upstream."""
    headers = Headers()
    for name, value in [
        (b"Host", b"gateway.example"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade, Sec-WebSocket-Key, X-Hop"),
        (b"Sec-WebSocket-Key", KEY),
        (b"X-Hop", b"1"),
        (b"Content-Length", b"0"),
        (b"Expect", b"100-continue"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Accept", b"*/*"),
    ]:
        headers.addRawHeader(name, value)
    raw = websocket_handshake(b"GET", b"/v1/audio/a%2Fb?q=%20", b"10.0.0.7:8091", headers)
    assert raw == (
        b"GET /v1/audio/a%2Fb?q=%20 HTTP/1.1\r\n"
        b"Host: 10.0.0.7:8091\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-Websocket-Key: " + KEY + b"\r\n"
        b"Accept: */*\r\n"
        b"\r\n"
    )


def test_split_head_waits_for_the_blank_line_and_keeps_what_follows() -> None:
    assert split_head(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n") is None
    assert split_head(SWITCHING + b"frame") == (SWITCHING, b"frame")


def test_split_head_bounds_the_buffer() -> None:
    with pytest.raises(BadAnswer):
        split_head(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6))
    # A head that ends just past the limit is refused too.
    with pytest.raises(BadAnswer):
        split_head(b"x" * MAX_HEAD_BYTES + b"\r\n\r\n")


def test_parse_head() -> None:
    head = parse_head(SWITCHING)
    assert (head.status, head.reason, head.raw) == (
        101,
        b"Switching Protocols (as it is)",
        SWITCHING,
    )
    assert head.headers.getRawHeaders(b"sec-websocket-accept") == [b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
    assert parse_head(b"HTTP/1.1 404\r\n\r\n").reason == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 1010 Odd\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 101 OK\r\n folded: x\r\n\r\n",
    ],
)
def test_parse_head_refuses_what_is_not_http(raw: bytes) -> None:
    with pytest.raises(BadAnswer):
        parse_head(raw)


# --- the handshake --------------------------------------------------------------------------


def test_handshake_goes_upstream_with_websocket_headers_and_byte_exact_target() -> None:
    """The request line is byte-exact; hop-by-hop headers are dropped, except the upgrade's."""
    h, _slot = harness()
    h.request(HANDSHAKE)
    assert h.tokens == 0, "the slot is taken before the upgrade"
    up = h.upstream()
    head, _, rest = up.received().partition(b"\r\n\r\n")
    assert rest == b"", "a handshake carries no body"
    line, *lines = head.split(b"\r\n")
    assert line == b"GET " + TARGET + b" HTTP/1.1"
    headers = [tuple(part.strip() for part in h_.lower().split(b":", 1)) for h_ in lines]
    assert headers == [
        (b"host", b"127.0.0.1:8091"),
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"sec-websocket-key", KEY.lower()),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"tts, chat"),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
        (b"authorization", b"bearer sk-1"),
        (b"x-custom", b"one"),
        (b"x-custom", b"two"),
        (b"x-request-id", b"ws-1"),
    ]


def test_101_is_relayed_verbatim_then_bytes_flow_both_ways_unchanged() -> None:
    """The upstream's 101 reaches the client byte for byte (plus the request's X-Request-Id);
    then the connection is a tunnel."""
    h, slot = harness()
    client = h.request(HANDSHAKE + CLIENT_FRAME[:3])  # the client did not wait for the 101
    up = h.upstream()
    handshake = up.received()
    up.send(SWITCHING + SERVER_FRAME)
    assert client.received() == SWITCHED + SERVER_FRAME
    assert up.received() == handshake + CLIENT_FRAME[:3], "bytes sent early follow the handshake"
    client.send(CLIENT_FRAME[3:])
    assert up.received() == handshake + CLIENT_FRAME
    big = bytes(range(256)) * 4096  # 1 MiB, in one piece: relayed as it is, never parsed
    up.send(big)
    client.send(big)
    assert client.received() == SWITCHED + SERVER_FRAME + big
    assert up.received() == handshake + CLIENT_FRAME + big
    session = tunnel(h)
    assert session.state == "open"
    assert (session.bytes_out, session.bytes_in) == (
        len(SERVER_FRAME + big),
        len(CLIENT_FRAME + big),
    )
    assert (h.tokens, slot.releases) == (0, 0), "the slot is held for the session"


def test_each_side_is_the_push_producer_of_the_other() -> None:
    """A full send buffer on either side pauses reading on the other side's socket."""
    h, _slot = harness()
    client, up = opened(h)
    # The HTTP channel is no longer the client transport's producer: the tunnel's valve is.
    to_client = client.transport.producer
    to_upstream = up.transport.producer
    assert to_client is not None
    assert to_upstream is not None
    assert to_client is not client.protocol
    to_client.pauseProducing()  # the client reads slowly
    assert up.transport.producerState == "paused"
    assert client.transport.producerState == "producing"
    to_client.resumeProducing()
    assert up.transport.producerState == "producing"
    to_upstream.pauseProducing()  # the upstream reads slowly
    assert client.transport.producerState == "paused"
    assert up.transport.producerState == "producing"
    to_upstream.resumeProducing()
    assert client.transport.producerState == "producing"


# --- the ways out of an open session --------------------------------------------------------


def test_client_closing_closes_the_upstream_and_releases_the_slot_once() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client, up = opened(h)
        client.lose(ConnectionDone)
        assert up.closed, "the upstream connection is closed, so generation stops"
        assert not up.aborted, "politely: a close frame the client sent still goes out"
        assert_released_once(h, slot)
        up.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (101, "ws_closed_by_client", "held")
    assert not h.reactor.getDelayedCalls(), "the grace timer went with the connection"
    assert not logs.failures()


def test_upstream_closing_closes_the_client_and_releases_the_slot_once() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client, up = opened(h)
        up.send(b"\x88\x02\x03\xe8")  # the upstream's close frame, then its FIN
        up.lose(ConnectionDone)
        assert client.received() == b"\x88\x02\x03\xe8"
        assert client.closed
        assert not client.aborted
        assert_released_once(h, slot)
        client.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (101, "ws_closed_by_upstream", "held")
    assert not h.reactor.getDelayedCalls()
    assert not logs.failures()


def test_a_side_that_does_not_finish_closing_is_cut_after_the_grace_period() -> None:
    h, slot = harness()
    client, up = opened(h)
    up.lose(ConnectionDone)
    assert client.closed
    assert not client.aborted
    h.reactor.advance(CLOSE_GRACE_S)
    assert client.aborted
    assert_released_once(h, slot)


def unmask(frame: bytes) -> tuple[int, bytes]:
    """A masked frame with a short payload: its first byte and its payload."""
    assert frame[1] & 0x80, "a frame to a server is masked"
    mask, payload = frame[2:6], frame[6:]
    assert len(payload) == frame[1] & 0x7F
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_idle_session_between_frames_ends_with_a_close_frame_each_way() -> None:
    """Idle with every frame complete: 1001 "idle timeout" to both sides, then the close."""
    h, slot = harness(ws_idle_timeout=30.0)
    with LogCapture() as logs:
        client, up = opened(h)
        client.send(CLIENT_FRAME[:3])  # a frame arriving in pieces is not a boundary...
        client.send(CLIENT_FRAME[3:])  # ...until its last byte
        up.send(SERVER_FRAME + b"\x82\x00")  # and an empty frame after it
        client.transport.clear()
        up.transport.clear()
        h.reactor.advance(30)
        assert client.received() == b"\x88\x0e\x03\xe9idle timeout"
        assert unmask(up.received()) == (0x88, b"\x03\xe9idle timeout")
        assert (client.closed, up.closed) == (True, True)
        assert_released_once(h, slot)
        client.lose(ConnectionDone)
        up.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (101, "ws_idle", "held")


def test_idle_close_frame_only_where_the_stream_is_between_frames() -> None:
    """The client stalled inside a frame: the upstream gets no close frame, the client does."""
    h, slot = harness(ws_idle_timeout=30.0)
    client, up = opened(h)
    client.send(CLIENT_FRAME[:-1])
    up.send(SERVER_FRAME)
    client.transport.clear()
    up.transport.clear()
    h.reactor.advance(30)
    assert client.received() == b"\x88\x0e\x03\xe9idle timeout"
    assert up.received() == b""
    assert (client.closed, up.closed) == (True, True)
    assert_released_once(h, slot)


def test_idle_session_closes_both_sides() -> None:
    """Idle mid-frame both ways (peers stalled inside one): no close frame fits, the TCP close."""
    h, slot = harness(ws_idle_timeout=30.0)
    with LogCapture() as logs:
        client, up = opened(h)
        h.reactor.advance(20)
        client.send(b"x")  # traffic either way starts the count again
        h.reactor.advance(20)
        up.send(b"y")
        h.reactor.advance(29)
        assert (client.closed, up.closed) == (False, False)
        h.reactor.advance(1)
        assert (client.closed, up.closed) == (True, True)
        assert (client.received(), up.received()) == (b"y", b"x")  # nothing added
        assert_released_once(h, slot)
        client.lose(ConnectionDone)
        up.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (101, "ws_idle", "held")
    assert not h.reactor.getDelayedCalls()


def test_drain_waits_for_an_open_session_then_cuts_it() -> None:
    """Graceful drain counts tunnels as calls in flight and cuts them at the drain timeout."""
    h, slot = harness()
    with LogCapture() as logs:
        client, up = opened(h)
        drained = h.proxy.drain(10.0)
        fired: list[None] = []
        drained.addCallback(fired.append)
        h.reactor.advance(9)
        assert not fired
        assert not client.closed
        h.reactor.advance(1)
        assert (client.aborted, up.aborted) == (True, True)
        assert_released_once(h, slot)
        # The drain is over once the aborted client connection is gone.
        assert not fired
        client.lose()
        assert fired == [None]
    assert outcome(logs) == (101, "draining_cut", "held")


def test_drain_finishes_as_soon_as_the_session_ends() -> None:
    h, slot = harness()
    client, _up = opened(h)
    drained: Deferred[None] = h.proxy.drain(10.0)
    fired: list[None] = []
    drained.addCallback(fired.append)
    client.lose(ConnectionDone)
    assert fired == [None]
    assert_released_once(h, slot)


def test_client_closing_after_the_upgrade_ends_the_twisted_web_request() -> None:
    """twisted.web hears of the end (notifyFinish fires), as for any request."""
    h, _slot = harness()
    client, _up = opened(h)
    request = tunnel(h)._request
    finished: list[object] = []
    request.notifyFinish().addBoth(finished.append)
    client.lose(ConnectionLost)
    assert len(finished) == 1


# --- before the upgrade ---------------------------------------------------------------------


def test_busy_slot_answers_503_before_any_upgrade() -> None:
    h, _slot = harness()
    h.slot.acquire()  # the GPU is busy
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
    status, headers, _ = parse_response(client.received())
    assert status == 503
    assert headers[b"retry-after"] == [b"1"]
    assert b"retry-after-ms" in headers
    assert b"upgrade" not in headers
    assert envelope(client.received())["type"] == "gpu_busy"
    assert h.connection_attempts == 0
    assert outcome(logs) == (503, "gpu_busy", "busy")


def test_draining_answers_503_before_any_upgrade() -> None:
    h, _slot = harness()
    h.proxy.drain(1.0)
    client = h.request(HANDSHAKE)
    assert parse_response(client.received())[0] == 503
    assert envelope(client.received())["type"] == "draining"
    assert h.connection_attempts == 0


def test_unreachable_upstream_answers_503_upstream_unavailable() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        h.refuse()
    status, headers, _ = parse_response(client.received())
    error = envelope(client.received())
    assert (status, error["type"], error["provider"]) == (503, "upstream_unavailable", "qwen3-tts")
    assert "docker compose up -d" in error["message"]
    assert headers[b"retry-after"] == [b"5"]
    assert_released_once(h, slot)
    assert outcome(logs) == (503, "upstream_unavailable", "held")


def test_client_leaving_while_connecting_cancels_the_attempt() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        client.lose()
        assert_released_once(h, slot)
        h.reactor.advance(1)  # whatever the endpoint still had scheduled
    assert_released_once(h, slot)
    assert outcome(logs) == (None, "client_abort", "held")
    assert not logs.failures()


def test_client_leaving_during_the_handshake_closes_the_upstream() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        client.lose()
        assert up.aborted
        assert_released_once(h, slot)
        up.send(SWITCHING)  # too late: nothing happens
        up.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (None, "client_abort", "held")


def test_upstream_closing_before_answering_gives_502() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 101 Swi")
    up.lose(ConnectionDone)
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert error["message"].startswith("ResponseNeverReceived: ")
    assert_released_once(h, slot)


def test_no_answer_in_time_gives_504() -> None:
    h, slot = harness(idle_timeout=10.0)
    client = h.request(HANDSHAKE)
    up = h.upstream()
    h.reactor.advance(10)
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (504, "upstream_timeout")
    assert_released_once(h, slot)


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 101 OK\r\n" + b"X-Big: " + b"y" * MAX_HEAD_BYTES],
)
def test_a_broken_answer_gives_502(answer: bytes) -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(answer)
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert error["message"].startswith("BadAnswer: ")
    assert_released_once(h, slot)


def test_drain_timeout_while_waiting_for_the_answer_gives_the_envelope() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    h.proxy.drain(1.0)
    h.reactor.advance(1)
    assert up.aborted
    assert envelope(client.received())["type"] == "draining"
    assert_released_once(h, slot)


def test_an_interim_answer_is_skipped() -> None:
    h, _slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHING)
    assert client.received() == SWITCHED
    assert tunnel(h).state == "open"


def test_the_upstreams_own_request_id_on_a_101_is_kept() -> None:
    """A 101 that carries the upstream's own X-Request-Id goes to the client as it is."""
    h, _slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        own = SWITCHING[:-2] + b"x-request-id: up-9\r\n\r\n"
        up.send(own)
        assert client.received() == own
        client.lose(ConnectionDone)
    [event] = logs.access()
    assert (event["request_id"], event["gateway_request_id"]) == ("up-9", "ws-1")


# --- another answer than 101 ----------------------------------------------------------------


def test_a_refused_upgrade_is_relayed_verbatim_and_frees_the_slot() -> None:
    h, slot = harness()
    body = b'{"error": {"message": "Not Found", "type": "NotFoundError", "code": 404}}'
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(
            b"HTTP/1.1 404 Not Here\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nX-Upstream: yes\r\nConnection: keep-alive\r\n\r\n"
            % len(body)
            + body
        )
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 404 Not Here\r\n")
    status, headers, received = parse_response(raw)
    assert (status, received) == (404, body)
    assert headers[b"content-type"] == [b"application/json"]
    assert headers[b"content-length"] == [b"%d" % len(body)]
    assert headers[b"x-upstream"] == [b"yes"]
    assert b"upgrade" not in headers
    assert up.closed, "the refused connection is not reused"
    assert not client.closed, "the client's HTTP connection stays usable"
    assert_released_once(h, slot)
    assert outcome(logs) == (404, "ws_rejected", "held")
    [event] = logs.access()
    assert (event["provider"], event["bytes_out"]) == ("qwen3-tts", len(body))


def test_a_chunked_refusal_is_relayed_whole() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n")
    assert slot.releases == 0
    up.send(b"0\r\n\r\n")
    status, _headers, body = parse_response(client.received())
    assert (status, dechunk(body)) == (400, (b"nope", True))
    assert_released_once(h, slot)


def test_a_refusal_ended_by_closing_is_relayed_whole() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 403 Forbidden\r\n\r\nno ")
    up.send(b"way")
    up.lose(ConnectionDone)
    status, _headers, body = parse_response(client.received())
    assert (status, dechunk(body)) == (403, (b"no way", True))
    assert_released_once(h, slot)


def test_a_truncated_refusal_aborts_the_client() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nabc")
        up.lose(ConnectionLost)
    assert client.aborted
    assert_released_once(h, slot)
    assert outcome(logs) == (404, "upstream_error_mid_body", "held")


def test_client_leaving_during_a_refusal_closes_the_upstream() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nabc")
    client.lose()
    assert up.aborted
    assert_released_once(h, slot)


# --- what is not tunnelled ------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Upgrade that Connection does not name: plain HTTP, Upgrade dropped as hop-by-hop.
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\r\n",
        # HTTP/1.0 cannot upgrade.
        b"GET /v1/audio/voices HTTP/1.0\r\nHost: gw\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n",
    ],
)
def test_requests_that_cannot_upgrade_are_proxied_as_http(request_bytes: bytes) -> None:
    h, _slot = harness()
    h.request(request_bytes)
    up = h.upstream()
    sent = up.received().lower()
    assert b"upgrade" not in sent
    assert not any(isinstance(t, WebSocketTunnel) for t in h.proxy.calls)


def test_a_request_pipelined_behind_a_refused_upgrade_finds_the_slot_free() -> None:
    """The slot is released before the refusal ends, so the next request is not told 503."""
    h, slot = harness()
    client = h.request(HANDSHAKE + b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    h.upstream().send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert slot.releases == 1
    assert h.connection_attempts == 2, "the pipelined GET went upstream"
    assert b" 503 " not in client.received()


# --- frame boundaries -----------------------------------------------------------------------


def frame(payload_size: int, *, masked: bool, opcode: int = 0x2) -> bytes:
    """A frame header (with the smallest length encoding) and a payload of that size."""
    if payload_size < 126:
        length = bytes([payload_size | (0x80 if masked else 0)])
    elif payload_size < 1 << 16:
        length = bytes([126 | (0x80 if masked else 0)]) + payload_size.to_bytes(2, "big")
    else:
        length = bytes([127 | (0x80 if masked else 0)]) + payload_size.to_bytes(8, "big")
    return (
        bytes([0x80 | opcode])
        + length
        + (b"\x01\x02\x03\x04" if masked else b"")
        + (b"\xaa" * payload_size)
    )


@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536]) | st.integers(0, 300), max_size=6
    ),
    masked=st.booleans(),
    cuts=st.lists(st.integers(0, 200_000), max_size=8),
)
def test_frame_boundary_knows_where_every_frame_ends(
    sizes: list[int], masked: bool, cuts: list[int]
) -> None:
    """However the stream is cut into reads, it is at a boundary exactly at frame ends."""
    frames = [frame(size, masked=masked) for size in sizes]
    stream = b"".join(frames)
    ends = {0}
    for f in frames:
        ends.add(max(ends) + len(f))
    points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    boundary = FrameBoundary()
    for start, stop in pairwise(points):
        boundary.feed(stream[start:stop])
        assert boundary.at_boundary is (stop in ends), (start, stop)
    assert boundary.at_boundary


def test_frame_boundary_on_single_bytes() -> None:
    """A header split anywhere (even inside a 64-bit length) is followed."""
    stream = frame(70000, masked=True) + frame(0, masked=False) + frame(126, masked=False)
    ends = {len(frame(70000, masked=True))}
    ends.add(max(ends) + 2)
    boundary = FrameBoundary()
    for i in range(len(stream) - 200):  # byte by byte through the first two frames
        boundary.feed(stream[i : i + 1])
        assert boundary.at_boundary is (i + 1 in ends)
    boundary.feed(stream[len(stream) - 200 :])
    assert boundary.at_boundary


def test_close_frames() -> None:
    """Unmasked to a client, masked (with a fresh key) to a server, same payload."""
    assert close_frame(1001, b"idle timeout", masked=False) == b"\x88\x0e\x03\xe9idle timeout"
    first, second = (close_frame(1001, b"bye", masked=True) for _ in range(2))
    assert unmask(first) == unmask(second) == (0x88, b"\x03\xe9bye")
    assert first != second
