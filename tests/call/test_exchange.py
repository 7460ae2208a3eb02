"""The proxied call over the wire, deterministically: slot, streaming, disconnects, timeouts.

Each fault-path test ends by checking the slot's tokens are back: the slot is released exactly
once on every path (a second release would raise in DeferredSemaphore or show up as 2 tokens).
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost, DNSLookupError
from twisted.internet.testing import StringTransport

from support.harness import Harness, upstream_request
from support.logs import LogCapture
from support.wire import dechunk, envelope, parse_response

GET = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
POST = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: 17\r\n\r\n"
    b'{"input": "hi!!"}'
)
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_completed_call_streams_body_and_releases_slot() -> None:
    """A whole call: the upstream's answer reaches the client; the slot is back afterwards."""
    h = Harness()
    with LogCapture() as logs:
        client = h.request(POST)
        assert h.tokens == 0
        up = h.upstream()
        line, _headers, body = upstream_request(up)
        assert line == b"POST /v1/audio/speech HTTP/1.1"
        assert body == b'{"input": "hi!!"}'
        up.send(CHUNKED_HEAD + chunk(b"RIFF") + chunk(b"data"))
        status, headers, raw = parse_response(client.received())
        assert status == 200
        assert headers[b"content-type"] == [b"audio/wav"]
        assert dechunk(raw) == (b"RIFFdata", False)
        assert h.tokens == 0, "slot is held until the body is fully delivered"
        up.send(b"0\r\n\r\n")
    assert dechunk(parse_response(client.received())[2]) == (b"RIFFdata", True)
    assert h.tokens == 1
    [event] = logs.access()
    assert (event["status"], event["outcome"], event["slot"], event["bytes_out"]) == (
        200,
        "ok",
        "held",
        8,
    )
    assert not logs.failures()


def test_content_length_response_is_kept() -> None:
    """An upstream Content-Length reaches the client (no switch to chunked)."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    status, headers, body = parse_response(client.received())
    assert (status, headers[b"content-length"], body) == (200, [b"5"], b"hello")
    assert b"transfer-encoding" not in headers
    assert h.tokens == 1


def test_busy_slot_answers_503_at_once_without_calling_upstream() -> None:
    """While another holder has the slot, a request gets 503 gpu_busy with retry hints."""
    h = Harness()
    h.slot.acquire()  # in-process ASR/LLM work holding the shared GPU slot
    with LogCapture() as logs:
        client = h.request(GET)
    status, headers, _ = parse_response(client.received())
    assert status == 503
    assert headers[b"retry-after"] == [b"1"]
    assert headers[b"retry-after-ms"] == [b"1000"]
    error = envelope(client.received())
    assert (error["type"], error["code"], error["provider"]) == ("gpu_busy", "gpu_busy", "aistack")
    assert h.connection_attempts == 0
    assert h.tokens == 0, "the other holder keeps its token"
    assert [e["slot"] for e in logs.access()] == ["busy"]


def test_second_concurrent_request_is_refused_while_first_streams() -> None:
    """Capacity 1: the second request during a stream is refused, the first is unaffected."""
    h = Harness()
    first = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + chunk(b"abc"))
    second = h.request(GET)
    assert parse_response(second.received())[0] == 503
    up.send(chunk(b"def") + b"0\r\n\r\n")
    assert dechunk(parse_response(first.received())[2]) == (b"abcdef", True)
    assert h.tokens == 1


def test_connection_refused_is_503_upstream_unavailable() -> None:
    """Upstream not listening: 503 upstream_unavailable, provider qwen3-tts, compose hint."""
    h = Harness()
    client = h.request(GET)
    h.refuse()
    status, headers, _ = parse_response(client.received())
    assert status == 503
    assert headers[b"retry-after"] == [b"5"]
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("upstream_unavailable", "qwen3-tts")
    assert "docker compose up -d" in error["message"]
    assert h.tokens == 1


def test_dns_failure_is_503_upstream_unavailable() -> None:
    """A name that does not resolve is the same as a refused connection for the client."""
    h = Harness()
    client = h.request(GET)
    h.refuse(reason=DNSLookupError("qwen3-tts"))
    assert envelope(client.received())["type"] == "upstream_unavailable"
    assert h.tokens == 1


def test_upstream_error_before_headers_is_502_with_exception_type() -> None:
    """The upstream drops the connection before answering: 502 "<ExceptionType>: <message>"."""
    h = Harness()
    client = h.request(GET)
    h.upstream().lose(ConnectionLost)
    assert parse_response(client.received())[0] == 502
    error = envelope(client.received())
    assert error["type"] == "upstream_error"
    assert error["provider"] == "qwen3-tts"
    assert error["message"].startswith("ResponseNeverReceived: ConnectionLost")
    assert h.tokens == 1


def test_garbage_from_upstream_is_502() -> None:
    """Bytes that are not HTTP: 502, never a traceback or HTML."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert envelope(client.received())["type"] == "upstream_error"
    assert h.tokens == 1


