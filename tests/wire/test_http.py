"""Header hygiene: what a transparent proxy never passes on."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from aistack_tts.wire._http import end_to_end, upstream_request_headers


def test_end_to_end_drops_hop_by_hop_and_connection_named() -> None:
    """Hop-by-hop names and those listed in Connection (any case, comma lists) are dropped."""
    h = Headers()
    for name, value in [
        (b"Connection", b"close, X-A"),
        (b"Connection", b"x-b"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-C", b"3"),
    ]:
        h.addRawHeader(name, value)
    assert list(end_to_end(h).getAllRawHeaders()) == [(b"X-C", [b"3"])]


def test_request_headers_lose_host_length_expect() -> None:
    """Host, Content-Length and Expect are the gateway's to set upstream."""
    h = Headers({b"Host": [b"gw"], b"Content-Length": [b"3"], b"Expect": [b"100-continue"]})
    h.addRawHeader(b"Authorization", b"Bearer x")
    assert dict(upstream_request_headers(h).getAllRawHeaders()) == {b"Authorization": [b"Bearer x"]}
