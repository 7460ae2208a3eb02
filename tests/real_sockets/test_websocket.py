"""WebSocket passthrough end to end on 127.0.0.1: sessions, the slot, and how sessions end.

A real client, the gateway in process (``TTSProxy(...).site()`` on a real port), and real
upstreams on pytest-twisted's reactor: the demo upstream (vLLM-Omni's
``/v1/audio/speech/stream`` protocol, served by autobahn) and a small autobahn echo server.
A whole session is what the demo says directly; an open session holds the slot (HTTP calls
and second handshakes get 503 before any upgrade); a client leaving or closing stops
generation; an upstream drop closes the client; 5 MB frames arrive byte-exact; an idle
session is closed on both sides; a refused upgrade is relayed verbatim; an unreachable
upstream gets 503. The client is the ``websockets`` package's synchronous client, each
blocking call run in a thread (``deferToThread``) so the reactor keeps serving; the
abrupt-close client is a raw socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from aistack_tts import TTSProxy
from aistack_tts_demo._synth import FRAME_BYTES
from support.logs import Captured
from support.reactor import disconnected, listen_tracking, reactor, twisted_test, until
from support.websocket import (
    PATIENCE,
    STREAM,
    STREAMING,
    EchoFactory,
    Stacks,
    masked_text,
    raw_handshake,
    rejection,
    send_json,
    speech_of,
    utterance,
    ws_connect,
)

pytestmark = [pytest.mark.real_sockets]


@twisted_test
async def test_whole_session_through_the_gateway(ws_stacks: Stacks, access_log: Captured) -> None:
    """The demo's streaming-text session through the gateway is what the demo says directly:
    each sentence's events and real audio, session.done; the slot is held until the end."""
    stack = ws_stacks.demo()
    texts = ["Hello there. How are", " you today? Fine"]
    direct = await deferToThread(utterance, stack.url(direct=True), texts)
    proxied = await deferToThread(utterance, stack.url(), texts)
    assert proxied.events == direct.events
    assert proxied.audio == direct.audio
    sentences = ["Hello there.", "How are you today?", "Fine"]
    assert [e.get("sentence_text") for e in proxied.events if e["type"] == "audio.start"] == (
        sentences
    )
    assert proxied.events[-1] == {
        "type": "session.done",
        "utterance_index": 0,
        "total_sentences": 3,
    }
    for index, sentence in enumerate(sentences):
        assert proxied.audio[index] == speech_of(sentence)
        assert len(proxied.audio[index]) % FRAME_BYTES == 0
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    [event] = access_log.events[-1:]
    assert (event["status"], event["outcome"], event["slot"]) == (
        101,
        "ws_closed_by_upstream",
        "held",
    )


@twisted_test
async def test_http_speech_while_a_session_is_open_gets_gpu_busy(ws_stacks: Stacks) -> None:
    """An open WebSocket session holds the GPU slot: a POST speech gets 503 gpu_busy (with
    no queue; with one it waits for the session to end)."""
    stack = ws_stacks.demo(queue_timeout=0)
    ws = await deferToThread(ws_connect, stack.url())
    await deferToThread(send_json, ws, {"type": "session.config", "voice": "Ryan"})
    assert stack.slot.tokens == 0

    def post() -> tuple[int, dict[str, str], dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{stack.port}/v1/audio/speech",
            data=json.dumps({"input": "Hi", "voice": "Ryan"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=PATIENCE).close()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read())
        raise AssertionError("the POST was served")

    status, headers, body = await deferToThread(post)
    assert status == 503
    assert body["error"]["code"] == "gpu_busy"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert "retry-after-ms" in {name.lower() for name in headers}
    await deferToThread(ws.close)
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)


@twisted_test
async def test_second_websocket_gets_503_before_any_upgrade(ws_stacks: Stacks) -> None:
    """While one session holds the slot, a second handshake is refused by the gateway itself:
    503 gpu_busy with Retry-After, and the upstream never sees it (with no queue)."""
    stack = ws_stacks.demo(queue_timeout=0)
    first = await deferToThread(ws_connect, stack.url())
    refused = await deferToThread(rejection, stack.url())
    response = refused.response
    assert response.status_code == 503
    assert json.loads(response.body or b"")["error"]["type"] == "gpu_busy"
    assert "Retry-After" in response.headers
    assert "retry-after-ms" in response.headers
    assert "Upgrade" not in response.headers
    assert len(stack.upstream_channels) == 1, "only the first session reached the upstream"
    await deferToThread(first.close)


@twisted_test
async def test_client_leaving_stops_generation_within_a_second(
    ws_stacks: Stacks, demo_log: Captured, access_log: Captured
) -> None:
    """A client that drops its connection mid-sentence: the gateway closes the upstream
    connection, the demo stops generating (and says so) within a second, the slot is free."""
    stack = ws_stacks.demo()

    def start_and_drop() -> float:
        sock = raw_handshake(stack.port)
        config = json.dumps({"type": "session.config", "voice": "Eric", **STREAMING}).encode()
        sock.sendall(masked_text(config))
        text = "A long sentence that keeps the demo busy for quite a while, on and on. "
        sock.sendall(masked_text(json.dumps({"type": "input.text", "text": text}).encode()))
        while b"\x82" not in sock.recv(65536):  # until the first binary frame
            pass
        dropped = time.monotonic()
        sock.close()
        return dropped

    dropped = await deferToThread(start_and_drop)
    await until(
        lambda: bool(demo_log.matching("speech stream aborted")),
        "the demo to stop generating",
        timeout=PATIENCE,
    )
    [(aborted, _event)] = demo_log.matching("speech stream aborted")
    assert aborted - dropped < 1.0
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    assert access_log.outcomes()[-1] == "ws_closed_by_client"


