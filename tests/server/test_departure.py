"""Issue 23: a client that leaves while the gateway is not reading it, and one reading slowly.

In memory: the socket's state is what ``aistack_tts.wire._socket_state.peer_gone`` says, replaced
here by a set of transports that are "gone"; unsent bytes are a number the test lowers.
Rules: while a client's reading is paused, its departure is noticed within one look
(``PEER_POLL_S``) and its connection cut, so the call ends and the slot is free; the stall
watchdog blames a client only when no byte of what it was sent reached it for the timeout.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock

from aistack_tts.call._watchdog import CLIENT_SAMPLE_S, Watchdog
from aistack_tts.wire import _socket_state
from aistack_tts.wire._socket_state import PEER_POLL_S, PeerWatch, unsent
from support.harness import Harness
from support.tunnel import SERVER_FRAME, harness, opened

POST = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b'Content-Length: 15\r\n\r\n{"input": "hi"}'
)

PIPELINED = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 15_000 + b"\r\n\r\n"
PIPELINED *= 2


def aborted(transport: Any) -> bool:
    return bool(getattr(transport, "disconnected", False))


@pytest.fixture
def gone(monkeypatch: pytest.MonkeyPatch) -> set[Any]:
    """Transports whose peer has left (as their socket's TCP state would say)."""
    left: set[Any] = set()
    monkeypatch.setattr(_socket_state, "peer_gone", lambda transport: transport in left)
    return left


# --- the watch itself -----------------------------------------------------------------------


def test_a_watch_looks_until_the_peer_is_gone_then_tells_once(gone: set[Any]) -> None:
    clock = Clock()
    told: list[str] = []
    transport = object()
    watch = PeerWatch(clock, transport, lambda: told.append("gone"))
    watch.start()
    clock.advance(PEER_POLL_S * 5)
    assert told == []
    assert watch.watching
    gone.add(transport)
    clock.advance(PEER_POLL_S)
    assert told == ["gone"]
    assert not clock.getDelayedCalls()
    watch.start()
    clock.advance(PEER_POLL_S)
    assert told == ["gone"], "once"


def test_a_stopped_watch_leaves_no_timer(gone: set[Any]) -> None:
    clock = Clock()
    watch = PeerWatch(clock, object(), lambda: None)
    watch.start()
    watch.stop()
    assert not clock.getDelayedCalls()


def test_unsent_is_unknown_for_a_transport_that_is_no_socket() -> None:
    assert unsent(object()) is None
    assert unsent(None) is None


# --- HTTP: pipelined bytes paused the client, then it reset ----------------------------------


def test_a_client_that_resets_while_paused_is_cut_and_its_call_ends(gone: set[Any]) -> None:
    h = Harness()
    client = h.request(POST)
    up = h.upstream()
    client.send(PIPELINED)  # behind the call being served: twisted.web stops reading
    assert b"POST /v1/audio/speech" in up.received()
    assert client.transport.producerState == "paused"
    assert h.tokens == 0
    h.reactor.advance(1.0)
    assert not aborted(client.transport), "still there: kept waiting"
    gone.add(client.transport)
    h.reactor.advance(PEER_POLL_S)
    assert aborted(client.transport), "cut as soon as its reset is seen"
    client.lose(ConnectionLost)  # what the reactor reports after the abort
    assert up.aborted, "the upstream connection is closed: generation stops"
    assert h.tokens == 1, "the slot is free"
    assert not h.reactor.getDelayedCalls() or all(
        c.getTime() - h.reactor.seconds() > PEER_POLL_S for c in h.reactor.getDelayedCalls()
    ), "no watch left looking"


def test_a_paused_client_that_stays_is_never_cut(gone: set[Any]) -> None:
    h = Harness()
    client = h.request(POST)
    up = h.upstream()
    client.send(PIPELINED)
    h.reactor.advance(5.0)
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.received().startswith(b"HTTP/1.1 200 OK")
    assert not aborted(client.transport)


# --- WebSocket: the upstream stopped reading, then the client reset --------------------------


def test_a_websocket_client_that_resets_while_paused_ends_the_session(gone: set[Any]) -> None:
    h, slot = harness()
    client, up = opened(h)
    to_upstream = up.transport.producer
    assert to_upstream is not None
    to_upstream.pauseProducing()  # the upstream's send buffer is full
    assert client.transport.producerState == "paused"
    h.reactor.advance(2.0)
    assert not aborted(client.transport)
    gone.add(client.transport)
    h.reactor.advance(PEER_POLL_S)
    assert aborted(client.transport)
    client.lose(ConnectionLost)
    assert up.closed, "the upstream connection is closed"
    assert slot.releases == 1
    assert h.tokens == 1


def test_no_watch_while_the_upstream_reads(gone: set[Any]) -> None:
    h, _slot = harness()
    client, up = opened(h)
    gone.add(client.transport)
    up.send(SERVER_FRAME)
    h.reactor.advance(1.0)
    assert not aborted(client.transport), "a read client's departure is the reactor's to report"


# --- the stall watchdog measures progress ----------------------------------------------------


class Reader:
    """Bytes on their way to a client that takes ``rate`` of them per second."""

    def __init__(self, clock: Clock, pending: int, rate: float) -> None:
        self.clock = clock
        self.start = clock.seconds()
        self.pending = pending
        self.rate = rate

    def unsent(self) -> int:
        taken = int((self.clock.seconds() - self.start) * self.rate)
        return max(0, self.pending - taken)


def watch(clock: Clock, reader: Reader | None, timeout: float) -> tuple[Watchdog, list[str]]:
    stalls: list[str] = []
    probe = None if reader is None else reader.unsent
    dog = Watchdog(clock, timeout, stalls.append, unsent=probe)
    return dog, stalls


def test_a_client_reading_at_audio_speed_is_never_cut() -> None:
    """48 KiB/s, with 4 MB still on its way: the buffer drains for 85 s, under a 5 s timeout."""
    clock = Clock()
    reader = Reader(clock, 4_000_000, 48 * 1024)
    dog, stalls = watch(clock, reader, 5.0)
    dog.touch("client")
    for _ in range(80):
        clock.advance(1.0)
    assert stalls == []


def test_a_client_that_reads_nothing_is_cut_on_time() -> None:
    clock = Clock()
    reader = Reader(clock, 4_000_000, 0)
    dog, stalls = watch(clock, reader, 5.0)
    dog.touch("client")
    clock.advance(4.9)
    assert stalls == []
    clock.advance(0.1)
    assert stalls == ["client"]


def test_a_client_that_stops_reading_is_cut_one_timeout_after_its_last_read() -> None:
    clock = Clock()
    reader = Reader(clock, 4_000_000, 48 * 1024)
    dog, stalls = watch(clock, reader, 5.0)
    dog.touch("client")
    clock.advance(10.0)
    reader.pending, reader.rate, reader.start = reader.unsent(), 0, clock.seconds()
    clock.advance(5.0 - 0.01)
    assert stalls == []
    clock.advance(CLIENT_SAMPLE_S + 0.01)
    assert stalls == ["client"]


def test_without_a_probe_the_client_is_cut_after_the_timeout_as_before() -> None:
    clock = Clock()
    dog, stalls = watch(clock, None, 5.0)
    dog.touch("client")
    clock.advance(5.0)
    assert stalls == ["client"]


def test_an_upstream_stall_is_not_excused_by_a_draining_client() -> None:
    clock = Clock()
    reader = Reader(clock, 4_000_000, 48 * 1024)
    dog, stalls = watch(clock, reader, 5.0)
    dog.touch("upstream")
    clock.advance(5.0)
    assert stalls == ["upstream"]