CLOSE_DELIMITED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n\r\n"


@pytest.mark.parametrize(
    "start",
    [CHUNKED_HEAD + chunk(b"part"), CLOSE_DELIMITED_HEAD + b"part"],
    ids=["chunked", "close-delimited"],
)
def test_upstream_error_mid_body_aborts_client(start: bytes) -> None:
    """The upstream breaks after headers (a reset; for a body with neither Content-Length nor
    chunking too, which Twisted reported as a possibly whole body): the client connection is
    aborted, never ended cleanly."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(start)
    with LogCapture() as logs:
        up.lose(ConnectionLost)
    assert client.aborted
    assert dechunk(parse_response(client.received())[2]) == (b"part", False)
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["upstream_error_mid_body"]
    assert not logs.failures()


def test_short_content_length_body_aborts_client() -> None:
    """Fewer bytes than the upstream's Content-Length: the client sees an abort, not an end."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    up.lose(ConnectionLost)
    assert client.aborted
    assert h.tokens == 1


def test_close_delimited_body_ended_by_a_clean_close_is_whole() -> None:
    """No Content-Length, no chunking, then a clean close (FIN): the body ends cleanly."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CLOSE_DELIMITED_HEAD + b"whole")
    with LogCapture() as logs:
        up.lose(ConnectionDone)
    assert not client.aborted
    assert dechunk(parse_response(client.received())[2]) == (b"whole", True)
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["ok"]


def test_client_gone_before_headers_aborts_upstream() -> None:
    """The client leaves while the upstream generates: the upstream connection is aborted."""
    h = Harness()
    client = h.request(POST)
    up = h.upstream()
    with LogCapture() as logs:
        client.lose()
    assert up.aborted
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["client_abort"]
    assert not logs.failures(), "no CancelledError or finish-after-disconnect noise"


def test_client_gone_while_connecting_cancels_connect() -> None:
    """The client leaves before the upstream connection is even made: slot back, no noise."""
    h = Harness()
    client = h.request(GET)
    with LogCapture() as logs:
        client.lose()
    assert h.tokens == 1
    assert not logs.failures()


def test_client_gone_mid_body_stops_upstream() -> None:
    """The client leaves mid-stream: the upstream transport is stopped (closed) at once."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + chunk(b"x" * 100))
    with LogCapture() as logs:
        client.lose()
    # The body's stopProducing aborts the upstream connection (and shuts its socket at once).
    assert up.aborted
    assert h.tokens == 1
    # The upstream connection then goes; nothing more happens, nothing is logged as an error.
    up.lose(ConnectionLost)
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["client_abort"]
    assert not logs.failures()


