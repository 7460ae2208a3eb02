"""The WebSocket tunnel over the wire, deterministically: the handshake, the open tunnel and its
ways out (either side closing, the idle close frame, the drain).

The gateway runs on a MemoryReactorClock; the client and the upstream are StringTransports. The
slot is a semaphore that counts its releases, so each exit test proves the slot was given back
exactly once, and that a later event (the other side's close arriving) gives nothing back again.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost

from aistack_tts.tunnel._sides import CLOSE_GRACE_S
from support.logs import LogCapture
from support.tunnel import (
    CLIENT_FRAME,
    HANDSHAKE,
    KEY,
    SERVER_FRAME,
    SWITCHED,
    SWITCHING,
    TARGET,
    assert_released_once,
    harness,
    opened,
    outcome,
    tunnel,
    unmask,
)

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
