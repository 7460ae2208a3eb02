"""The WebSocket tunnel's pure parts: which requests upgrade, the handshake written upstream,
the answer head read by the HTTP client's parser, and where frames end (with Hypothesis)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from aistack_tts.client._events import NEED_DATA, Failed
from aistack_tts.client._head import MAX_UPSTREAM_HEAD, Head, UpstreamProtocolError
from aistack_tts.client._parser import ResponseParser
from aistack_tts.tunnel._frames import FrameBoundary, close_frame
from aistack_tts.wire._http import wants_websocket, websocket_handshake
from support.tunnel import (
    KEY,
    SWITCHING,
    unmask,
)

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


def answer(pieces: list[bytes]) -> tuple[Head | Failed | None, bytes]:
    """What the tunnel's parser makes of ``pieces``: the head (or failure) and the bytes after."""
    parser = ResponseParser(b"GET", upgrade=True)
    for piece in pieces:
        parser.receive_data(piece)
        event = parser.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, Head | Failed)
            return event, parser.rest()
    return None, b""


def test_the_answer_waits_for_the_blank_line_and_keeps_what_follows() -> None:
    assert answer([b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n"]) == (None, b"")
    head, rest = answer([SWITCHING[:10], SWITCHING[10:] + b"frame"])
    assert isinstance(head, Head)
    assert (head.status, head.raw, rest) == (101, SWITCHING, b"frame")


def test_the_answer_accepts_bare_lf_line_ends_as_the_http_client_does() -> None:
    bare = b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n"
    mixed = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\n\r\n"
    for raw in (bare, mixed):
        head, rest = answer([raw + b"frame"])
        assert isinstance(head, Head)
        assert (head.raw, rest) == (b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n", b"frame")
    assert answer([b"HTTP/1.1 101 OK\nUpgrade: websocket\n"]) == (None, b"")


def test_interim_answers_are_skipped_and_count_against_the_one_limit() -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\n\r\n"
    head, _rest = answer([hints + SWITCHING])
    assert isinstance(head, Head)
    assert head.status == 101
    failed, _rest = answer([hints * (MAX_UPSTREAM_HEAD // len(hints) + 1) + SWITCHING])
    assert isinstance(failed, Failed)
    assert "over the gateway's limit" in str(failed.error)


def test_a_bare_lf_head_is_parsed_and_kept_with_crlf() -> None:
    """RFC 9112 section 2.2: a recipient may take a bare LF; what the gateway sends on uses
    CRLF, so the client gets a well-formed 101."""
    head, _ = answer([b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\r\nX-A: 1\n\n"])
    assert isinstance(head, Head)
    assert (head.status, head.reason) == (101, b"Switching Protocols")
    assert head.raw == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nX-A: 1\r\n\r\n"
    assert head.headers == [(b"Upgrade", b"websocket"), (b"X-A", b"1")]


def test_the_answer_head_is_bounded() -> None:
    for pieces in (
        [b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * (MAX_UPSTREAM_HEAD // 6)],
        # A head that ends just past the limit is refused too.
        [b"x" * MAX_UPSTREAM_HEAD + b"\r\n\r\n"],
    ):
        failed, _ = answer(pieces)
        assert isinstance(failed, Failed)
        assert isinstance(failed.error, UpstreamProtocolError)


def test_the_answer_head_keeps_every_field_line() -> None:
    head, _ = answer([SWITCHING])
    assert isinstance(head, Head)
    assert (head.status, head.reason, head.raw) == (
        101,
        b"Switching Protocols (as it is)",
        SWITCHING,
    )
    assert (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in head.headers
    assert (b"CONNECTION", b"Upgrade") in head.headers, "the 101's own hop-by-hop headers too"
    refused, _ = answer([b"HTTP/1.1 404\r\n\r\n"])
    assert isinstance(refused, Head)
    assert refused.reason == b""


def test_only_an_upgrade_request_takes_a_101() -> None:
    parser = ResponseParser(b"GET")
    parser.receive_data(SWITCHING)
    failed = parser.next_event()
    assert isinstance(failed, Failed)
    assert "asked for no upgrade" in str(failed.error)


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
def test_an_answer_that_is_not_http_fails(raw: bytes) -> None:
    failed, _ = answer([raw])
    assert isinstance(failed, Failed)
    assert isinstance(failed.error, UpstreamProtocolError)


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
