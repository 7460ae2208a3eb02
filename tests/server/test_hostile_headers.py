"""Hostile headers, in memory: smuggling, hop-by-hop, pipelining and oversize heads.

Each test drives the gateway through the Harness (a StringTransport client, the real Agent over
a MemoryReactorClock) and looks at what the client got and what reached the upstream. Requests
Twisted's HTTP parser answers itself (a 400 ``invalid_request`` envelope with ``Date`` and a
close) never reach the gateway's code; RELIABILITY.rst lists them.
"""

from __future__ import annotations

import json

import pytest

from support.harness import Harness
from support.hostile import Seen, early, get, is_parser_400
from support.wire import parse_response

# Headers.


@pytest.mark.parametrize(
    "headers",
    [
        b"Host: gw\r\nX-A: a\rX-Injected: b\r\n",
        b"Host: gw\r\nX-A: a\nX-Injected: b\r\n",
        b"Host: gw\r\nX-A: a\x00b\r\n",
        b"Host: gw\r\nX-A : a\r\n",
        b" X-A: a\r\nHost: gw\r\n",
    ],
    ids=["bare-cr", "bare-lf", "nul", "space-before-colon", "first-line-folded"],
)
def test_header_injection_gets_parsers_400(headers: bytes) -> None:
    """A bare CR or LF inside a header line (header injection), a NUL, whitespace before the
    colon, a first header line that starts with whitespace (a fold with nothing to fold
    into): Twisted's parser refuses it (the channel's 400) and closes; nothing reaches the
    upstream."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\r\n" + headers + b"\r\n")
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_crlf_in_request_line_gets_parsers_400() -> None:
    """CR LF inside the request-target splits the request line: the parser's 400."""
    seen = Seen(b"GET /v1/audio/x\r\nX-Injected: 1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()


def test_encoded_crlf_in_header_value_is_forwarded_as_text() -> None:
    """``%0d%0a`` in a header value is just text: it goes upstream as those bytes, and no
    header line is injected."""
    seen = Seen(get(b"/v1/audio/voices", b"X-A: a%0d%0aX-Injected: 1\r\n"))
    assert (b"x-a", b"a%0d%0aX-Injected: 1") in seen.upstream_headers()
    assert b"x-injected" not in {name for name, _ in seen.upstream_headers()}


def test_obsolete_line_folding_is_refused() -> None:
    """A folded header (obs-fold) is the channel's 400, not joined to the line above (Twisted
    joined it with a space): nothing reaches the upstream (RFC 9112 section 5.2)."""
    seen = Seen(get(b"/v1/audio/voices", b"X-A: a\r\n X-Injected: 1\r\n"))
    assert is_parser_400(seen.answer)
    assert "folding" in json.loads(parse_response(seen.answer)[2])["error"]["message"]
    seen.assert_nothing_upstream()


def test_header_line_over_16_kib_is_431() -> None:
    """One header line over 16 KiB: Twisted closed the connection without an answer."""
    seen = Seen(get(b"/v1/audio/voices", b"X-Big: " + b"a" * 17_000 + b"\r\n"))
    early(seen.answer, 431, "request_header_too_large")
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_header_block_over_16_kib_is_431() -> None:
    """Headers totalling over 16 KiB (HTTPChannel.totalHeadersSize) in lines under the line
    limit: 431 (Twisted's was a bare 400), and a close."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 2000) for i in range(10))
    seen = Seen(get(b"/v1/audio/voices", headers))
    early(seen.answer, 431, "request_header_too_large")
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_more_than_500_headers_get_parsers_400() -> None:
    """Over 500 header lines (HTTPChannel.maxHeaders): the parser's 400."""
    headers = b"".join(b"X-%d: a\r\n" % i for i in range(600))
    seen = Seen(get(b"/v1/audio/voices", headers))
    assert is_parser_400(seen.answer)
    seen.assert_nothing_upstream()


def test_header_block_just_under_the_limit_is_forwarded() -> None:
    """15 KB of headers is under the limit: all of it goes upstream."""
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(15))
    seen = Seen(get(b"/v1/audio/voices", headers))
    assert (
        sum(name.startswith(b"x-") and name[2:].isdigit() for name, _ in seen.upstream_headers())
        == 15
    )


