"""The WebSocket tunnel before and instead of a 101, deterministically: a busy or draining
gateway, an unreachable or silent upstream, a client leaving early, broken and interim answers,
a refused upgrade relayed as HTTP, and requests that are not tunnelled at all."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost

from aistack_tts.client._head import MAX_UPSTREAM_HEAD as MAX_HEAD_BYTES
from aistack_tts.tunnel._session import WebSocketTunnel
from support.logs import LogCapture
from support.tunnel import (
    HANDSHAKE,
    SWITCHED,
    SWITCHING,
    assert_released_once,
    harness,
    outcome,
    tunnel,
)
from support.wire import dechunk, envelope, parse_response

# --- before the upgrade ---------------------------------------------------------------------


def test_busy_slot_answers_503_before_any_upgrade() -> None:
    h, _slot = harness()
    h.slot.acquire()  # the GPU is busy
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
    status, headers, _ = parse_response(client.received())
    assert status == 503
    assert headers[b"retry-after"] == [b"1"]
    assert b"retry-after-ms" in headers
    assert b"upgrade" not in headers
    assert envelope(client.received())["type"] == "gpu_busy"
    assert h.connection_attempts == 0
    assert outcome(logs) == (503, "gpu_busy", "busy")


def test_draining_answers_503_before_any_upgrade() -> None:
    h, _slot = harness()
    h.proxy.drain(1.0)
    client = h.request(HANDSHAKE)
    assert parse_response(client.received())[0] == 503
    assert envelope(client.received())["type"] == "draining"
    assert h.connection_attempts == 0


def test_unreachable_upstream_answers_503_upstream_unavailable() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        h.refuse()
    status, headers, _ = parse_response(client.received())
    error = envelope(client.received())
    assert (status, error["type"], error["provider"]) == (503, "upstream_unavailable", "qwen3-tts")
    assert "docker compose up -d" in error["message"]
    assert headers[b"retry-after"] == [b"5"]
    assert_released_once(h, slot)
    assert outcome(logs) == (503, "upstream_unavailable", "held")


def test_client_leaving_while_connecting_cancels_the_attempt() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        client.lose()
        assert_released_once(h, slot)
        h.reactor.advance(1)  # whatever the endpoint still had scheduled
    assert_released_once(h, slot)
    assert outcome(logs) == (None, "client_abort", "held")
    assert not logs.failures()


def test_client_leaving_during_the_handshake_closes_the_upstream() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        client.lose()
        assert up.aborted
        assert_released_once(h, slot)
        up.send(SWITCHING)  # too late: nothing happens
        up.lose(ConnectionDone)
    assert_released_once(h, slot)
    assert outcome(logs) == (None, "client_abort", "held")


def test_upstream_closing_before_answering_gives_502() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 101 Swi")
    up.lose(ConnectionDone)
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert error["message"].startswith("ResponseNeverReceived: ")
    assert_released_once(h, slot)


def test_no_answer_in_time_gives_504() -> None:
    h, slot = harness(idle_timeout=10.0)
    client = h.request(HANDSHAKE)
    up = h.upstream()
    h.reactor.advance(10)
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (504, "upstream_timeout")
    assert_released_once(h, slot)


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 101 OK\r\n" + b"X-Big: " + b"y" * MAX_HEAD_BYTES],
)
def test_a_broken_answer_gives_502(answer: bytes) -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(answer)
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert error["message"].startswith("UpstreamProtocolError: ")
    assert_released_once(h, slot)


def test_interim_answers_count_against_the_one_head_limit() -> None:
    """As the HTTP client counts them: 1xx heads under the limit each but over it together."""
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: " + b"l" * 1000 + b"\r\n\r\n"
    for _ in range(MAX_HEAD_BYTES // len(hints) + 1):
        up.send(hints)
    assert up.aborted
    error = envelope(client.received())
    assert (parse_response(client.received())[0], error["type"]) == (502, "upstream_error")
    assert "over the gateway's limit of 65536 bytes" in error["message"]
    assert_released_once(h, slot)


def test_a_bare_lf_101_opens_the_tunnel() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 103 Early Hints\n\n")
    up.send(b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\n")
    up.send(b"\x81\x02hi")
    assert client.received() == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"X-Request-Id: ws-1\r\n\r\n\x81\x02hi"
    )
    assert slot.releases == 0


def test_drain_timeout_while_waiting_for_the_answer_gives_the_envelope() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    h.proxy.drain(1.0)
    h.reactor.advance(1)
    assert up.aborted
    assert envelope(client.received())["type"] == "draining"
    assert_released_once(h, slot)


def test_an_interim_answer_is_skipped() -> None:
    h, _slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHING)
    assert client.received() == SWITCHED
    assert tunnel(h).state == "open"


def test_the_upstreams_own_request_id_on_a_101_is_kept() -> None:
    """A 101 that carries the upstream's own X-Request-Id goes to the client as it is."""
    h, _slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        own = SWITCHING[:-2] + b"x-request-id: up-9\r\n\r\n"
        up.send(own)
        assert client.received() == own
        client.lose(ConnectionDone)
    [event] = logs.access()
    assert (event["request_id"], event["gateway_request_id"]) == ("up-9", "ws-1")


