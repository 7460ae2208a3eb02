"""Real sockets: every way a call through the gateway ends gives the slot back.

The gateway runs in this process (pytest-twisted's reactor; ``TTSProxy(...).site()`` on a
real listening port, so a test can look at the slot's tokens) in front of the scriptable
upstream process (``testbed.upstream_server``), which reports what happened to each request
(START, HEADERS, STALLED, DONE, CLOSED, FAULT) on stdout, so the tests wait for events instead
of sleeping: a whole call, an upstream that refuses, fails or answers 500, a client that
leaves before or during the body, the idle timeout, and a second call while one streams.
"""

from __future__ import annotations

import pytest
from twisted.internet.interfaces import IPushProducer

from support.inprocess import (
    Gateways,
    InProcessGateway,
    MiB,
    assert_envelope,
    http_request,
    new_id,
    tcp,
    upstream_event,
)
from support.reactor import twisted_test
from testbed.processes import UpstreamProcess
from testbed.upstream_server import pattern

pytestmark = [pytest.mark.real_sockets]


# (c) Every way a call ends gives the slot back.


@twisted_test
async def test_completed_call_streams_whole_body_and_releases_slot(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """A normal call: the whole body arrives, chunked and terminated, and the slot is free."""
    ident = new_id()
    client, response = await inprocess_gateway.exchange(
        http_request(b"GET", b"/v1/audio/stream?bytes=3000000&id=%s" % ident.encode())
    )
    assert response.status == 200
    assert response.complete
    assert response.body == pattern(3_000_000)
    assert client.closed_cleanly
    assert (await upstream_event(upstream, ident, {"DONE", "CLOSED"})).kind == "DONE"
    await inprocess_gateway.slot_released()


@twisted_test
async def test_upstream_refusing_connection_gives_503_unavailable(
    inprocess_gateways: Gateways, refused_upstream: str
) -> None:
    """Nothing listens upstream: 503 upstream_unavailable from qwen3-tts, with Retry-After."""
    gateway = inprocess_gateways(refused_upstream)
    _, response = await gateway.exchange(http_request(b"POST", b"/v1/audio/speech", body=b"{}"))
    error = assert_envelope(response, 503, "upstream_unavailable", "qwen3-tts")
    assert "docker compose up -d" in error["message"]
    assert response.header(b"retry-after")
    await gateway.slot_released()


@twisted_test
async def test_upstream_500_passes_through_verbatim(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway
) -> None:
    """An upstream 500 is the upstream's own answer: status, reason, headers and body unchanged."""
    _, response = await inprocess_gateway.exchange(
        http_request(b"GET", b"/v1/audio/error?status=500")
    )
    assert response.status == 500
    assert response.reason == b"Upstream Exploded"
    assert response.header(b"x-upstream-error") == [b"yes"]
    assert response.header(b"content-type") == [b"application/json"]
    assert response.body == b'{"detail": "the upstream exploded"}'
    await inprocess_gateway.slot_released()


@pytest.mark.parametrize(
    "fault", [b"reset=400000", b"close_after_headers=1", b"reset=400000&length=1"]
)
@twisted_test
async def test_upstream_failing_mid_body_aborts_client(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway, fault: bytes
) -> None:
    """The upstream breaks after its headers: the client connection is aborted, never ended
    as if the truncated body were whole, and the slot is free."""
    ident = new_id()
    client, response = await inprocess_gateway.exchange(
        http_request(b"GET", b"/v1/audio/stream?bytes=2000000&%s&id=%s" % (fault, ident.encode()))
    )
    assert (await upstream_event(upstream, ident, {"FAULT", "DONE"})).kind == "FAULT"
    assert not response.complete
    assert not client.closed_cleanly
    assert not bytes(client.received).endswith(b"0\r\n\r\n")
    assert len(response.body) <= 400_000
    await inprocess_gateway.slot_released()


@pytest.mark.parametrize("how", ["close", "abort"])
@twisted_test
async def test_client_leaving_before_headers_closes_upstream(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway, how: str
) -> None:
    """The client goes away while the upstream has not answered yet: the upstream connection
    is closed and the slot is free."""
    ident = new_id()
    client = await inprocess_gateway.connect(
        http_request(b"GET", b"/v1/audio/stream?bytes=1000&delay=30&id=%s" % ident.encode())
    )
    await upstream_event(upstream, ident, {"START"})
    if how == "close":
        tcp(client.transport).loseConnection()
    else:
        tcp(client.transport).abortConnection()
    assert (await upstream_event(upstream, ident, {"CLOSED", "DONE"})).kind == "CLOSED"
    assert upstream.first(ident, {"HEADERS"}) is None
    await inprocess_gateway.slot_released()


@pytest.mark.parametrize("how", ["close", "abort"])
@twisted_test
async def test_client_leaving_mid_body_closes_upstream(
    upstream: UpstreamProcess, inprocess_gateway: InProcessGateway, how: str
) -> None:
    """The client goes away while the body streams: the upstream connection is closed (so
    generation stops) long before the 300 MB are sent, and the slot is free."""
    ident = new_id()
    client = await inprocess_gateway.connect(
        http_request(b"GET", b"/v1/audio/stream?bytes=%d&id=%s" % (300 * MiB, ident.encode()))
    )
    await client.headers_and(64 * 1024)
    if how == "close":
        tcp(client.transport).loseConnection()
    else:
        tcp(client.transport).abortConnection()
    event = await upstream_event(upstream, ident, {"CLOSED", "DONE"})
    assert event.kind == "CLOSED"
    assert event.sent < 300 * MiB
    await inprocess_gateway.slot_released()


@twisted_test
async def test_idle_timeout_before_headers_gives_504(
    upstream: UpstreamProcess, inprocess_gateways: Gateways
) -> None:
    """The upstream says nothing for longer than the idle timeout: 504 upstream_timeout from
    qwen3-tts, the upstream connection is closed and the slot is free."""
    gateway = inprocess_gateways(upstream.url, idle_timeout=0.3)
    ident = new_id()
    _, response = await gateway.exchange(
        http_request(b"GET", b"/v1/audio/stream?delay=30&id=%s" % ident.encode())
    )
    assert_envelope(response, 504, "upstream_timeout", "qwen3-tts")
    assert (await upstream_event(upstream, ident, {"CLOSED", "DONE"})).kind == "CLOSED"
    await gateway.slot_released()


@twisted_test
async def test_second_request_while_first_streams_gets_gpu_busy(
    upstream: UpstreamProcess, inprocess_gateways: Gateways
) -> None:
    """With ``queue_timeout=0``, while one call streams another gets 503 gpu_busy at once
    with Retry-After (whole seconds, 1..60) and retry-after-ms; the slot is free again after
    the first call ends."""
    inprocess_gateway = inprocess_gateways(upstream.url, queue_timeout=0)
    first_id = new_id()
    first = await inprocess_gateway.connect(
        http_request(b"GET", b"/v1/audio/stream?bytes=%d&id=%s" % (300 * MiB, first_id.encode()))
    )
    await first.headers_and(64 * 1024)
    IPushProducer(
        first.transport
    ).pauseProducing()  # stop reading: the first call cannot finish meanwhile
    assert inprocess_gateway.tokens == 0
    _, busy = await inprocess_gateway.exchange(
        http_request(b"POST", b"/v1/audio/speech", body=b"{}")
    )
    assert_envelope(busy, 503, "gpu_busy", "aistack")
    (retry_after,) = busy.header(b"retry-after")
    assert 1 <= int(retry_after) <= 60
    (retry_after_ms,) = busy.header(b"retry-after-ms")
    assert int(retry_after_ms) >= 0
    tcp(first.transport).abortConnection()
    assert (await upstream_event(upstream, first_id, {"CLOSED", "DONE"})).kind == "CLOSED"
    await inprocess_gateway.slot_released()