@pytest.mark.parametrize(
    "lengths",
    [
        b"Content-Length: 3\r\nContent-Length: 5\r\n",
        b"Content-Length: 3\r\nContent-Length: 3\r\n",
        b"Content-Length: 3, 5\r\n",
        b"Content-Length: 3, 3\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: +3\r\n",
        b"Content-Length: 0x3\r\n",
    ],
    ids=["conflicting", "duplicate", "list", "list-same", "negative", "plus", "hex"],
)
def test_bad_content_length_gets_parsers_400(lengths: bytes) -> None:
    """Duplicate, conflicting, listed or non-decimal Content-Length: Twisted's parser refuses
    them (the channel's 400) and closes before any body is read; nothing reaches the upstream."""
    seen = Seen(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n" + lengths + b"\r\nabcde")
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n",
        b"Content-Length: 3\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "te-and-cl-0",
        "gzip-chunked",
        "chunked-identity",
        "xchunked",
        "te-twice",
        "space-before-colon",
        "identity",
        "identity-then-cl",
        "cl-then-identity",
        "chunked-then-identity",
        "identity-then-chunked",
    ],
)
def test_request_smuggling_framing_gets_parsers_400(framing: bytes) -> None:
    """Content-Length together with Transfer-Encoding (both orders), transfer codings other
    than a lone ``chunked``, a repeated Transfer-Encoding: the channel refuses them with a 400, so
    the gateway never has to choose a framing, and never forwards both."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n" + framing + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert is_parser_400(seen.answer)
    assert seen.client.closed
    seen.assert_nothing_upstream()


PIPELINED = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"
    b"POST /v1/audio/smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
)


def test_pipelined_bytes_after_the_body_are_a_second_request_not_body() -> None:
    """Bytes after Content-Length's worth of body are the next request (pipelining), framed
    anew: the first upstream request carries exactly its 3 body bytes and one
    Content-Length; the second gets its own answer, after the first one."""
    h = Harness()
    client = h.request(PIPELINED)
    up = h.upstream()
    first = up.received()
    assert first.startswith(b"POST /v1/audio/speech HTTP/1.1\r\n")
    assert first.endswith(b"\r\n\r\nabc")
    assert first.lower().count(b"content-length:") == 1
    assert b"smuggled" not in first
    assert client.received() == b"", "nothing is answered before the first response"
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.reactor.advance(0)
    answers = client.received()
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n")
    # The second request is answered on its own, or is on its way upstream on its own.
    sent = b"".join(h.upstream(i).received() for i in range(h.connection_attempts))
    assert answers.count(b"HTTP/1.1 ") == 2 or sent.count(b"POST /v1/audio/smuggled ") == 1


def test_pipelined_request_after_a_finished_one_is_not_refused_busy() -> None:
    """Once the first response is whole the GPU is free: the pipelined second request goes
    upstream instead of getting 503 gpu_busy."""
    h = Harness()
    client = h.request(PIPELINED)
    h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    h.reactor.advance(0)
    assert b" 503 " not in client.received()
    sent = b"".join(h.upstream(i).received() for i in range(h.connection_attempts))
    assert b"POST /v1/audio/smuggled HTTP/1.1" in sent


def test_connection_naming_content_length_or_host_cannot_unframe_the_request() -> None:
    """``Connection: Content-Length, Host`` declares them hop-by-hop, but the gateway writes
    its own: the upstream still gets exactly one Host (its own) and one Content-Length that
    matches the body."""
    seen = Seen(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nConnection: Content-Length, Host\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    headers = seen.upstream_headers()
    assert [v for n, v in headers if n == b"content-length"] == [b"3"]
    assert [v for n, v in headers if n == b"host"] == [b"127.0.0.1:8091"]
    assert seen.upstream_body() == b"abc"


def test_connection_named_end_to_end_headers_are_dropped() -> None:
    """Headers a client names in Connection are hop-by-hop by its own declaration (RFC 9110
    section 7.6.1): they stay at the gateway, Authorization included."""
    seen = Seen(
        get(
            b"/v1/audio/voices",
            b"Connection: keep-alive, X-Secret, Authorization\r\nX-Secret: s\r\n"
            b"Authorization: Bearer k\r\nX-Kept: yes\r\n",
        )
    )
    names = {name for name, _ in seen.upstream_headers()}
    assert not names & {b"x-secret", b"authorization", b"connection", b"keep-alive"}
    assert b"x-kept" in names


def test_upstream_connection_header_cannot_strip_the_response_framing() -> None:
    """An upstream that names Content-Length (and a secret) in its Connection header: the
    client still gets a framed body (the gateway restates the length) and not the secret."""
    h = Harness()
    client = h.request(get(b"/v1/audio/voices"))
    h.upstream().send(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Up-Secret\r\nX-Up-Secret: s\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    status, headers, body = parse_response(client.received())
    assert (status, headers.get(b"content-length"), body) == (200, [b"5"], b"hello")
    assert b"x-up-secret" not in headers


@pytest.mark.parametrize(
    "hosts",
    [b"", b"Host: gw\r\nHost: evil.test\r\n", b"Host: a b\r\n", b"Host: gw/x\r\n", b"Host: @x\r\n"],
    ids=["none", "two", "space", "slash", "at"],
)
def test_http11_request_without_exactly_one_valid_host_is_400(hosts: bytes) -> None:
    """RFC 9112 section 3.2: an HTTP/1.1 request with no Host, two, or one that is no
    host[:port] is a 400 (nginx's too); Twisted would pass it on."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\r\n" + hosts + b"\r\n")
    assert is_parser_400(seen.answer)
    assert "Host" in json.loads(parse_response(seen.answer)[2])["error"]["message"]
    seen.assert_nothing_upstream()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/audio/voices HTTP/1.0\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: tts.example.com\r\n\r\n",
    ],
    ids=["http10-no-host", "empty-host", "ipv6-literal", "name"],
)
def test_valid_hosts_are_forwarded_with_the_upstreams_own(request_head: bytes) -> None:
    """HTTP/1.0 needs no Host; an empty one is valid (RFC 9112 section 3.2); the upstream
    always gets exactly its own Host."""
    seen = Seen(request_head)
    assert [v for n, v in seen.upstream_headers() if n == b"host"] == [b"127.0.0.1:8091"]
