"""A refused upgrade's answer, read by the gateway's own parser: the head and its framing as
strict as for a call, the body framed by ``ResponseParser``, and any split of the bytes relayed
the same (the machine alone, then the whole tunnel over StringTransport)."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone

from aistack_tts.call._events import AbortClient, AnswerWith, Ending, Finish
from aistack_tts.client._events import Failed
from aistack_tts.client._parser import ResponseParser
from aistack_tts.tunnel._events import (
    CloseUpstream,
    Connected,
    Effect,
    StartRelay,
    UpstreamData,
    UpstreamLost,
    WriteClient,
)
from aistack_tts.tunnel._session_core import TunnelMachine
from support.logs import LogCapture
from support.tunnel import HANDSHAKE, assert_released_once, harness, outcome
from support.wire import dechunk, envelope, parse_response

CHUNKED = b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n"
REJECTED = Finish("ws_rejected", "the upstream answered the handshake with 426", ending=Ending.BODY)


def refused(*pieces: bytes, lost: bool = False) -> list[Effect]:
    """What a machine waiting for the answer makes of ``pieces`` (then the upstream's close)."""
    m = TunnelMachine(idle_timeout=10.0, ws_idle_timeout=30.0)
    m.handle(Connected())
    effects = [e for piece in pieces for e in m.handle(UpstreamData(piece))]
    if lost:
        effects += m.handle(UpstreamLost("ConnectionDone"))
    return effects


def relayed(effects: list[Effect]) -> bytes:
    return b"".join(e.data for e in effects if isinstance(e, WriteClient))


# --- the head and its framing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "UpstreamProtocolError: unsupported Transfer-Encoding 'gzip, chunked'",
        ),
        (
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: identity\r\n\r\n",
            "UpstreamProtocolError: unsupported Transfer-Encoding 'identity'",
        ),
        (
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "UpstreamProtocolError: both Transfer-Encoding and Content-Length in its response",
        ),
        (
            b"HTTP/1.1 400 Bad\r\nContent-Length: 5, 6\r\n\r\n",
            "UpstreamProtocolError: invalid Content-Length '5, 6'",
        ),
        (
            b"HTTP/1.1 400 Bad\r\nContent-Length: 0x5\r\n\r\n",
            "UpstreamProtocolError: invalid Content-Length '0x5'",
        ),
        (
            b"HTTP/1.1 400 Bad\r\nX-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
            "UpstreamProtocolError: control character 0x01 in the value of its header 'X-A'",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-A: a\x00b\r\n\r\n",
            "UpstreamProtocolError: control character 0x00 in the value of its header 'X-A'",
        ),
        (b"HTTP/1.1 099 Odd\r\n\r\n", "UpstreamProtocolError: bad status line 'HTTP/1.1 099 Odd'"),
    ],
)
def test_a_head_the_http_client_refuses_is_refused_before_anything_is_relayed(
    head: bytes, message: str
) -> None:
    """The same grammar and framing rules as a call's response head: 502, nothing relayed."""
    effects = refused(head + b"5\r\nhello\r\n0\r\n\r\n")
    assert len(effects) == 3
    close, answer, finish = effects
    assert close == CloseUpstream(abort=True)
    assert isinstance(answer, AnswerWith)
    assert (answer.error.type, answer.error.message) == ("upstream_error", message)
    assert finish == Finish("upstream_error", message, ending=Ending.ENVELOPE)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5, 6\r\n\r\n",
    ],
)
def test_a_status_without_a_body_is_still_refused_for_framing_a_call_refuses(head: bytes) -> None:
    """One parser for both: a call's client refuses these heads, so the tunnel does now too
    (its own head reader had not looked at the framing of a 204 or 304)."""
    effects = refused(head)
    assert effects[0] == CloseUpstream(abort=True)
    assert isinstance(effects[1], AnswerWith)
    assert effects[1].error.type == "upstream_error"
    parser = ResponseParser(b"GET")
    parser.receive_data(head)
    assert isinstance(parser.next_event(), Failed)


