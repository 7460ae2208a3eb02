"""The client connection's rules of issue 23 item 5, in memory (a fake clock, StringTransports).

- ``close`` anywhere in any ``Connection`` header, in any case, closes after the response.
- A folded header line (obs-fold) is refused with the channel's 400.
- A chunk size no body can have is a 400 at once; one that takes the body over ``--max-body``
  a 413 at once.
- ``Expect: 100-continue`` with the GPU busy (or every upstream down, or draining): the 503
  envelope before any ``100 Continue``; a queue with room, a slot-exempt call or another route
  still gets its ``100 Continue``.
- A client that leaves during its upload leaves one ``client_left`` access event.

``tests/real_sockets/test_channel_rules.py`` checks the same against real processes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from support.harness import Harness, Peer
from support.hostile import Seen, is_parser_400
from support.logs import LogCapture
from support.wire import parse_response

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def served(h: Harness, raw: bytes) -> Peer:
    """Send ``raw``, let the upstream answer ``OK``: the client, with its response in."""
    client = h.request(raw)
    h.upstream().send(OK)
    h.reactor.advance(0)
    return client


# a) Connection: close, however it is written.


@pytest.mark.parametrize(
    "connection",
    [
        b"Connection: keep-alive,close\r\n",
        b"Connection: keep-alive,CLOSE\r\n",
        b"Connection: Close\r\n",
        b"Connection: close,keep-alive\r\n",
        b"Connection: keep-alive ,\tclose\r\n",
        b"Connection: X-Trace,close,Keep-Alive\r\n",
        b"Connection: keep-alive\r\nConnection: close\r\n",
    ],
    ids=["no-space", "upper", "capital", "first", "ows", "middle", "second-line"],
)
def test_close_anywhere_in_connection_closes_after_the_response(connection: bytes) -> None:
    """RFC 9112 section 9.6: ``close`` is a token of the Connection list, wherever it is and
    however it is cased; the response says ``Connection: close`` and the connection ends
    after it (Twisted split only the first header on spaces)."""
    h = Harness()
    client = served(h, b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n" + connection + b"\r\n")
    status, headers, body = parse_response(client.received())
    assert (status, body) == (200, b"ok")
    assert headers[b"connection"] == [b"close"]
    assert client.closed


@pytest.mark.parametrize(
    "connection",
    [b"", b"Connection: keep-alive\r\n", b"Connection: closed, x-close\r\n"],
    ids=["none", "keep-alive", "not-the-token"],
)
def test_other_connection_values_keep_the_connection(connection: bytes) -> None:
    """No ``close`` token (``closed`` and ``x-close`` are other tokens): HTTP/1.1 persists."""
    h = Harness()
    client = served(h, b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n" + connection + b"\r\n")
    _status, headers, _body = parse_response(client.received())
    assert b"connection" not in headers
    assert not client.closed


def test_http10_is_still_not_persistent() -> None:
    """Twisted's rule kept: an HTTP/1.0 connection ends after its response."""
    h = Harness()
    client = served(h, b"GET /v1/audio/voices HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert parse_response(client.received())[0] == 200
    assert client.closed


# b) Obsolete line folding.

#: A body that is itself a request: where a fold hides Content-Length, a reader that joins the
#: lines sees no body, and these bytes become a second request.
SMUGGLED = b"GET /v1/audio/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.mark.parametrize("fold", [b" ", b"\t", b"  \t"], ids=["space", "tab", "mixed"])
def test_a_folded_content_length_is_refused_not_joined(fold: bytes) -> None:
    """``X-Pad: x`` + ``<SP>Content-Length: N``: Twisted joined them, the body became a second
    request and went upstream; now the channel's 400, nothing upstream."""
    seen = Seen(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Pad: x\r\n"
        + fold
        + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED
    )
    assert is_parser_400(seen.answer)
    assert "folding" in json.loads(parse_response(seen.answer)[2])["error"]["message"]
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_whitespace_inside_a_header_value_is_not_a_fold() -> None:
    """Only a line *starting* with SP or HTAB is a fold."""
    seen = Seen(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-A: a \t b\r\n\r\n")
    assert (b"x-a", b"a \t b") in seen.upstream_headers()


# c) Chunk sizes judged by their size line.

CHUNKED = b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "size",
    [b"ffffffffffffffffffff", b"8000000000000000", b"f" * 1000],
    ids=["20-digits", "2**63", "1000-digits"],
)
def test_a_chunk_size_no_body_can_have_is_400_at_once(size: bytes) -> None:
    """Over 2**63 - 1 (nginx's off_t): the 400 as soon as the size line is in, not a 408 after
    the client timeout (Twisted waited for the chunk's bytes)."""
    seen = Seen(CHUNKED + size + b"\r\n", max_body=1 << 62)
    assert is_parser_400(seen.answer)
    assert "chunk size" in json.loads(parse_response(seen.answer)[2])["error"]["message"]
    assert seen.client.closed
    seen.assert_nothing_upstream()


def test_the_largest_real_chunk_size_is_judged_by_the_body_limit() -> None:
    """2**63 - 1 is a size a body could have: over ``--max-body`` it is the 413."""
    seen = Seen(CHUNKED + b"7fffffffffffffff\r\n", max_body=1000)
    seen.envelope(413, "request_too_large")


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"3e9\r\n", True),
        (b"3e8\r\n", False),
        (b"200\r\n" + b"a" * 0x200 + b"\r\n1ff\r\n", True),
        (b"200\r\n" + b"a" * 0x200 + b"\r\n1e8\r\n", False),
        (b"3e9\r\n" + b"a" * 10, True),
    ],
    ids=["1001", "1000", "512-then-511", "512-then-488", "1001-with-data"],
)
def test_a_chunk_that_takes_the_body_over_the_limit_is_413_at_once(
    body: bytes, refused: bool
) -> None:
    """``--max-body 1000``: a chunk whose declared size takes the body past 1000 bytes is the
    413 as soon as its size line is in, before its bytes come (it used to wait for them); a
    body that stays at or under the limit is left to arrive."""
    seen = Seen(CHUNKED + body, max_body=1000)
    if refused:
        seen.envelope(413, "request_too_large")
        assert seen.client.closed
    else:
        assert seen.answer == b""
    seen.assert_nothing_upstream()


