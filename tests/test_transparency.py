"""What goes upstream and what comes back is the client's and the upstream's, unchanged."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from support.harness import Harness, upstream_request
from support.tunnel import HANDSHAKE
from support.wire import dechunk, envelope, parse_response


def roundtrip(raw: bytes, response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"):  # type: ignore[no-untyped-def]
    h = Harness()
    client = h.request(raw)
    up = h.upstream()
    sent = upstream_request(up)
    up.send(response)
    return h, sent, client.received()


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/audio/speech",
        b"/v1/audio/a%2Fb%2e?x=%41&y=&z",
        b"/v1/audio/voices?",
        b"/v1/audio/speech;",
        b"/v1/audio/x;p=/y;?",
        b"/v1/audio/x;p=1/y?a=1&a=2&a=1",
        b"/v1/audio/%7Euser/%7euser",
        b"/v1/audio/voices/../speech",
    ],
)
def test_path_and_query_are_byte_exact(target: bytes) -> None:
    """The request-target reaches the upstream exactly as the client wrote it."""
    _h, (line, _headers, _body), _ = roundtrip(b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target)
    assert line == b"GET %s HTTP/1.1" % target


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    """Hop-by-hop request headers, and any header Connection names, stay at the gateway."""
    raw = (
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n"
        b"Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\n"
        b"Proxy-Connection: keep-alive\r\nAuthorization: Bearer sk-1\r\nX-Keep: yes\r\n\r\n"
    )
    _h, (_line, headers, _body), _ = roundtrip(raw)
    names = [name for name, _ in headers]
    for dropped in (
        b"x-secret-hop",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
    ):
        assert dropped not in names
    assert (b"authorization", b"Bearer sk-1") in headers
    assert (b"x-keep", b"yes") in headers
    # One Host, naming the upstream; the Agent's own Connection handling only.
    assert [v for n, v in headers if n == b"host"] == [b"127.0.0.1:8091"]


def test_repeated_header_values_keep_their_order() -> None:
    """Several values of one header arrive upstream in the client's order."""
    raw = (
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Multi: 3\r\nX-Multi: 1\r\n"
        b"X-Multi: 2\r\n\r\n"
    )
    _h, (_line, headers, _body), _ = roundtrip(raw)
    assert [v for n, v in headers if n == b"x-multi"] == [b"3", b"1", b"2"]


def test_response_headers_come_back_unchanged_minus_hop_by_hop() -> None:
    """Upstream headers (repeated ones in order) reach the client; hop-by-hop ones do not."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nX-Multi: b\r\nX-Multi: a\r\n"
        b"Connection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Server: vllm\r\nContent-Length: 2\r\n\r\nok"
    )
    _h, _sent, raw = roundtrip(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n", response)
    status, headers, body = parse_response(raw)
    assert (status, body) == (200, b"ok")
    assert headers[b"x-multi"] == [b"b", b"a"]
    assert headers[b"server"] == [b"vllm"], "the upstream's Server replaces the gateway's"
    assert b"x-private" not in headers
    assert b"keep-alive" not in headers


def test_one_hop_by_hop_table_for_a_calls_response_and_a_refused_upgrade() -> None:
    """``Trailer`` (the gateway drops trailers) stays at the gateway both ways; ``Trailers``
    is no header (RFC 2616's misspelling in Twisted's table, which a call's client had
    dropped while the tunnel passed it on) and reaches the client both ways now."""
    extra = b"Trailer: X-T\r\nTrailers: X-U\r\nProxy-Authenticate: Basic\r\nX-Keep: yes\r\n"
    response = b"HTTP/1.1 403 Forbidden\r\n" + extra + b"Content-Length: 2\r\n\r\nno"
    _h, _sent, raw = roundtrip(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n", response)
    h = Harness()
    client = h.request(HANDSHAKE)
    h.upstream().send(response)
    for got in (raw, client.received()):
        status, headers, body = parse_response(got)
        assert (status, body) == (403, b"no")
        assert (headers[b"trailers"], headers[b"x-keep"]) == ([b"X-U"], [b"yes"])
        assert b"trailer" not in headers
        assert b"proxy-authenticate" not in headers


def test_gzip_passes_through_untouched() -> None:
    """Accept-Encoding goes up as sent; a gzip body comes back still gzip, same bytes."""
    compressed = gzip.compress(b'{"voices": ["Vivian"]}')
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(compressed), compressed)
    )
    raw_request = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip, br\r\n\r\n"
    _h, (_l, headers, _b), raw = roundtrip(raw_request, response)
    assert [v for n, v in headers if n == b"accept-encoding"] == [b"gzip, br"]
    _status, response_headers, body = parse_response(raw)
    assert response_headers[b"content-encoding"] == [b"gzip"]
    assert body == compressed


def test_no_accept_encoding_is_added() -> None:
    """A client that asked for no encoding gets none asked for on its behalf."""
    _h, (_l, headers, _b), _ = roundtrip(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert b"accept-encoding" not in [n for n, _ in headers]


def test_redirect_is_returned_not_followed() -> None:
    """An upstream 3xx goes to the client as it is; the gateway makes no second request."""
    response = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v1/audio/elsewhere\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    h, _sent, raw = roundtrip(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n", response)
    status, headers, _ = parse_response(raw)
    assert (status, headers[b"location"]) == (307, [b"/v1/audio/elsewhere"])
    assert h.connection_attempts == 1
    assert h.tokens == 1


def test_set_cookie_is_never_replayed() -> None:
    """An upstream Set-Cookie reaches its client, and never another client's request."""
    h = Harness()
    first = h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    h.upstream(0).send(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=alice; Path=/\r\nContent-Length: 0\r\n\r\n"
    )
    assert parse_response(first.received())[1][b"set-cookie"] == [b"session=alice; Path=/"]
    h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nCookie: mine=bob\r\n\r\n")
    second_headers = upstream_request(h.upstream(0))[1]
    # The pooled connection carries both requests; look at the second one only.
    cookies = [v for n, v in second_headers if n == b"cookie"]
    assert cookies in ([], [b"mine=bob"])
    raw = h.upstream(0).received()
    assert b"session=alice" not in raw
    assert raw.count(b"mine=bob") == 1