@twisted_test
async def test_client_closing_cleanly_stops_generation(
    ws_stacks: Stacks, demo_log: Captured
) -> None:
    """A clean close mid-sentence reaches the demo, which stops; the slot is freed."""
    stack = ws_stacks.demo()

    def start_and_close() -> None:
        with ws_connect(stack.url()) as ws:
            send_json(ws, {"type": "session.config", "voice": "Serena", **STREAMING})
            send_json(ws, {"type": "input.text", "text": "One long sentence, on and on. "})
            while not isinstance(ws.recv(timeout=PATIENCE), bytes):
                pass

    await deferToThread(start_and_close)
    await until(
        lambda: bool(demo_log.matching("speech stream aborted")),
        "the demo to stop generating",
        timeout=PATIENCE,
    )
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)


@twisted_test
async def test_upstream_dropping_the_connection_closes_the_client(
    ws_stacks: Stacks, access_log: Captured
) -> None:
    """An upstream that cuts its connection: the client's connection ends too, slot freed."""
    stack = ws_stacks.start(EchoFactory())

    def drop() -> type[BaseException]:
        with ws_connect(stack.url()) as ws:
            ws.send(b"drop")
            try:
                ws.recv(timeout=PATIENCE)
            except ConnectionClosed as e:
                return type(e)
        raise AssertionError("the connection stayed open")

    closed = await deferToThread(drop)
    assert closed is not ConnectionClosedOK, "no close frame: the upstream cut the connection"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    assert access_log.outcomes()[-1] == "ws_closed_by_upstream"


@twisted_test
async def test_five_megabyte_frames_arrive_byte_exact_both_ways(ws_stacks: Stacks) -> None:
    """A 5 MB binary message each way, in one frame, arrives byte for byte."""
    echo = EchoFactory()
    stack = ws_stacks.start(echo)
    payload = os.urandom(5 * 1000 * 1000)

    def round_trip() -> bytes:
        with ws_connect(stack.url(), compression=None) as ws:
            ws.send(payload)
            answer = ws.recv(timeout=PATIENCE)
            assert isinstance(answer, bytes)
            return answer

    answer = await deferToThread(round_trip)
    assert echo.received == [hashlib.sha256(payload).hexdigest()], "client → upstream"
    assert answer == payload, "upstream → client"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)


@twisted_test
async def test_idle_session_is_closed_on_both_sides(
    ws_stacks: Stacks, access_log: Captured
) -> None:
    """No byte either way for --ws-idle-timeout: both sides get a 1001 close, the slot is freed."""
    echo = EchoFactory()
    stack = ws_stacks.start(echo, ws_idle_timeout=0.5)

    def idle() -> tuple[float, Any]:
        with ws_connect(stack.url(), ping_interval=None) as ws:
            ws.send("one message first")
            assert ws.recv(timeout=PATIENCE) == "one message first"
            opened = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=PATIENCE)
            return time.monotonic() - opened, closed.value.rcvd

    waited, received = await deferToThread(idle)
    assert waited >= 0.5
    assert (received.code, received.reason) == (1001, "idle timeout")
    await until(lambda: bool(echo.closed), "the upstream to see the close", timeout=PATIENCE)
    assert echo.close_codes == [1001]
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    assert access_log.outcomes()[-1] == "ws_idle"


@twisted_test
async def test_upstream_refusing_the_upgrade_is_relayed_verbatim(
    ws_stacks: Stacks, access_log: Captured
) -> None:
    """The upstream's non-101 answer (the demo's 404) reaches the client as it is; slot freed."""
    stack = ws_stacks.demo()
    direct = await deferToThread(rejection, stack.url("/v1/audio/nowhere", direct=True))
    proxied = await deferToThread(rejection, stack.url("/v1/audio/nowhere"))
    assert proxied.response.status_code == direct.response.status_code == 404
    assert proxied.response.reason_phrase == direct.response.reason_phrase
    assert proxied.response.body == direct.response.body
    # The demo's 404 is Starlette's (fastapi/exception_handlers.py @ c3f316b7e814).
    assert json.loads(proxied.response.body or b"") == {"detail": "Not Found"}
    assert proxied.response.headers["Content-Type"] == "application/json"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    assert access_log.outcomes()[-1] == "ws_rejected"


@twisted_test
async def test_unreachable_upstream_gets_503_upstream_unavailable(ws_stacks: Stacks) -> None:
    stack = ws_stacks.demo()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy = TTSProxy(upstream=f"http://127.0.0.1:{closed_port}", reactor=reactor)
    listening, channels = listen_tracking(proxy.site())
    try:
        port = listening.getHost().port  # type: ignore[attr-defined]
        refused = await deferToThread(rejection, f"ws://127.0.0.1:{port}{STREAM}")
        assert refused.response.status_code == 503
        error = json.loads(refused.response.body or b"")["error"]
        assert (error["type"], error["provider"]) == ("upstream_unavailable", "qwen3-tts")
        await until(lambda: proxy.slot.in_use == 0, "the slot to come back", timeout=PATIENCE)
        await until(lambda: all(disconnected(c) for c in channels), "closed", timeout=PATIENCE)
    finally:
        await maybeDeferred(listening.stopListening)
        await proxy.close()
    assert stack.slot_free
