"""Real sockets: what the client sends arrives at the upstream as sent, and back.

The in-process gateway in front of the scriptable upstream process, whose echo endpoint
answers what it received: method, path and query byte-exact, repeated headers in order both
ways, hop-by-hop headers dropped, gzip bodies untouched, redirects returned (not followed),
Set-Cookie never replayed, large multipart and chunked request bodies whole.
"""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest

from support.inprocess import InProcessGateway, MiB, http_request, new_id
from support.reactor import twisted_test
from testbed.processes import UpstreamProcess
from testbed.upstream_server import COOKIE, pattern

pytestmark = [pytest.mark.real_sockets]


# (d) Transparency, over real sockets, seen by the upstream's echo.


@pytest.mark.parametrize("method", [b"GET", b"POST", b"DELETE"])
@pytest.mark.parametrize(
    "target",
    [
        b"/v1/audio/a%2Fb?x=%41&y=&z",
        b"/v1/audio/echo?",
        b"/v1/audio/echo//twice/%7e%7E/x%20y?q=a+b%20c&q=%2B&&",
        b"/v1/audio/speech;v=1?voice=Vivian%20&lang=zh%2DCN",
    ],
)
@twisted_test
async def test_method_path_and_query_arrive_byte_exact(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway, method: bytes, target: bytes
) -> None:
    """Method, path and query reach the upstream byte for byte (percent-encoding untouched)."""
    body = b"{}" if method == b"POST" else b""
    _, response = await inprocess_gateway.exchange(http_request(method, target, body=body))
    assert response.status == 200
    echo = response.json()
    assert echo["method"] == method.decode()
    assert echo["uri"] == target.decode()