# --- another answer than 101 ----------------------------------------------------------------


def test_a_refused_upgrade_is_relayed_verbatim_and_frees_the_slot() -> None:
    h, slot = harness()
    body = b'{"error": {"message": "Not Found", "type": "NotFoundError", "code": 404}}'
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(
            b"HTTP/1.1 404 Not Here\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nX-Upstream: yes\r\nConnection: keep-alive\r\n\r\n"
            % len(body)
            + body
        )
    raw = client.received()
    assert raw.startswith(b"HTTP/1.1 404 Not Here\r\n")
    status, headers, received = parse_response(raw)
    assert (status, received) == (404, body)
    assert headers[b"content-type"] == [b"application/json"]
    assert headers[b"content-length"] == [b"%d" % len(body)]
    assert headers[b"x-upstream"] == [b"yes"]
    assert b"upgrade" not in headers
    assert up.closed, "the refused connection is not reused"
    assert not client.closed, "the client's HTTP connection stays usable"
    assert_released_once(h, slot)
    assert outcome(logs) == (404, "ws_rejected", "held")
    [event] = logs.access()
    assert (event["provider"], event["bytes_out"]) == ("qwen3-tts", len(body))


def test_a_chunked_refusal_is_relayed_whole() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n")
    assert slot.releases == 0
    up.send(b"0\r\n\r\n")
    status, _headers, body = parse_response(client.received())
    assert (status, dechunk(body)) == (400, (b"nope", True))
    assert_released_once(h, slot)


def test_a_refusal_ended_by_closing_is_relayed_whole() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 403 Forbidden\r\n\r\nno ")
    up.send(b"way")
    up.lose(ConnectionDone)
    status, _headers, body = parse_response(client.received())
    assert (status, dechunk(body)) == (403, (b"no way", True))
    assert_released_once(h, slot)


def test_a_truncated_refusal_aborts_the_client() -> None:
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nabc")
        up.lose(ConnectionLost)
    assert client.aborted
    assert_released_once(h, slot)
    assert outcome(logs) == (404, "upstream_error_mid_body", "held")


def test_a_refusal_ended_by_a_reset_aborts_the_client() -> None:
    """A body delimited by the close is whole only on a clean FIN, as for a call."""
    h, slot = harness()
    with LogCapture() as logs:
        client = h.request(HANDSHAKE)
        up = h.upstream()
        up.send(b"HTTP/1.1 403 Forbidden\r\n\r\nno ")
        up.lose(ConnectionLost)
    assert client.aborted
    _status, _headers, body = parse_response(client.received())
    assert dechunk(body) == (b"no ", False), "no last chunk: the client sees a cut body"
    assert_released_once(h, slot)
    assert outcome(logs) == (403, "upstream_error_mid_body", "held")


def test_client_leaving_during_a_refusal_closes_the_upstream() -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    up = h.upstream()
    up.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nabc")
    client.lose()
    assert up.aborted
    assert_released_once(h, slot)


# --- what is not tunnelled ------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Upgrade that Connection does not name: plain HTTP, Upgrade dropped as hop-by-hop.
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\r\n",
        # HTTP/1.0 cannot upgrade.
        b"GET /v1/audio/voices HTTP/1.0\r\nHost: gw\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n",
    ],
)
def test_requests_that_cannot_upgrade_are_proxied_as_http(request_bytes: bytes) -> None:
    h, _slot = harness()
    h.request(request_bytes)
    up = h.upstream()
    sent = up.received().lower()
    assert b"upgrade" not in sent
    assert not any(isinstance(t, WebSocketTunnel) for t in h.proxy.calls)


def test_a_request_pipelined_behind_a_refused_upgrade_finds_the_slot_free() -> None:
    """The slot is released before the refusal ends, so the next request is not told 503."""
    h, slot = harness()
    client = h.request(HANDSHAKE + b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
    h.upstream().send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert slot.releases == 1
    assert h.connection_attempts == 2, "the pipelined GET went upstream"
    assert b" 503 " not in client.received()