def test_leading_zeros_are_a_real_chunk_size() -> None:
    """Many hex digits are not too many when they are zeros (1*HEXDIG, RFC 9112 section 7.1)."""
    seen = Seen(CHUNKED + b"0" * 30 + b"3\r\nabc\r\n0\r\n\r\n")
    assert seen.upstream_body() == b"abc"


# d) Expect: 100-continue with the GPU busy.


def expect(target: bytes = b"/v1/audio/voices", length: int = 100) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % (target, length)
    return head + b"Expect: 100-continue\r\n\r\n"


def busy(h: Harness) -> None:
    """Another workload holds the shared GPU semaphore."""
    assert h.slot.acquire().called
    assert h.tokens == 0


def test_expect_with_the_gpu_busy_gets_the_503_before_any_100_continue() -> None:
    """The envelope ``forward`` would answer (gpu_busy, Retry-After, retry-after-ms), before
    the body is invited, so the client never uploads it; the connection then closes (a body
    it might still send could not be told from a next request); one access event."""
    h = Harness()
    busy(h)
    with LogCapture() as logs:
        client = h.request(expect())
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), raw[:100]
    assert b"100 Continue" not in raw
    _status, headers, body = parse_response(raw)
    error = json.loads(body)["error"]
    assert (error["type"], error["provider"]) == ("gpu_busy", "aistack")
    assert 1 <= int(headers[b"retry-after"][0]) <= 60
    assert int(headers[b"retry-after-ms"][0]) >= 100
    assert headers[b"connection"] == [b"close"]
    assert client.closed
    assert h.connection_attempts == 0
    [event] = logs.access()
    assert (event["status"], event["outcome"], event["slot"]) == (503, "gpu_busy", "busy")
    assert (event["method"], event["path"]) == ("POST", "/v1/audio/voices")