def test_idle_timeout_before_headers_is_504() -> None:
    """No upstream byte for --idle-timeout before headers: 504 and the upstream is aborted."""
    h = Harness(idle_timeout=30)
    client = h.request(GET)
    up = h.upstream()
    h.reactor.advance(29)
    assert client.received() == b""
    h.reactor.advance(1)
    assert parse_response(client.received())[0] == 504
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("upstream_timeout", "qwen3-tts")
    assert up.aborted
    assert h.tokens == 1


def test_idle_timeout_mid_body_aborts_both() -> None:
    """No upstream byte for --idle-timeout mid-body: both connections go, slot back."""
    h = Harness(idle_timeout=30)
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD)
    for _ in range(5):
        h.reactor.advance(20)
        up.send(chunk(b"tick"))  # each byte restarts the clock
    assert not client.aborted
    h.reactor.advance(30)
    assert client.aborted
    assert up.aborted
    assert h.tokens == 1


def test_client_backpressure_pauses_upstream() -> None:
    """A client that does not read pauses the upstream transport; reading again resumes it."""
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + chunk(b"a" * 1000))
    channel = client.transport.producer
    assert channel is not None
    channel.pauseProducing()  # the client's socket buffer is full
    assert up.transport.producerState == "paused"
    channel.resumeProducing()
    assert up.transport.producerState == "producing"
    up.send(b"0\r\n\r\n")
    assert h.tokens == 1


def test_client_stalled_past_idle_timeout_frees_the_gpu() -> None:
    """A client that stops reading for --idle-timeout loses the call; the GPU is freed."""
    h = Harness(idle_timeout=10)
    client = h.request(GET)
    up = h.upstream()
    up.send(CHUNKED_HEAD + chunk(b"a"))
    channel = client.transport.producer
    assert channel is not None
    with LogCapture() as logs:
        channel.pauseProducing()
        h.reactor.advance(10)
    assert client.aborted
    assert up.aborted
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["client_stalled"]


def test_empty_body_response_finishes() -> None:
    """A 204 (no body) is relayed and the slot released."""
    h = Harness()
    client = h.request(b"DELETE /v1/audio/voices/bob HTTP/1.1\r\nHost: gw\r\n\r\n")
    h.upstream().send(b"HTTP/1.1 204 No Content\r\n\r\n")
    status, headers, _ = parse_response(client.received())
    assert status == 204
    assert b"content-type" not in headers, "no text/html default added"
    assert h.tokens == 1


def test_upstream_error_status_passes_through_verbatim() -> None:
    """Upstream 4xx/5xx are not wrapped: status, reason, headers and body as they are."""
    h = Harness()
    client = h.request(POST)
    body = b'{"error": {"message": "voice alloy not found", "type": "BadRequest", "code": 400}}'
    h.upstream().send(
        b"HTTP/1.1 400 Bad Voice\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 400 Bad Voice\r\n")
    assert parse_response(raw)[2] == body
    assert h.tokens == 1


def test_keepalive_client_serves_two_requests_in_turn() -> None:
    """One client connection, two calls one after the other: both proxied, slot back."""
    h = Harness()
    client = h.request(GET)
    h.upstream(0).send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    client.send(GET)
    # The pooled upstream connection is reused.
    assert h.connection_attempts == 1
    h.upstream(0).send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    assert client.received().count(b"HTTP/1.1 200 OK") == 2
    assert h.tokens == 1


def test_stalled_transport_types() -> None:
    """The harness's transports are StringTransports (sanity for the assertions above)."""
    h = Harness()
    assert isinstance(h.request(GET).transport, StringTransport)


