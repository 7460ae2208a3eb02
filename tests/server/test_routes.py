"""Routes and gateway-made answers: always an envelope, never HTML, never upstream by mistake."""

from __future__ import annotations

import pytest

from support.harness import Harness
from support.logs import LogCapture
from support.wire import envelope, parse_response


def answer(raw: bytes, **kwargs: object) -> tuple[Harness, bytes]:
    h = Harness(**kwargs)
    return h, h.request(raw).received()


def test_a_routes_405_is_the_proxied_routes() -> None:
    """One 405 (``_errors.method_not_allowed``): Klein's for /healthz is the proxied route's."""
    answers = []
    for target in (b"/healthz", b"/v1/audio/speech"):
        _h, raw = answer(b"PUT %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target)
        status, headers, _ = parse_response(raw)
        answers.append((status, headers[b"allow"], envelope(raw)))
    assert answers[0] == answers[1]
    assert answers[0][0] == 405


@pytest.mark.parametrize(
    "target",
    [b"/", b"/v1/models", b"/v1/audio", b"/v1/audio/", b"/v1/audiox/speech", b"/favicon.ico"],
)
def test_unknown_routes_are_404_envelopes(target: bytes) -> None:
    """Anything outside /v1/audio/<path> is a 404 envelope, not werkzeug's HTML or a redirect."""
    h, raw = answer(b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target)
    assert parse_response(raw)[0] == 404
    error = envelope(raw)
    assert (error["type"], error["provider"]) == ("not_found", "aistack")
    assert h.connection_attempts == 0


@pytest.mark.parametrize("method", [b"PUT", b"PATCH", b"HEAD", b"OPTIONS", b"TRACE", b"FOO"])
def test_other_methods_are_405_with_allow(method: bytes) -> None:
    """Methods other than GET, POST, DELETE get a 405 envelope naming the allowed ones."""
    h, raw = answer(b"%s /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n\r\n" % method)
    status, headers, _ = parse_response(raw)
    assert status == 405
    assert headers[b"allow"] == [b"GET, POST, DELETE"]
    if method != b"HEAD":
        assert envelope(raw)["type"] == "method_not_allowed"
    assert h.connection_attempts == 0
    assert h.tokens == 1


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/audio/../../etc/passwd",
        b"/v1/audio/%2e%2e/%2e%2e/admin",
        b"/v1/audio/%2E%2E/models",
        b"/v1/audio/..%2f..%2fmetrics",
        b"/v1/audio/..%5c..%5cwin",
        b"/v1/audio/..\\..\\win",
        b"/v1/audio/voices/../../x",
        b"/v1/audio/./../x",
        b"/v1/audio/x%00.wav",
        b"/v1/audio/%ff%fe/../..",
    ],
)
def test_paths_climbing_out_are_400_and_never_sent(target: bytes) -> None:
    """Dot-segments that would leave /v1/audio/ (however encoded) are refused before the slot."""
    with LogCapture() as logs:
        h, raw = answer(b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target)
    assert parse_response(raw)[0] == 400
    assert envelope(raw)["type"] == "invalid_request"
    assert h.connection_attempts == 0
    assert h.tokens == 1
    assert not logs.failures()


def test_raw_non_ascii_request_line_is_refused_by_twisted() -> None:
    """Twisted's own parser refuses raw non-ASCII in the request line (a bare 400, no body)."""
    h, raw = answer(b"GET /v1/audio/\xff\xfe HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert parse_response(raw)[0] == 400
    assert h.connection_attempts == 0


@pytest.mark.parametrize(
    "target",
    [b"/v1/audio/voices/./x", b"/v1/audio/a/b/../c", b"/v1/audio/%2Fetc", b"/v1/audio/a//b"],
)
def test_odd_paths_that_stay_inside_are_forwarded(target: bytes) -> None:
    """Dot-segments that stay below /v1/audio/, encoded slashes, empty segments: forwarded as is."""
    h = Harness()
    h.request(b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % target)
    assert h.upstream().received().startswith(b"GET %s HTTP/1.1\r\n" % target)


def test_declared_body_over_limit_is_413_before_it_is_stored() -> None:
    """Content-Length over --max-body: 413 envelope at once, nothing spooled or forwarded."""
    h = Harness(max_body=1000)
    client = h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in raw
    error = envelope(raw)
    assert (error["type"], error["provider"]) == ("request_too_large", "aistack")
    assert client.closed
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_chunked_body_over_limit_is_413_while_it_arrives() -> None:
    """A chunked upload is counted as it arrives; past --max-body it is refused, rest dropped."""
    h = Harness(max_body=1000)
    client = h.request(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    client.send(b"200\r\n" + b"a" * 0x200 + b"\r\n")
    assert client.received() == b""
    client.send(b"400\r\n" + b"a" * 0x400 + b"\r\n")
    assert client.received().startswith(b"HTTP/1.1 413 ")
    request = client.protocol.requests[-1]  # type: ignore[attr-defined]
    assert request.content.tell() == 0x200, "nothing past the limit was stored"
    client.send(b"400\r\n" + b"a" * 0x400 + b"\r\n0\r\n\r\n")
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_body_at_limit_is_accepted() -> None:
    """Exactly --max-body bytes is allowed."""
    h = Harness(max_body=10)
    h.request(b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n0123456789")
    assert h.upstream().received().endswith(b"\r\n\r\n0123456789")


def test_refused_upload_is_cut_after_a_linger() -> None:
    """After a 413 the connection is half-closed, then aborted after a short linger."""
    from twisted.internet.testing import StringTransport

    class HalfCloseable(StringTransport):
        write_closed = False

        def loseWriteConnection(self) -> None:
            self.write_closed = True

    h = Harness(max_body=10)
    protocol = h.site.buildProtocol(None)
    assert protocol is not None
    transport = HalfCloseable()  # type: ignore[no-untyped-call]
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n"
    )
    assert transport.write_closed
    assert not transport.disconnecting
    protocol.dataReceived(b"x" * 100)  # the rest of the upload is read and dropped
    h.reactor.advance(2.0)
    assert transport.disconnected


def test_embedded_in_plain_site_still_refuses_large_bodies() -> None:
    """Mounted in someone else's Site (no body-limit request), the resource still says 413."""
    from twisted.internet.testing import StringTransport
    from twisted.web.server import Site

    h = Harness(max_body=10)
    site = Site(h.proxy.resource(), reactor=h.reactor)
    protocol = site.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n01234567890"
    )
    assert parse_response(transport.value())[0] == 413
    assert h.connection_attempts == 0