def test_expect_with_every_upstream_down_gets_503_unavailable_before_100() -> None:
    """Every upstream down and no slot to try one (nor a queue): refused before the body."""
    h = Harness()
    pool = h.proxy.pool
    pool.mark_down(pool.upstreams[0])
    h.slot.acquire()
    raw = h.request(expect()).received()
    assert b"100 Continue" not in raw
    status, headers, body = parse_response(raw)
    assert (status, json.loads(body)["error"]["type"]) == (503, "upstream_unavailable")
    assert b"retry-after" in headers


def test_expect_with_every_upstream_down_but_a_free_slot_is_invited_to_try() -> None:
    """A free slot on an upstream marked down is tried (it may be back): 100 Continue."""
    h = Harness()
    pool = h.proxy.pool
    pool.mark_down(pool.upstreams[0])
    assert b"100 Continue" in h.request(expect()).received()


def test_expect_while_draining_gets_503_draining_before_100() -> None:
    h = Harness()
    h.proxy.draining = True
    raw = h.request(expect()).received()
    assert b"100 Continue" not in raw
    status, headers, body = parse_response(raw)
    assert (status, json.loads(body)["error"]["type"]) == (503, "draining")
    assert headers[b"retry-after"] == [b"1"]


@pytest.mark.parametrize(
    ("proxy", "target", "take"),
    [
        ({}, b"/v1/audio/voices", False),
        ({"queue_timeout": 5.0}, b"/v1/audio/voices", True),
        ({"slot_exempt": ["POST:/v1/audio/voices"]}, b"/v1/audio/voices", True),
        ({}, b"/healthz", True),
        ({}, b"/v1/other", True),
    ],
    ids=["slot-free", "queue-has-room", "slot-exempt", "health-route", "unknown-route"],
)
def test_expect_is_invited_as_before_when_no_busy_503_is_due(
    proxy: dict[str, Any], target: bytes, take: bool
) -> None:
    """A free slot, a queue with room, a call that needs no slot, a route that is not the
    proxied one: ``100 Continue`` as before, and nothing is taken by asking."""
    h = Harness(**proxy)
    if take:
        busy(h)
    raw = h.request(expect(target)).received()
    assert raw == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert h.tokens == (0 if take else 1)


def test_a_body_over_the_limit_is_still_413_before_the_busy_503() -> None:
    """The body limit is judged first: a client that retries must send a smaller body."""
    h = Harness(max_body=10)
    busy(h)
    raw = h.request(expect(length=100)).received()
    assert raw.startswith(b"HTTP/1.1 413 ")


# e) An upload cut by the client.


@pytest.mark.parametrize(
    ("head", "sent", "received"),
    [
        (b"Content-Length: 1000\r\n", b"a" * 300, 300),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n3\r\nab", 7),
    ],
    ids=["content-length", "chunked"],
)
def test_an_upload_cut_by_the_client_leaves_a_client_left_event(
    head: bytes, sent: bytes, received: int
) -> None:
    """One access event: ``client_left``, no status, nobody answered, no slot, the body bytes
    received (decoded: chunk framing is not counted); counted as a client abort."""
    h = Harness()
    metrics = h.proxy.metrics.registry
    with LogCapture() as logs:
        client = h.request(b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n" + head + b"\r\n")
        client.send(sent)
        client.lose()
    [event] = logs.access()
    assert event["outcome"] == "client_left"
    assert (event["status"], event["provider"], event["slot"]) == (None, "none", "none")
    assert event["bytes_in"] == received
    assert (event["method"], event["path"]) == ("POST", "/v1/audio/voices")
    assert f"after {received}" in event["cause"]
    assert metrics.get_sample_value("aistack_tts_client_aborts_total") == 1
    assert h.connection_attempts == 0
    assert h.tokens == 1


def test_other_access_events_have_no_bytes_in() -> None:
    """The field is there only for an upload cut short: other events keep their fields."""
    h = Harness()
    with LogCapture() as logs:
        served(h, b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    [event] = logs.access()
    assert event["outcome"] == "ok"
    assert "bytes_in" not in event


def test_a_client_that_leaves_after_a_refusal_leaves_no_second_event() -> None:
    """A 413 already logged the request: leaving afterwards is not ``client_left`` too."""
    h = Harness(max_body=10)
    with LogCapture() as logs:
        client = h.request(
            b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nabc"
        )
        client.lose()
    assert [e["outcome"] for e in logs.access()] == ["request_too_large"]
