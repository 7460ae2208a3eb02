"""The WebSocket session's core without a reactor: a phase table, stories, Hypothesis.

``TunnelMachine`` is fed events and returns effects; nothing here runs Twisted, a clock or a
socket. The table says, for each live phase against every event, where the session goes and
how it ends, or that the phase cannot receive the event (strict mode raises; production
ignores it); the stories pin the orders that matter (a cut or stall before the connect fails,
a refusal ended by a close), and the properties hold for any sequence of events and any split
of the bytes.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aistack_tts._errors import Draining, UpstreamTimeout, UpstreamUnavailable
from aistack_tts.call._events import (
    AbortClient,
    AnswerWith,
    Bug,
    ClientLeft,
    Cut,
    Ending,
    Finish,
    Stalled,
    UnexpectedEvent,
)
from aistack_tts.tunnel._events import (
    CancelConnect,
    ClientData,
    ClientLost,
    CloseClient,
    CloseUpstream,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Open,
    SendHandshake,
    StartRelay,
    UpstreamData,
    UpstreamLost,
    WriteClient,
    WriteUpstream,
)
from aistack_tts.tunnel._frames import close_frame
from aistack_tts.tunnel._session_core import RECEIVES, Phase, TunnelMachine
from support.cores import UNEXPECTED, Cell, Then, check_run, run, then

SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
REFUSED = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\n"
SERVER_FRAME = b"\x81\x05hello"
CLIENT_FRAME = b"\x82\x84\x01\x02\x03\x04" + bytes([0x60, 0x60, 0x60, 0x60])
REFUSAL = UpstreamUnavailable("connection refused")
DRAINING = Draining("the gateway is shutting down")

EVENTS: dict[str, Event] = {
    "connected": Connected(),
    "connect_failed": ConnectFailed(REFUSAL, "refused"),
    "upstream_data": UpstreamData(SERVER_FRAME),
    "client_data": ClientData(CLIENT_FRAME),
    "upstream_lost": UpstreamLost("ConnectionDone"),
    "client_lost": ClientLost(),
    "client_left": ClientLeft(),
    "stalled": Stalled("upstream"),
    "cut": Cut(DRAINING),
    "bug": Bug("RuntimeError: boom"),
}


def machine(phase: Phase, *, strict: bool | None = None) -> TunnelMachine:
    """A machine brought to ``phase`` the way the shell would."""
    m = TunnelMachine(idle_timeout=10.0, ws_idle_timeout=30.0, strict=strict)
    if phase is Phase.CONNECTING:
        return m
    m.handle(Connected())
    if phase is Phase.OPEN:
        m.handle(UpstreamData(SWITCHING))
    elif phase is Phase.RELAYING:
        m.handle(UpstreamData(REFUSED))
    elif phase is Phase.DONE:
        m.handle(ClientLeft())
    assert m.phase is phase
    return m


def names(effects: list[Effect]) -> list[str]:
    """Effect class names, the ``Finish`` with its outcome."""
    return [f"Finish:{e.outcome}" if isinstance(e, Finish) else type(e).__name__ for e in effects]


C, H, W, R, D = Phase.CONNECTING, Phase.HANDSHAKE, Phase.OPEN, Phase.RELAYING, Phase.DONE

#: (phase, event) → where the session goes (W: the open WebSocket) and how it ends; a cell
#: not here cannot be received.
TABLE: dict[tuple[Phase, str], Cell] = {
    (C, "connected"): Then(H),
    (C, "connect_failed"): Then(D, "upstream_unavailable"),
    (C, "client_left"): Then(D, "client_abort"),
    (C, "stalled"): Then(C),  # cancels; the attempt's failure answers 504
    (C, "cut"): Then(C),  # cancels; the attempt's failure answers with the cut
    (C, "bug"): Then(D, "internal_error"),
    (H, "upstream_data"): Then(H),  # not a whole head yet
    (H, "upstream_lost"): Then(D, "upstream_error"),
    (H, "client_left"): Then(D, "client_abort"),
    (H, "stalled"): Then(D, "upstream_timeout"),
    (H, "cut"): Then(D, "draining"),
    (H, "bug"): Then(D, "internal_error"),
    (W, "upstream_data"): Then(W),
    (W, "client_data"): Then(W),
    (W, "upstream_lost"): Then(D, "ws_closed_by_upstream"),
    (W, "client_lost"): Then(D, "ws_closed_by_client"),
    (W, "stalled"): Then(D, "ws_idle"),
    (W, "cut"): Then(D, "draining_cut"),
    (W, "bug"): Then(D, "internal_error"),
    (R, "upstream_data"): Then(R),
    (R, "upstream_lost"): Then(D, "upstream_error_mid_body"),
    (R, "client_left"): Then(D, "client_abort"),
    (R, "stalled"): Then(D, "upstream_stalled"),
    (R, "cut"): Then(D, "draining_cut"),
    (R, "bug"): Then(D, "internal_error"),
    # After the Finish: the ends still owed, and bytes past the answer.
    (D, "connect_failed"): Then(D),
    (D, "upstream_data"): Then(D),
    (D, "upstream_lost"): Then(D),
    (D, "client_lost"): Then(D),
    (D, "client_left"): Then(D),
}


@pytest.mark.parametrize("event", sorted(EVENTS))
@pytest.mark.parametrize("phase", list(Phase), ids=str)
def test_every_phase_against_every_event(phase: Phase, event: str) -> None:
    """Every cell, in strict mode; one not in the table raises there and is a no-op in
    production."""
    cell = TABLE.get((phase, event), UNEXPECTED)
    if cell == UNEXPECTED:
        with pytest.raises(UnexpectedEvent):
            machine(phase, strict=True).handle(EVENTS[event])
        assert machine(phase, strict=False).handle(EVENTS[event]) == []
        return
    m = machine(phase, strict=True)
    assert then(m, m.handle(EVENTS[event])) == cell


def test_the_table_names_what_each_phase_receives() -> None:
    assert {event for _, event in TABLE} <= set(EVENTS)
    for phase in Phase:
        for name, event in EVENTS.items():
            assert ((phase, name) in TABLE) is isinstance(event, RECEIVES[phase]), (phase, name)


# --- stories ------------------------------------------------------------------------------


def test_a_cut_while_connecting_answers_with_the_cut_once_the_attempt_fails() -> None:
    m = machine(Phase.CONNECTING)
    assert m.handle(Cut(DRAINING)) == [CancelConnect()]
    effects = m.handle(ConnectFailed(UpstreamTimeout("cancelled"), "cancelled"))
    assert effects == [
        AnswerWith(DRAINING),
        Finish("draining", DRAINING.message, ending=Ending.ENVELOPE),
    ]


def test_a_stall_while_connecting_marks_the_failure_as_a_timeout() -> None:
    m = machine(Phase.CONNECTING)
    m.handle(Stalled("upstream"))
    assert m.timed_out  # what the shell classifies the cancelled attempt's failure with
    timeout = UpstreamTimeout("no connection in time")
    assert m.handle(ConnectFailed(timeout, "why"))[0] == AnswerWith(timeout)


def test_a_client_that_left_while_connecting_hears_nothing_of_the_failure() -> None:
    m = machine(Phase.CONNECTING)
    m.handle(ClientLeft())
    assert m.handle(ConnectFailed(REFUSAL, "refused")) == []


def test_interim_answers_are_skipped_and_bytes_after_the_101_go_to_the_client() -> None:
    m = machine(Phase.HANDSHAKE)
    effects = m.handle(UpstreamData(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHING + SERVER_FRAME))
    [opened] = effects
    assert isinstance(opened, Open)
    assert (opened.head.status, opened.rest) == (101, SERVER_FRAME)
    assert m.bytes_out == len(SERVER_FRAME)


def test_a_broken_head_is_a_502_and_the_upstream_is_aborted() -> None:
    m = machine(Phase.HANDSHAKE)
    effects = m.handle(UpstreamData(b"SSH-2.0-OpenSSH\r\n\r\n"))
    assert names(effects) == ["CloseUpstream", "AnswerWith", "Finish:upstream_error"]
    assert effects[0] == CloseUpstream(abort=True)


@pytest.mark.parametrize(
    ("head", "chunked", "body"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", False, False),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False, False),
        (b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n", True, True),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", False, True),
    ],
)
def test_a_refusal_starts_an_http_response(head: bytes, chunked: bool, body: bool) -> None:
    m = machine(Phase.HANDSHAKE)
    effects = m.handle(UpstreamData(head))
    start = effects[0]
    assert isinstance(start, StartRelay)
    assert (start.chunked, start.body) == (chunked, body)
    if not body:
        assert effects[1:] == [
            CloseUpstream(abort=False),
            Finish(
                "ws_rejected",
                f"the upstream answered the handshake with {start.head.status}",
                ending=Ending.BODY,
            ),
        ]


def test_a_chunked_refusal_is_relayed_whole_then_finishes_once() -> None:
    m = machine(Phase.HANDSHAKE)
    m.handle(UpstreamData(b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n"))
    effects = m.handle(UpstreamData(b"5\r\nhello\r\n0\r\n\r\n"))
    assert effects[0] == WriteClient(b"hello", relayed=True)
    assert names(effects[1:]) == ["CloseUpstream", "Finish:ws_rejected"]
    assert m.handle(UpstreamLost("ConnectionDone")) == []


def test_a_refusal_delimited_by_the_close_finishes_once() -> None:
    """A body delimited by the close ends with the close, once: one Finish, every byte counted."""
    m = machine(Phase.HANDSHAKE)
    m.handle(UpstreamData(b"HTTP/1.1 403 Forbidden\r\n\r\nnot allowed"))
    effects = m.handle(UpstreamLost("ConnectionDone"))
    assert names(effects) == ["CloseUpstream", "Finish:ws_rejected"]
    assert m.bytes_out == len(b"not allowed")


def test_a_malformed_chunk_aborts_the_client() -> None:
    m = machine(Phase.HANDSHAKE)
    m.handle(UpstreamData(b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n"))
    effects = m.handle(UpstreamData(b"5\r\nhello\r\nzz\r\n"))
    assert names(effects) == [
        "WriteClient",
        "CloseUpstream",
        "AbortClient",
        "Finish:upstream_error_mid_body",
    ]


def test_the_idle_close_frame_goes_only_where_the_stream_is_between_frames() -> None:
    m = machine(Phase.OPEN)
    m.handle(UpstreamData(SERVER_FRAME[:3]))  # a frame to the client stopped halfway
    effects = m.handle(Stalled("upstream"))
    goodbye = effects[0]
    assert isinstance(goodbye, WriteUpstream)
    assert goodbye.data[0] == 0x88  # a close frame (masked: the gateway speaks as a client)
    assert names(effects) == ["WriteUpstream", "CloseClient", "CloseUpstream", "Finish:ws_idle"]


def test_a_session_is_put_down_to_who_said_goodbye_first() -> None:
    m = machine(Phase.OPEN)
    m.handle(UpstreamData(close_frame(1000, b"bye", masked=False)))
    [*_, finish] = m.handle(ClientLost())
    assert finish == Finish(
        "ws_closed_by_upstream",
        "the upstream sent the first close frame (code 1000)",
    )


def test_a_client_that_left_an_upstream_that_reads_nothing_aborts_it() -> None:
    """Issue 23: flushing to an upstream that is not reading would hold its socket open."""
    m = machine(Phase.OPEN)
    effects = m.handle(ClientLost(stuck=True))
    assert CloseUpstream(abort=True) in effects
    polite = machine(Phase.OPEN).handle(ClientLost())
    assert CloseUpstream(abort=False) in polite, "a reading upstream still gets what was sent"


# --- properties ---------------------------------------------------------------------------

_DATA = st.sampled_from([SWITCHING, REFUSED, SERVER_FRAME, b"12345", b"\r\n", b"0\r\n\r\n"])
_EVENT = st.one_of(
    st.sampled_from(list(EVENTS.values())),
    _DATA.map(UpstreamData),
    _DATA.map(ClientData),
    st.binary(max_size=40).map(UpstreamData),
)


def _run(events: list[Event]) -> list[list[Effect]]:
    # Any sequence, possible or not: production ignores what a phase cannot receive.
    m = TunnelMachine(idle_timeout=10.0, ws_idle_timeout=30.0, strict=False)
    return [m.handle(e) for e in events]


def side_of(effect: object) -> str | None:
    """The side an effect acts on."""
    if isinstance(effect, SendHandshake | CancelConnect | WriteUpstream | CloseUpstream):
        return "upstream"
    if isinstance(effect, Open | StartRelay | WriteClient | CloseClient | AbortClient):
        return "client"
    return None


def lets_go(effect: object) -> str | None:
    """The side an effect closes: nothing may write to it afterwards."""
    if isinstance(effect, CloseUpstream):
        return "upstream"
    if isinstance(effect, CloseClient | AbortClient):
        return "client"
    return None


@given(st.lists(_EVENT, max_size=30))
def test_one_finish_at_most_last_and_nothing_after_a_side_was_let_go(events: list[Event]) -> None:
    """At most one Finish, the last effect of its batch, nothing after it; no write to a
    side after its close."""
    m = TunnelMachine(idle_timeout=10.0, ws_idle_timeout=30.0, strict=False)
    finish = check_run(run(m, events), side_of, lets_go)
    assert (finish is not None) is (m.phase is Phase.DONE)


@given(st.lists(_EVENT, max_size=30))
def test_a_refusal_envelope_only_before_any_answer_went_out(events: list[Event]) -> None:
    started = False
    for effect in (e for batch in _run(events) for e in batch):
        if isinstance(effect, Open | StartRelay):
            started = True
        elif isinstance(effect, AnswerWith):
            assert not started


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges) if b > a]


@given(st.lists(st.integers(0, 10_000), max_size=8), st.binary(max_size=64))
def test_any_split_of_the_upstream_bytes_relays_the_same_bytes(
    cuts: list[int], after: bytes
) -> None:
    stream = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + SWITCHING + SERVER_FRAME + after
    m = machine(Phase.HANDSHAKE)
    relayed = b""
    heads: list[Any] = []
    for piece in _splits(stream, cuts):
        for effect in m.handle(UpstreamData(piece)):
            if isinstance(effect, Open):
                heads.append(effect.head)
                relayed += effect.rest
            else:
                assert isinstance(effect, WriteClient)
                relayed += effect.data
    assert [h.status for h in heads] == [101]
    assert relayed == SERVER_FRAME + after
    assert m.bytes_out == len(relayed)


@given(st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_of_a_chunked_refusal_relays_the_same_body(cuts: list[int]) -> None:
    head = b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    m = machine(Phase.HANDSHAKE)
    effects = [e for piece in _splits(stream, cuts) for e in m.handle(UpstreamData(piece))]
    body = b"".join(e.data for e in effects if isinstance(e, WriteClient))
    assert body == b"hello world"
    assert names([e for e in effects if isinstance(e, Finish)]) == ["Finish:ws_rejected"]