def test_a_status_without_a_body_is_relayed_with_none() -> None:
    effects = refused(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
    start = effects[0]
    assert isinstance(start, StartRelay)
    assert (start.head.status, start.chunked, start.body) == (304, False, False)
    assert relayed(effects) == b""


def test_repeated_equal_lengths_are_one_length() -> None:
    effects = refused(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2, 2\r\n\r\nokEXTRA")
    start = effects[0]
    assert isinstance(start, StartRelay)
    assert (start.chunked, start.body) == (False, True)
    assert relayed(effects) == b"ok"
    assert effects[-1] == Finish(
        "ws_rejected", "the upstream answered the handshake with 403", ending=Ending.BODY
    )


# --- the body's chunk framing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "before", "why"),
    [
        # int(x, 16) would take 0x, + and _ (Twisted's decoder refused them too).
        (b"0x10\r\n", b"", "a bad chunk-size line '0x10'"),
        (b"+5\r\nhello\r\n", b"", "a bad chunk-size line '+5'"),
        (b"5_0\r\n", b"", "a bad chunk-size line '5_0'"),
        # Twisted's decoder took any number of leading zeros; the gateway bounds the digits.
        (b"00000000000000005\r\nhello\r\n", b"", "a bad chunk-size line '00000000000000005'"),
        (b"5\r\nhello\r\nzz\r\n", b"hello", "a bad chunk-size line 'zz'"),
        (b"5\r\nhelloXX0\r\n\r\n", b"hello", "chunk data not followed by CRLF: 'XX'"),
        (b"5\r\nhello\r\n0\r\nno colon\r\n\r\n", b"hello", "a bad trailer line 'no colon'"),
        (
            b"1\r\nx\r\n" + b"9" * 5000,
            b"x",
            "a chunk-size line over the gateway's limit of 4096 bytes",
        ),
    ],
)
def test_a_malformed_chunked_refusal_is_cut_after_what_it_relayed(
    body: bytes, before: bytes, why: str
) -> None:
    effects = refused(CHUNKED, body)
    assert relayed(effects) == before
    assert effects[-3:] == [
        CloseUpstream(abort=True),
        AbortClient(),
        Finish("upstream_error_mid_body", f"UpstreamProtocolError: {why}"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        b"5 ;name\r\nhello\r\n0\r\n\r\n",  # BWS before an extension (RFC 9112 section 7.1.1)
        b"5\r\nhello\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",  # trailers: read, dropped
        b"0005\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_a_well_formed_chunked_refusal_is_relayed_whole(body: bytes) -> None:
    effects = refused(CHUNKED, body)
    assert relayed(effects) == b"hello"
    assert effects[-2:] == [CloseUpstream(abort=False), REJECTED]


def test_a_truncated_chunked_refusal_is_cut_where_it_stopped() -> None:
    effects = refused(CHUNKED, b"5\r\nhel", lost=True)
    assert relayed(effects) == b"hel"
    assert effects[-1] == Finish(
        "upstream_error_mid_body",
        "IncompleteResponse: the connection closed 2 bytes short of the current chunk",
    )


def test_a_close_delimited_refusal_cut_by_a_reset_is_not_relayed_as_whole() -> None:
    """Only a clean FIN ends a body delimited by the close; a reset cuts it."""
    m = TunnelMachine(idle_timeout=10.0, ws_idle_timeout=30.0)
    m.handle(Connected())
    effects = m.handle(UpstreamData(b"HTTP/1.1 403 Forbidden\r\n\r\nno "))
    effects += m.handle(UpstreamLost("ConnectionLost: reset", clean=False))
    assert relayed(effects) == b"no "
    assert AbortClient() in effects
    assert effects[-1] == Finish("upstream_error_mid_body", "ConnectionLost: reset")


# --- any split ------------------------------------------------------------------------------

#: Whole refusals: the bytes, whether the upstream's close ends them, and the body relayed.
WHOLE = [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhelloEXTRA", False, b"hello"),
    (CHUNKED + b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nEXTRA", False, b"hello world"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\nno way", True, b"no way"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", False, b""),
]


@pytest.mark.parametrize("index", range(len(WHOLE)))
def test_a_refusal_split_at_every_byte_relays_the_same_body_and_finishes_once(index: int) -> None:
    data, lost, body = WHOLE[index]
    for cut in range(len(data) + 1):
        effects = refused(*(p for p in (data[:cut], data[cut:]) if p), lost=lost)
        assert relayed(effects) == body, cut
        finishes = [e for e in effects if isinstance(e, Finish)]
        assert [(f.outcome, f.ending) for f in finishes] == [("ws_rejected", Ending.BODY)], cut


def test_a_chunked_refusal_a_byte_at_a_time_reaches_the_client_whole() -> None:
    """Over the whole tunnel: the body re-framed for the client, one release, ws_rejected."""
    data, _lost, body = WHOLE[1]
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        for i in range(len(data)):
            up.send(data[i : i + 1])
        up.lose(ConnectionDone)
    status, headers, received = parse_response(client.received())
    assert (status, headers[b"transfer-encoding"], dechunk(received)) == (
        426,
        [b"chunked"],
        (body, True),
    )
    assert b"x-t" not in headers, "a trailer is dropped, never made a header"
    assert not client.closed
    assert_released_once(h, slot)
    assert outcome(logs) == (426, "ws_rejected", "held")


def test_a_refusal_with_a_hex_prefixed_chunk_size_aborts_the_client() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(CHUNKED + b"5\r\nhello\r\n0x10\r\n")
    assert client.aborted
    assert up.aborted
    assert dechunk(parse_response(client.received())[2]) == (b"hello", False)
    assert_released_once(h, slot)
    assert outcome(logs) == (426, "upstream_error_mid_body", "held")
    [event] = logs.access()
    assert event["cause"] == "UpstreamProtocolError: a bad chunk-size line '0x10'"


def test_a_refusal_framed_two_ways_gets_the_502_envelope() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert (
        error["message"]
        == "UpstreamProtocolError: both Transfer-Encoding and Content-Length in its response"
    )
    assert_released_once(h, slot)