def test_post_body_streams_with_content_length() -> None:
    """A JSON body arrives byte-exact with its Content-Length (no chunking, no duplicates)."""
    body = b'{"input": "Hello", "voice": "Vivian"}'
    raw = (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    _h, (_line, headers, sent_body), _ = roundtrip(raw)
    assert sent_body == body
    assert [v for n, v in headers if n == b"content-length"] == [b"%d" % len(body)]
    assert b"transfer-encoding" not in [n for n, _ in headers]


def test_chunked_client_body_goes_up_with_content_length() -> None:
    """A chunked upload is spooled by twisted.web and sent up with a known length."""
    raw = (
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    _h, (_line, headers, sent_body), _ = roundtrip(raw)
    assert sent_body == b"hello world"
    assert [v for n, v in headers if n == b"content-length"] == [b"11"]


def test_large_multipart_upload_arrives_byte_exact() -> None:
    """A multi-MB voice-clone upload (spooled to a temp file) is streamed up unchanged."""
    boundary = b"b0undary"
    payload = bytes(range(256)) * (3 * 4096)  # 3 MiB
    body = (
        b'--%s\r\nContent-Disposition: form-data; name="audio_sample"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n%s\r\n--%s--\r\n" % (boundary, payload, boundary)
    )
    h = Harness()
    h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n"
        b"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d\r\n\r\n%s"
        % (boundary, len(body), body)
    )
    up = h.upstream()
    # FileBodyProducer writes slice by slice on the reactor: let it run to the end.
    for _ in range(200):
        h.reactor.advance(0)
    sent = upstream_request(up)[2]
    assert hashlib.sha256(sent).hexdigest() == hashlib.sha256(body).hexdigest()


def test_upstream_without_content_type_gets_none_added() -> None:
    """No Content-Type from upstream means none to the client (no text/html default)."""
    _h, _sent, raw = roundtrip(
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert b"content-type" not in parse_response(raw)[1]


def test_upstream_close_delimited_body_is_complete() -> None:
    """An HTTP/1.0-style body that ends at close is whole: the client gets a clean end."""
    h = Harness()
    client = h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    up = h.upstream()
    up.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
    from twisted.internet.error import ConnectionDone

    up.lose(ConnectionDone)
    assert dechunk(parse_response(client.received())[2]) == (b"all of it", True)
    assert h.tokens == 1


def test_envelope_is_openai_shape() -> None:
    """Gateway errors carry message/type/param/code plus provider, as JSON."""
    h = Harness()
    h.slot.acquire()
    error = envelope(h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n").received())
    assert error["param"] is None
    assert isinstance(error["message"], str)
    assert error["message"]