BAD_UPSTREAM_HEADS = {
    "over_the_head_limit": (
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 1000 + b"\r\n" + b"X-More: 1\r\n" * 6000,
        "over the gateway's limit of 65536 bytes",
    ),
    "one_line_over_the_head_limit": (
        b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 70000 + b"\r\n",
        "over the gateway's limit of 65536 bytes",
    ),
    "nul_in_a_value": (b"HTTP/1.1 200 OK\r\nX-Voice: al\x00loy\r\n", "control character 0x00"),
    "bare_cr_in_a_value": (b"HTTP/1.1 200 OK\r\nX-Voice: a\rb\r\n", "control character 0x0d"),
    "del_in_a_value": (b"HTTP/1.1 200 OK\r\nX-Voice: a\x7fb\r\n", "control character 0x7f"),
    "space_in_a_name": (b"HTTP/1.1 200 OK\r\nX Voice: alloy\r\n", "invalid header name 'X Voice'"),
    "space_before_the_colon": (b"HTTP/1.1 200 OK\r\nX-Voice : alloy\r\n", "invalid header name"),
    "no_colon": (b"HTTP/1.1 200 OK\r\nX-Voice alloy\r\n", "without a colon"),
    "obs_fold": (b"HTTP/1.1 200 OK\r\nX-Voice: a\r\n b\r\n", "obsolete line folding"),
    "chunked_then_identity": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n",
        "unsupported Transfer-Encoding 'chunked, identity'",
    ),
    "identity": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n", "'identity'"),
    "chunked_twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "unsupported Transfer-Encoding 'chunked, chunked'",
    ),
    "chunked_and_content_length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "both Transfer-Encoding and Content-Length",
    ),
    "conflicting_content_lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
        "invalid Content-Length '5, 6'",
    ),
    "negative_content_length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n",
        "invalid Content-Length '-1'",
    ),
    "not_http": (b"SSH-2.0-OpenSSH_9.6\r\n", "bad status line 'SSH-2.0-OpenSSH_9.6'"),
    "http_2": (b"HTTP/2.0 200 OK\r\n", "bad status line"),
    "two_digit_status": (b"HTTP/1.1 20 OK\r\n", "bad status line"),
    "signed_status": (b"HTTP/1.1 +200 OK\r\n", "bad status line"),
    "nul_in_the_reason": (b"HTTP/1.1 200 O\x00K\r\n", "bad status line"),
}


@pytest.mark.parametrize("name", sorted(BAD_UPSTREAM_HEADS))
def test_invalid_upstream_head_is_502_with_a_sane_message(name: str) -> None:
    """A head the gateway will not relay: 502 saying what was wrong, upstream closed, no leak."""
    head, reason = BAD_UPSTREAM_HEADS[name]
    h = Harness()
    client = h.request(GET)
    up = h.upstream()
    with LogCapture() as logs:
        up.send(head + b"\r\nbody")
    assert parse_response(client.received())[0] == 502
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("upstream_error", "qwen3-tts")
    assert error["message"].startswith("the upstream's response is not valid HTTP/1.1: ")
    assert reason in error["message"]
    assert "Error" not in error["message"], "no exception class names for the client"
    assert up.closed, "the upstream connection is closed"
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["upstream_error"]
    assert not logs.failures()


GOOD_ODD_HEADS = {
    "no_reason_phrase": b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    "lf_line_ends": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "interim_100_first": b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "repeated_equal_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "obs_text_and_tab_in_a_value": b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\tau lait\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "upper_case_chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    "http_1_0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "head_just_under_the_limit": b"HTTP/1.1 200 OK\r\n"
    + b"X-Pad: "
    + b"p" * 1000
    + b"\r\n" * 1
    + b"X-More: 1\r\n" * 5800
    + b"Content-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("name", sorted(GOOD_ODD_HEADS))
def test_valid_but_unusual_upstream_heads_are_relayed(name: str) -> None:
    """Strict, not brittle: what HTTP/1.1 allows (and Twisted accepted) still gets through."""
    h = Harness()
    client = h.request(GET)
    h.upstream().send(GOOD_ODD_HEADS[name])
    status, _headers, body = parse_response(client.received())
    assert status == 200
    assert body in (b"ok", b"2\r\nok\r\n0\r\n\r\n")
    assert h.tokens == 1
