"""A chunked upstream body reaches an HTTP/1.1 client with the upstream's own chunk framing.

The gateway checks the framing as it passes (``ResponseParser.relay_framing``) instead of
taking the chunks apart and framing them again; the last chunk is twisted.web's, the
upstream's trailers are dropped, and everything else (an HTTP/1.0 client, a broken chunk, a
reset) behaves as before. Over the in-memory harness, byte for byte.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost

from support.harness import Harness
from support.logs import LogCapture
from support.wire import dechunk, parse_response

GET = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_chunks_go_through_with_their_framing_and_the_end_is_twisteds() -> None:
    h = Harness()
    with LogCapture() as logs:
        client = h.request(GET)
        up = h.upstream()
        up.send(CHUNKED_HEAD + b"4;ext=1\r\nRIFF\r\n00a\r\n0123")
        _, headers, raw = parse_response(client.received())
        assert headers[b"transfer-encoding"] == [b"chunked"]
        assert raw == b"4;ext=1\r\nRIFF\r\n00a\r\n0123", "the upstream's framing, as it came"
        up.send(b"456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    raw = parse_response(client.received())[2]
    assert raw == b"4;ext=1\r\nRIFF\r\n00a\r\n0123456789\r\n0\r\n\r\n"
    assert dechunk(raw) == (b"RIFF0123456789", True)
    [event] = logs.access()
    assert (event["outcome"], event["bytes_out"]) == ("ok", 14), "body bytes, not framing"
    assert h.tokens == 1


def test_the_head_goes_to_the_client_when_the_upstream_sends_it() -> None:
    """A chunked answer's head is not held back until its first chunk (time to first byte)."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(CHUNKED_HEAD)
    status, headers, raw = parse_response(client.received())
    assert (status, headers[b"content-type"], raw) == (200, [b"audio/wav"], b"")


def test_an_http_1_0_client_gets_the_body_decoded() -> None:
    """twisted.web does not chunk for HTTP/1.0: the chunks are taken apart as before."""
    h = Harness()
    client = h.request(b"GET /v1/audio/voices HTTP/1.0\r\nHost: gw\r\n\r\n")
    up = h.upstream()
    up.send(CHUNKED_HEAD + b"4;ext=1\r\nRIFF\r\n")
    up.send(b"4\r\ndata\r\n0\r\n\r\n")
    _, headers, raw = parse_response(client.received())
    assert b"transfer-encoding" not in headers
    assert raw == b"RIFFdata"
    assert h.tokens == 1


def test_a_bad_chunk_line_mid_body_aborts_after_the_good_bytes() -> None:
    h = Harness()
    with LogCapture() as logs:
        client = h.request(GET)
        up = h.upstream()
        up.send(CHUNKED_HEAD + b"4\r\nRIFF\r\n0x4\r\ndata\r\n0\r\n\r\n")
    assert client.aborted
    assert parse_response(client.received())[2] == b"4\r\nRIFF\r\n"
    assert [e["outcome"] for e in logs.access()] == ["upstream_error_mid_body"]
    assert h.tokens == 1


def test_a_reset_inside_a_chunk_aborts_the_client() -> None:
    h = Harness()
    with LogCapture() as logs:
        client = h.request(GET)
        up = h.upstream()
        up.send(CHUNKED_HEAD + b"8\r\nRIFF")
        up.lose(ConnectionLost)
    assert client.aborted
    assert dechunk(parse_response(client.received())[2]) == (b"RIFF", False)
    [event] = logs.access()
    assert (event["outcome"], event["bytes_out"]) == ("upstream_error_mid_body", 4)
    assert h.tokens == 1
