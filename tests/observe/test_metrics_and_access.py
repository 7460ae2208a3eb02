"""Operations: /metrics, /healthz, /readyz, request ids and the JSON access log."""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.logger import eventAsJSON
from twisted.python.failure import Failure

from support.harness import Harness, upstream_request
from support.logs import LogCapture
from support.wire import envelope, parse_response

GET_VOICES = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"


def get(h: Harness, path: bytes) -> bytes:
    return h.request(b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n" % path).received()


def test_healthz_answers_without_upstream_or_slot() -> None:
    """/healthz says the process is up, even while the GPU slot is taken."""
    h = Harness()
    h.slot.acquire()
    status, headers, body = parse_response(get(h, b"/healthz"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers[b"content-type"] == [b"application/json"]
    assert h.connection_attempts == 0


def accept_probe(h: Harness, index: int = -1) -> None:
    """Let the readiness probe's TCP connection succeed."""
    _host, _port, factory, _timeout, _bind = h.reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8091))
    assert protocol is not None
    protocol.makeConnection(StringTransport())


def test_readyz_probes_the_upstream_and_caches_the_answer() -> None:
    """/readyz connects to the upstream once; the answer is reused for a few seconds."""
    h = Harness()
    client = h.request(b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert client.received() == b""
    accept_probe(h)
    status, _headers, body = parse_response(client.received())
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    assert parse_response(get(h, b"/readyz"))[0] == 200
    assert h.connection_attempts == 1, "the second check used the cached answer"
    h.reactor.advance(3)
    h.request(b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert h.connection_attempts == 2
    assert h.tokens == 1


def test_readyz_is_503_when_the_upstream_refuses() -> None:
    """An upstream that refuses connections makes /readyz a 503 not_ready envelope."""
    h = Harness()
    client = h.request(b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
    _host, _port, factory, _timeout, _bind = h.reactor.tcpClients[-1]
    connector: object = None
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
    h.reactor.advance(0.3)
    assert parse_response(client.received())[0] == 503
    error = envelope(client.received())
    assert (error["type"], error["provider"]) == ("not_ready", "qwen3-tts")
    assert "docker compose up -d" in error["message"]


@pytest.mark.parametrize(
    ("switch", "path"), [("health", b"/healthz"), ("health", b"/readyz"), ("metrics", b"/metrics")]
)
def test_routes_can_be_switched_off(switch: str, path: bytes) -> None:
    """With metrics or health off, those paths are 404 envelopes like any unknown route."""
    h = Harness(**{switch: False})
    raw = get(h, path)
    assert parse_response(raw)[0] == 404
    assert envelope(raw)["type"] == "not_found"


def test_metrics_count_requests_slot_and_bytes() -> None:
    """After a call and a refusal, /metrics shows them: requests, busy, timings, bytes."""
    h = Harness()
    client = h.request(GET_VOICES)
    up = h.upstream()
    up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert parse_response(client.received())[0] == 200
    h.slot.acquire()
    h.request(GET_VOICES)
    text = parse_response(get(h, b"/metrics"))[2].decode()
    assert 'aistack_tts_requests_total{method="GET",provider="qwen3-tts",status="200"} 1.0' in text
    assert 'aistack_tts_requests_total{method="GET",provider="aistack",status="503"} 1.0' in text
    assert "aistack_tts_gpu_busy_total 1.0" in text
    assert "aistack_tts_slot_in_use 1.0" in text
    assert "aistack_tts_in_flight 0.0" in text
    assert "aistack_tts_streamed_bytes_total 5.0" in text
    assert "aistack_tts_upstream_headers_seconds_count 1.0" in text
    assert "aistack_tts_slot_held_seconds_count 1.0" in text


def test_metrics_count_faults_and_client_aborts() -> None:
    """Upstream faults are counted by type; a client leaving counts as an abort."""
    h = Harness()
    h.request(GET_VOICES)
    h.refuse()
    h.reactor.advance(5)  # the refusing upstream's cool-down
    client = h.request(GET_VOICES)
    h.upstream()
    client.lose()
    text = parse_response(get(h, b"/metrics"))[2].decode()
    faults = (
        'aistack_tts_upstream_faults_total{type="unavailable",upstream="http://127.0.0.1:8091"}'
    )
    assert f"{faults} 1.0" in text
    assert "aistack_tts_client_aborts_total 1.0" in text


def test_hostile_methods_do_not_grow_metric_labels() -> None:
    """Made-up methods share one label value."""
    h = Harness()
    for method in (b"FOO", b"BAR"):
        h.request(b"%s /v1/audio/x HTTP/1.1\r\nHost: gw\r\n\r\n" % method)
    text = parse_response(get(h, b"/metrics"))[2].decode()
    assert 'method="other",provider="aistack",status="405"} 2.0' in text
    assert "FOO" not in text


def test_request_id_is_generated_and_forwarded() -> None:
    """Without an X-Request-Id the gateway makes one, forwards it and logs it."""
    h = Harness()
    with LogCapture() as logs:
        h.request(GET_VOICES)
        up = h.upstream()
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    [sent] = [v for n, v in upstream_request(up)[1] if n == b"x-request-id"]
    [event] = logs.access()
    assert event["request_id"] == sent.decode()
    assert len(sent) == 32


def test_client_request_id_is_kept_and_json_logged() -> None:
    """A client's X-Request-Id goes upstream as is; the JSON access line carries it."""
    h = Harness()
    with LogCapture() as logs:
        h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Request-Id: abc-123\r\n\r\n")
        up = h.upstream()
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [v for n, v in upstream_request(up)[1] if n == b"x-request-id"] == [b"abc-123"]
    line = json.loads(eventAsJSON(logs.access()[0]))
    assert (line["request_id"], line["status"], line["method"], line["slot"]) == (
        "abc-123",
        200,
        "GET",
        "held",
    )
    assert line["path"] == "/v1/audio/voices"
    assert line["provider"] == "qwen3-tts"


def test_insane_request_id_is_replaced() -> None:
    """An over-long or spaced X-Request-Id is replaced, not forwarded or logged."""
    h = Harness()
    h.request(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Request-Id: a b\r\n\r\n")
    [sent] = [v for n, v in upstream_request(h.upstream())[1] if n == b"x-request-id"]
    assert sent != b"a b"
    assert len(sent) == 32


def test_queue_wait_and_slot_hold_add_up_to_the_logged_duration() -> None:
    """A call that waited 2 s for the GPU and held it 1 s logs duration 3 s, with both parts."""
    h = Harness(queue_timeout=10)
    h.slot.acquire()
    with LogCapture() as logs:
        client = h.request(GET_VOICES)
        h.reactor.advance(2)
        h.slot.release()
        up = h.upstream()
        h.reactor.advance(1)
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parse_response(client.received())[0] == 200
    [event] = logs.access()
    assert (event["queue_wait"], event["slot_held"], event["duration"]) == (2.0, 1.0, 3.0)
    assert event["upstream"] == "http://127.0.0.1:8091"
    text = parse_response(get(h, b"/metrics"))[2].decode()
    assert "aistack_tts_queue_wait_seconds_sum 2.0" in text


def test_a_queued_call_that_times_out_logs_its_wait() -> None:
    """The 503 after the queue timeout says how long the request waited."""
    h = Harness(queue_timeout=4)
    h.slot.acquire()
    with LogCapture() as logs:
        client = h.request(GET_VOICES)
        h.reactor.advance(4)
    raw = client.received()
    assert envelope(raw)["type"] == "gpu_busy"
    [event] = logs.access()
    assert (event["queue_wait"], event["duration"], event["slot"]) == (4.0, 4.0, "busy")
    assert event["bytes_out"] == len(parse_response(raw)[2])
    assert parse_response(raw)[1][b"x-request-id"] == [event["request_id"].encode()]