@twisted_test
async def test_repeated_headers_keep_their_order_both_ways(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """Values of a repeated header keep their order, in the request and in the response."""
    _, response = await inprocess_gateway.exchange(
        http_request(
            b"GET",
            b"/v1/audio/echo",
            [
                (b"X-Order", b"1"),
                (b"Accept", b"audio/wav"),
                (b"X-Order", b"2"),
                (b"X-Order", b"3, 4"),
                (b"Accept", b"audio/mpeg"),
            ],
        )
    )
    seen = response.json()["headers"]
    assert [v for n, v in seen if n.lower() == "x-order"] == ["1", "2", "3, 4"]
    assert [v for n, v in seen if n.lower() == "accept"] == ["audio/wav", "audio/mpeg"]
    _, response = await inprocess_gateway.exchange(http_request(b"GET", b"/v1/audio/hop"))
    assert response.header(b"x-multi") == [b"first", b"second", b"third"]


@twisted_test
async def test_hop_by_hop_request_headers_are_not_forwarded(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """Hop-by-hop request headers, and every header the Connection header names, stay at the
    gateway; end-to-end ones go upstream."""
    _, response = await inprocess_gateway.exchange(
        http_request(
            b"GET",
            b"/v1/audio/echo",
            [
                (b"Connection", b"close, X-Hop-Named"),
                (b"X-Hop-Named", b"secret"),
                (b"Keep-Alive", b"timeout=5"),
                (b"TE", b"trailers"),
                (b"Trailer", b"X-Checksum"),
                (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
                (b"Proxy-Connection", b"keep-alive"),
                (b"X-End-To-End", b"kept"),
                (b"Authorization", b"Bearer end-to-end"),
            ],
        ),
        # twisted.web's server looks for "close" in Connection split on spaces only, so
        # "close, X-Hop-Named" keeps the connection open: wait for the response instead.
        until_closed=False,
    )
    seen = response.json()["headers"]
    names = {n.lower() for n, _ in seen}
    for hop in (
        "x-hop-named",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert hop not in names, seen
    for n, v in seen:
        if n.lower() == "connection":
            assert "x-hop-named" not in v.lower(), seen
    assert ["X-End-To-End", "kept"] in seen
    assert ["Authorization", "Bearer end-to-end"] in seen


@twisted_test
async def test_hop_by_hop_response_headers_are_not_forwarded(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """Hop-by-hop response headers, and those the upstream's Connection header names, do not
    reach the client; end-to-end ones do."""
    _, response = await inprocess_gateway.exchange(http_request(b"GET", b"/v1/audio/hop"))
    assert response.status == 200
    assert response.body == b"hop"
    assert response.header(b"x-end-to-end") == [b"kept"]
    assert response.header(b"keep-alive") == []
    assert response.header(b"proxy-authenticate") == []
    assert response.header(b"x-up-hop") == [], response.headers


@twisted_test
async def test_gzip_body_and_content_encoding_pass_through_untouched(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """A gzip body comes back still compressed, byte-exact, with its Content-Encoding; the
    gateway adds no Accept-Encoding of its own."""
    _, response = await inprocess_gateway.exchange(
        http_request(b"GET", b"/v1/audio/gzip?bytes=200000", [(b"Accept-Encoding", b"gzip")])
    )
    assert response.status == 200
    assert response.header(b"content-encoding") == [b"gzip"]
    (digest,) = response.header(b"x-body-sha256")
    assert hashlib.sha256(response.body).hexdigest().encode() == digest
    assert gzip.decompress(response.body) == pattern(200_000)
    _, response = await inprocess_gateway.exchange(http_request(b"GET", b"/v1/audio/echo"))
    assert "accept-encoding" not in {n.lower() for n, _ in response.json()["headers"]}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@twisted_test
async def test_upstream_redirect_is_returned_not_followed(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway, status: int
) -> None:
    """An upstream 3xx goes back to the client as it is; the gateway does not follow it."""
    ident = new_id()
    _, response = await inprocess_gateway.exchange(
        http_request(
            b"POST",
            b"/v1/audio/redirect?status=%d&to=/v1/audio/echo%%3Ffollowed%%3D%s"
            % (status, ident.encode()),
            body=b"{}",
        )
    )
    assert response.status == status
    assert response.header(b"location") == [b"/v1/audio/echo?followed=" + ident.encode()]
    assert response.body == b"redirecting"
    assert not [e for e in upstream.events() if f"followed={ident}" in " ".join(e.fields)]


@twisted_test
async def test_upstream_set_cookie_is_never_replayed(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """Set-Cookie from the upstream reaches its client, and no later request carries it."""
    _, response = await inprocess_gateway.exchange(http_request(b"GET", b"/v1/audio/cookie"))
    assert response.header(b"set-cookie") == [COOKIE]
    for _ in range(2):
        _, response = await inprocess_gateway.exchange(http_request(b"GET", b"/v1/audio/echo"))
        assert "cookie" not in {n.lower() for n, _ in response.json()["headers"]}


@twisted_test
async def test_large_multipart_post_body_arrives_byte_exact(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """A voice-clone sized multipart upload (6 MiB) reaches the upstream byte for byte, with
    its Content-Type untouched."""
    audio = random.Random(1234).randbytes(6 * MiB)
    boundary = b"aistack-boundary-7d1f"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="ref_audio"; filename="voice.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n--" + boundary + b"--\r\n"
    )
    content_type = b"multipart/form-data; boundary=" + boundary
    _, response = await inprocess_gateway.exchange(
        http_request(b"POST", b"/v1/audio/voice-clone", [(b"Content-Type", content_type)], body)
    )
    assert response.status == 200
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["Content-Type", content_type.decode()] in echo["headers"]


@twisted_test
async def test_chunked_request_body_arrives_whole(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """A chunked request body reaches the upstream whole and byte-exact."""
    parts = [b"hello ", b"chunked ", b"world" * 1000]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    request = (
        b"POST /v1/audio/echo HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    _, response = await inprocess_gateway.exchange(request)
    echo = response.json()
    assert echo["body"] == b"".join(parts).decode()
    assert "transfer-encoding" not in {n.lower() for n, _ in echo["headers"]}
