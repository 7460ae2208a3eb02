"""Hostile bodies and methods, in memory: framing a client should not send, methods it may not use.

Each test drives the gateway through the Harness (a StringTransport client, the real Agent over
a MemoryReactorClock) and looks at what the client got and what reached the upstream. Requests
Twisted's HTTP parser answers itself (a 400 ``invalid_request`` envelope with ``Date`` and a
close) never reach the gateway's code; RELIABILITY.rst lists them.
"""

from __future__ import annotations

import pytest

from support.harness import Harness, Peer
from support.hostile import Seen, get, is_parser_400
from support.wire import parse_response

# Bodies.


def test_huge_declared_content_length_is_413_before_reading() -> None:
    """A Content-Length far over --max-body (10**23): 413 envelope as soon as the headers are
    in, the connection half-closed; nothing reaches the upstream."""
    seen = Seen(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999999999999999"
        b"\r\n\r\nabc",
        max_body=1000,
    )
    assert seen.answer.startswith(b"HTTP/1.1 413 ")
    seen.envelope(413, "request_too_large")
    seen.assert_nothing_upstream()


def test_chunked_upload_over_limit_is_413_before_the_rest_is_spooled() -> None:
    """A chunked upload, declared in one enormous chunk: refused with 413 as soon as its size
    line is in (it used to wait until --max-body bytes of it came), and nothing of it is
    stored or forwarded."""
    h = Harness(max_body=1000)
    client: Peer = h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffff\r\n"
    )
    assert client.received().startswith(b"HTTP/1.1 413 ")
    request = client.protocol.requests[-1]  # type: ignore[attr-defined]
    client.send(b"a" * 100_000)
    assert request.content.tell() == 0, "nothing of the chunk was stored"
    assert h.connection_attempts == 0
    assert h.tokens == 1


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",
        b"3 \r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcdef\r\n0\r\n\r\n",
        b"3\r\nabc0\r\n\r\n",
    ],
    ids=["not-hex", "negative", "0x", "leading-space", "trailing-space", "overlong", "no-crlf"],
)
def test_malformed_chunking_gets_parsers_400(chunks: bytes) -> None:
    """Chunk sizes that are not bare hex, chunk data longer than declared or without its
    CRLF: Twisted's parser refuses it (the channel's 400) and closes; nothing reaches the
    upstream."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_chunk_extensions_and_trailers_are_not_forwarded() -> None:
    """Chunk extensions and trailer fields are framing: the upstream gets the decoded body
    with a Content-Length, and no trailer as a header."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert seen.upstream_body() == b"abc"
    headers = seen.upstream_headers()
    assert [v for n, v in headers if n == b"content-length"] == [b"3"]
    assert b"x-trailer" not in {n for n, _ in headers}
    assert b"transfer-encoding" not in {n for n, _ in headers}


def test_unterminated_chunked_body_is_never_forwarded() -> None:
    """A chunked body without its last chunk is not a request yet: nothing goes upstream,
    and once the body has stalled for the client timeout (60 s) the client gets a 408."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n"
    )
    assert seen.answer == b""
    seen.assert_nothing_upstream()
    seen.harness.reactor.advance(61)
    assert seen.client.closed
    assert seen.answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    seen.assert_nothing_upstream()
    assert seen.harness.connection_attempts == 0


# Methods.


@pytest.mark.parametrize("method", [b"get", b"Get", b"post", b"delete"])
def test_lower_case_methods_are_405(method: bytes) -> None:
    """Methods are case-sensitive (RFC 9110 section 9.1): ``get`` is not GET; a 405 envelope
    with Allow, nothing upstream."""
    seen = Seen(method + b" /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    seen.assert_nothing_upstream()
    seen.envelope(405, "method_not_allowed")
    assert parse_response(seen.answer)[1][b"allow"] == [b"GET, POST, DELETE"]


@pytest.mark.parametrize("method", [b"FOO", b"PROPFIND", b"TRACE", b"CONNECT", b"PUT", b"PATCH"])
def test_unknown_and_dangerous_methods_are_405(method: bytes) -> None:
    """Unknown methods, TRACE (no echo of the request) and CONNECT on a /v1/audio/ path: a 405
    envelope with Allow; nothing upstream."""
    seen = Seen(method + b" /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    seen.assert_nothing_upstream()
    error = seen.envelope(405, "method_not_allowed")
    assert b"Host: gw" not in seen.answer
    assert method.decode() in error["message"]


def test_connect_authority_form_is_404_not_a_tunnel() -> None:
    """``CONNECT host:port`` (a tunnel request): the gateway is not a forward proxy; a 404
    envelope, no connection anywhere."""
    seen = Seen(b"CONNECT 127.0.0.1:8091 HTTP/1.1\r\nHost: 127.0.0.1:8091\r\n\r\n")
    seen.assert_nothing_upstream()
    seen.envelope(404, "not_found")


def test_absolute_form_target_is_404_not_a_forward_proxy() -> None:
    """``GET http://host/v1/audio/x`` (absolute-form): a 404 envelope, nothing upstream."""
    seen = Seen(get(b"http://127.0.0.1:8091/v1/audio/voices"))
    seen.assert_nothing_upstream()
    seen.envelope(404, "not_found")


@pytest.mark.parametrize(
    "raw",
    [b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n"],
    ids=["GET", "OPTIONS"],
)
def test_asterisk_target_gets_an_envelope(raw: bytes) -> None:
    """The gateway does not serve ``*``: a 404 (or 405) envelope, like any other route."""
    seen = Seen(raw)
    seen.assert_nothing_upstream()
    status = parse_response(seen.answer)[0]
    assert status in (404, 405)
    seen.envelope(status, "not_found" if status == 404 else "method_not_allowed")


def test_lf_only_line_endings_are_not_a_request() -> None:
    """Lines ended by a bare LF: Twisted waits for a CRLF that never comes (no request, no
    answer) and its idle timeout (60 s) closes the connection; nothing reaches the upstream."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\nHost: gw\n\n")
    assert seen.answer == b""
    seen.assert_nothing_upstream()
    seen.harness.reactor.advance(61)
    assert seen.client.closed
    assert seen.harness.connection_attempts == 0


@pytest.mark.parametrize(
    "line",
    [
        b" GET /v1/audio/voices HTTP/1.1",
        b"GET  /v1/audio/voices HTTP/1.1",
        b"GET /v1/audio/voices  HTTP/1.1",
        b"GET /v1/audio/voices HTTP/1.1 extra",
        b"GET /v1/audio/voices HTTP/2.0",
        b"GET /v1/audio/voices",
    ],
    ids=["leading-space", "double-space", "trailing-space", "extra-word", "http2", "no-version"],
)
def test_malformed_request_lines_get_parsers_400(line: bytes) -> None:
    """A request line that is not exactly METHOD SP target SP HTTP/1.x: the parser's 400;
    nothing upstream."""
    seen = Seen(line + b"\r\nHost: gw\r\n\r\n")
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()
