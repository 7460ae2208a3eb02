"""WebSocket passthrough end to end on 127.0.0.1: a real client, the gateway, real upstreams.

The upstreams run on pytest-twisted's global reactor: the demo upstream (vLLM-Omni's
``/v1/audio/speech/stream`` protocol, served by autobahn), a small autobahn echo server for the
byte-exactness and close tests, and a raw flood server for the slow-reader test. The gateway is
in process (``TTSProxy(...).site()`` on a real port), except for the RSS test, which runs it as
a ``twist aistack-tts`` process to read its memory. The client is the ``websockets`` package's
synchronous client, each blocking call run in a thread (``deferToThread``) so the reactor keeps
serving; the abrupt-close and slow-reader clients are raw sockets.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from zope.interface import implementer

from aistack_tts import TTSProxy
from aistack_tts._tunnel import WebSocketTunnel
from aistack_tts_demo import DemoUpstream
from aistack_tts_demo._synth import FRAME_BYTES, synthesize
from aistack_tts_demo._voices import VoiceRegistry
from support.logs import Captured
from support.processes import AISTACK_TTS, GatewayProcess
from support.reactor import (
    blockon,
    disconnected,
    listen_tracking,
    new_delayed_calls,
    reactor,
    twisted_test,
    until,
)

pytestmark = [pytest.mark.real_sockets]

STREAM = "/v1/audio/speech/stream"
#: Everything normally happens in milliseconds; this only bounds a hang.
PATIENCE = 15.0
MiB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# --- log capture ----------------------------------------------------------------------------


# --- upstreams ------------------------------------------------------------------------------


class EchoProtocol(WebSocketServerProtocol):
    """Echoes every message; ``drop`` cuts the TCP connection, ``close`` closes cleanly."""

    factory: EchoFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload == b"drop":
            transport: Any = self.transport
            transport.abortConnection()
        elif payload == b"close":
            self.sendClose(1000)
        else:
            self.factory.received.append(hashlib.sha256(payload).hexdigest())
            self.sendMessage(payload, isBinary)  # type: ignore[no-untyped-call]

    def onOpen(self) -> None:
        self.factory.opened += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closed.append(time.monotonic())
        self.factory.close_codes.append(code)


class EchoFactory(WebSocketServerFactory):
    protocol = EchoProtocol  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(reactor=reactor)  # type: ignore[no-untyped-call]
        self.received: list[str] = []
        self.closed: list[float] = []
        #: The close code each session ended with (1006 when no close frame came).
        self.close_codes: list[int | None] = []
        self.opened = 0


@implementer(IPushProducer)
class Flood(Protocol):
    """Answers a handshake with a 101, then sends one binary frame of ``total`` bytes.

    It writes only while its socket takes data (it is the push producer of its own transport),
    so its own buffer stays small: what it has ``sent`` is what the gateway let through.
    """

    CHUNK = bytes(range(256)) * 256  # 64 KiB; payload byte i is i % 256

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self._head: bytes | None = b""
        self.finished = False
        self.stopped = False

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        key = next(
            line.split(b":", 1)[1].strip()
            for line in self._head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self._head = None
        transport: Any = self.transport
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            b"\x82\x7f" + self.total.to_bytes(8, "big")
        )
        transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.transport
        while not self.paused and self.sent < self.total and transport is not None:
            piece = self.CHUNK[: self.total - self.sent]
            self.sent += len(piece)
            transport.write(piece)
        if self.sent >= self.total and not self.finished:
            self.finished = True
            transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True
        self.stopped = True


# --- the stack ------------------------------------------------------------------------------


def listen_upstream(factory: Any, tls: Any = None) -> tuple[IListeningPort, list[Any]]:
    """Listen with any factory on an ephemeral 127.0.0.1 port (TLS with ``tls``, a
    CertificateOptions); also return the list that collects each protocol it builds."""
    built: list[Any] = []
    build = factory.buildProtocol

    def tracking(addr: Any) -> Any:
        protocol = build(addr)
        built.append(protocol)
        return protocol

    factory.buildProtocol = tracking
    if tls is not None:
        return reactor.listenSSL(0, factory, tls, interface="127.0.0.1"), built
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), built


@dataclass
class Stack:
    """An upstream, and an in-process gateway in front of it guarded by ``slot``."""

    upstream: IListeningPort
    upstream_channels: list[Any]
    listening: IListeningPort
    proxy: TTSProxy
    slot: DeferredSemaphore
    channels: list[Any]
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return cast(int, self.listening.getHost().port)  # type: ignore[attr-defined]

    @property
    def upstream_port(self) -> int:
        return cast(int, self.upstream.getHost().port)  # type: ignore[attr-defined]

    def url(self, path: str = STREAM, *, direct: bool = False) -> str:
        return f"ws://127.0.0.1:{self.upstream_port if direct else self.port}{path}"

    @property
    def slot_free(self) -> bool:
        return self.slot.tokens == self.slot.limit

    def tunnels(self) -> list[WebSocketTunnel]:
        return [t for t in self.proxy.calls if isinstance(t, WebSocketTunnel)]


class Stacks:
    """Starts stacks for one test; ``close`` takes each down and checks nothing is left."""

    def __init__(self) -> None:
        self.started: list[Stack] = []
        self._calls_before = set(reactor.getDelayedCalls())

    def start(self, upstream: Any, tls: Any = None, **proxy_kwargs: Any) -> Stack:
        """A gateway in front of ``upstream``; with ``tls``, an https upstream at localhost."""
        upstream_port, upstream_channels = listen_upstream(upstream, tls)
        slot = DeferredSemaphore(1)
        port = upstream_port.getHost().port  # type: ignore[attr-defined]
        base = f"https://localhost:{port}" if tls is not None else f"http://127.0.0.1:{port}"
        proxy = TTSProxy(upstream=base, slot=slot, reactor=reactor, **proxy_kwargs)
        listening, channels = listen_tracking(proxy.site())
        stack = Stack(upstream_port, upstream_channels, listening, proxy, slot, channels)
        self.started.append(stack)
        return stack

    def demo(self, tls: Any = None, **proxy_kwargs: Any) -> Stack:
        site = DemoUpstream(reactor=reactor, first_chunk_delay=0.02, rtf=0.1).site()
        return self.start(site, tls, **proxy_kwargs)

    async def close(self) -> None:
        for stack in self.started:
            for sock in stack.sockets:
                sock.close()
            await until(
                lambda s=stack: all(disconnected(c) for c in s.channels),  # type: ignore[misc]
                "the gateway's client connections to end",
                timeout=PATIENCE,
            )
            await until(lambda s=stack: s.slot_free, "the slot to come back", timeout=PATIENCE)  # type: ignore[misc]
            await maybeDeferred(stack.listening.stopListening)
            await stack.proxy.close()
            await until(
                lambda s=stack: all(disconnected(c) for c in s.upstream_channels),  # type: ignore[misc]
                "the upstream's connections to end",
                timeout=PATIENCE,
            )
            await maybeDeferred(stack.upstream.stopListening)
        await until(
            lambda: not new_delayed_calls(self._calls_before),
            "every DelayedCall to end",
            timeout=PATIENCE,
        )


@pytest.fixture
def stacks() -> Iterator[Stacks]:
    started = Stacks()
    yield started
    blockon(Deferred.fromCoroutine(started.close()))


# --- clients --------------------------------------------------------------------------------


def ws_connect(url: str, **options: Any) -> ClientConnection:
    """The websockets package's sync client (blocking: call it in a thread)."""
    options.setdefault("max_size", None)
    return connect(
        url, open_timeout=PATIENCE, close_timeout=PATIENCE, proxy=None, legacy=True, **options
    )


#: A session.config asking for sentences as they complete, pcm streamed as it is made.
STREAMING = {"response_format": "pcm", "stream_audio": True, "split_granularity": "sentence"}


def send_json(ws: ClientConnection, event: dict[str, Any]) -> None:
    ws.send(json.dumps(event))


@dataclass
class Heard:
    """What a client received in one utterance."""

    events: list[dict[str, Any]] = field(default_factory=list)
    audio: dict[int, bytes] = field(default_factory=dict)


def listen(ws: ClientConnection) -> Heard:
    """Receive until ``session.done``: events in order, and each sentence's audio."""
    heard = Heard()
    current = -1
    while True:
        message = ws.recv(timeout=PATIENCE)
        if isinstance(message, bytes):
            heard.audio[current] = heard.audio.get(current, b"") + message
            continue
        event = json.loads(message)
        heard.events.append(event)
        if event["type"] == "audio.start":
            current = event["sentence_index"]
        if event["type"] == "session.done":
            return heard


def utterance(url: str, texts: list[str], voice: str = "Vivian") -> Heard:
    """A whole session: config, text in pieces, done, then session.close (the server closes).

    The config asks for what vLLM-Omni does only on request: a sentence spoken as soon as it
    is complete, its pcm streamed as it is made.
    """
    with ws_connect(url) as ws:
        send_json(ws, {"type": "session.config", "voice": voice, **STREAMING})
        for text in texts:
            send_json(ws, {"type": "input.text", "text": text})
        send_json(ws, {"type": "input.done"})
        heard = listen(ws)
        send_json(ws, {"type": "session.close"})
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=PATIENCE)
    return heard


def rejection(url: str) -> InvalidStatus:
    """The InvalidStatus a refused handshake raises."""
    try:
        ws_connect(url).close()
    except InvalidStatus as e:
        return e
    raise AssertionError("the handshake was not refused")


def raw_handshake(port: int, path: str = STREAM, *, receive_buffer: int = 0) -> socket.socket:
    """A raw socket that did a WebSocket handshake and read the 101 (blocking)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(PATIENCE)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(1)  # one byte at a time: nothing after the head is consumed
        if not more:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += more
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def masked_text(payload: bytes) -> bytes:
    """A client text frame (clients must mask)."""
    mask = os.urandom(4)
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    else:
        length = bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def speech_of(text: str, voice: str = "Vivian") -> bytes:
    profile = VoiceRegistry().get(voice)
    assert profile is not None
    return b"".join(synthesize(text, profile).frames())


# --- tests ----------------------------------------------------------------------------------


@twisted_test
async def test_whole_session_through_the_gateway(stacks: Stacks, access_log: Captured) -> None:
    """The demo's streaming-text session through the gateway is what the demo says directly:
    each sentence's events and real audio, session.done; the slot is held until the end."""
    stack = stacks.demo()
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
async def test_http_speech_while_a_session_is_open_gets_gpu_busy(stacks: Stacks) -> None:
    """An open WebSocket session holds the GPU slot: a POST speech gets 503 gpu_busy."""
    stack = stacks.demo()
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
async def test_second_websocket_gets_503_before_any_upgrade(stacks: Stacks) -> None:
    """While one session holds the slot, a second handshake is refused by the gateway itself:
    503 gpu_busy with Retry-After, and the upstream never sees it."""
    stack = stacks.demo()
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
    stacks: Stacks, demo_log: Captured, access_log: Captured
) -> None:
    """A client that drops its connection mid-sentence: the gateway closes the upstream
    connection, the demo stops generating (and says so) within a second, the slot is free."""
    stack = stacks.demo()

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
async def test_client_closing_cleanly_stops_generation(stacks: Stacks, demo_log: Captured) -> None:
    """A clean close mid-sentence reaches the demo, which stops; the slot is freed."""
    stack = stacks.demo()

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
    stacks: Stacks, access_log: Captured
) -> None:
    """An upstream that cuts its connection: the client's connection ends too, slot freed."""
    stack = stacks.start(EchoFactory())

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
async def test_five_megabyte_frames_arrive_byte_exact_both_ways(stacks: Stacks) -> None:
    """A 5 MB binary message each way, in one frame, arrives byte for byte."""
    echo = EchoFactory()
    stack = stacks.start(echo)
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
async def test_idle_session_is_closed_on_both_sides(stacks: Stacks, access_log: Captured) -> None:
    """No byte either way for --ws-idle-timeout: both sides get a 1001 close, the slot is freed."""
    echo = EchoFactory()
    stack = stacks.start(echo, ws_idle_timeout=0.5)

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
    stacks: Stacks, access_log: Captured
) -> None:
    """The upstream's non-101 answer (the demo's 404) reaches the client as it is; slot freed."""
    stack = stacks.demo()
    direct = await deferToThread(rejection, stack.url("/v1/audio/nowhere", direct=True))
    proxied = await deferToThread(rejection, stack.url("/v1/audio/nowhere"))
    assert proxied.response.status_code == direct.response.status_code == 404
    assert proxied.response.reason_phrase == direct.response.reason_phrase
    assert proxied.response.body == direct.response.body
    assert json.loads(proxied.response.body or b"")["error"]["type"] == "NotFoundError"
    assert proxied.response.headers["Content-Type"] == "application/json"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
    assert access_log.outcomes()[-1] == "ws_rejected"


@twisted_test
async def test_unreachable_upstream_gets_503_upstream_unavailable(stacks: Stacks) -> None:
    stack = stacks.demo()
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


def flood_factory(total: int, floods: list[Flood]) -> Factory:
    """A factory of ``Flood``s of ``total`` bytes, each kept in ``floods``."""

    def build() -> Flood:
        flood = Flood(total)
        floods.append(flood)
        return flood

    return Factory.forProtocol(build)


@twisted_test
async def test_slow_reader_keeps_the_gateway_buffers_bounded(stacks: Stacks) -> None:
    """In process: while the client reads nothing, the upstream is held back and the gateway
    holds at most its send buffer; then the whole 128 MiB frame arrives in order."""
    total = 128 * MiB
    floods: list[Flood] = []
    stack = stacks.start(flood_factory(total, floods))
    sock = await deferToThread(raw_handshake, stack.port, receive_buffer=128 * 1024)
    stack.sockets.append(sock)
    await until(lambda: bool(stack.tunnels()), "the tunnel to open", timeout=PATIENCE)
    [session] = stack.tunnels()
    [flood] = floods

    def buffered() -> int:
        t = session.client.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[no-any-return]

    peak = 0
    stalled = time.monotonic()
    while time.monotonic() - stalled < 1.5:
        peak = max(peak, buffered())
        await deferLater(reactor, 0.01, lambda: None)
    assert flood.sent < total // 2, f"the upstream was not held back: it sent {flood.sent}"
    assert session.client.producer is not None
    assert session.client.producer.paused, "the client's full buffer paused the upstream"

    def read_all() -> int:
        expected = Flood.CHUNK * 2
        header = b""
        while len(header) < 10:
            header += sock.recv(10 - len(header))
        assert header == b"\x82\x7f" + total.to_bytes(8, "big")
        got = 0
        while got < total:
            data = sock.recv(65536)
            assert data, "the stream ended early"
            start = got % 256
            assert data == expected[start : start + len(data)], f"corrupt at {got}"
            got += len(data)
        return got

    reading = deferToThread(read_all)
    while not reading.called:
        peak = max(peak, buffered())
        await deferLater(reactor, 0.005, lambda: None)
    assert await reading == total
    assert peak <= 2 * MiB, f"the gateway buffered {peak} bytes for the client"


@twisted_test
async def test_slow_reader_keeps_gateway_rss_flat(tmp_path: Path) -> None:
    """A real ``twist aistack-tts`` in front of a flood upstream: while a client reads nothing,
    then slowly, then drains a 256 MiB frame, the gateway's RSS stays within 16 MiB."""
    total = 256 * MiB
    floods: list[Flood] = []
    upstream = reactor.listenTCP(0, flood_factory(total, floods), interface="127.0.0.1")
    port = upstream.getHost().port
    gateway = await deferToThread(GatewayProcess.start, AISTACK_TTS, port, tmp_path)
    try:
        # A short session first, so lazy imports and first-use allocations are in the baseline.
        warm = await deferToThread(raw_handshake, gateway.port)
        await deferLater(reactor, 0.3, lambda: None)
        warm.close()
        await until(lambda: floods[0].stopped, "the first flood to stop", timeout=PATIENCE)
        baseline = gateway.rss()
        sock = await deferToThread(raw_handshake, gateway.port, receive_buffer=128 * 1024)
        stall = 1.5
        reader = deferToThread(read_slowly_then_fast, sock, total, stall)
        started = time.monotonic()
        sent_at_stall_end = None
        peak = baseline
        while not reader.called:
            peak = max(peak, gateway.rss())
            assert peak - baseline <= 16 * MiB, f"RSS grew by {(peak - baseline) / MiB:.1f} MiB"
            if sent_at_stall_end is None and time.monotonic() - started > stall - 0.1:
                sent_at_stall_end = floods[-1].sent
            await deferLater(reactor, 0.05, lambda: None)
        assert await reader == total
        assert sent_at_stall_end is not None
        assert sent_at_stall_end < total // 2, f"the upstream sent {sent_at_stall_end} unread"
        sock.close()
    finally:
        await deferToThread(gateway.stop)
        await maybeDeferred(upstream.stopListening)


def read_slowly_then_fast(sock: socket.socket, total: int, stall: float) -> int:
    """Read nothing for ``stall`` s, then 64 KiB every 20 ms for as long, then the rest."""
    time.sleep(stall)
    got = -10  # the frame's header
    slow_until = time.monotonic() + stall
    while time.monotonic() < slow_until:
        got += len(sock.recv(65536))
        time.sleep(0.02)
    while got < total:
        data = sock.recv(1 << 20)
        assert data, "the stream ended early"
        got += len(data)
    return got


# --- an https upstream ----------------------------------------------------------------------


def tls_files(directory: Path) -> tuple[Path, Any]:
    """A test CA (its PEM file) and the options of a server certificate it signed for localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    from twisted.internet.ssl import PrivateCertificate

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aistack-tts test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    server = PrivateCertificate.loadPEM(key_pem + leaf.public_bytes(serialization.Encoding.PEM))
    return ca_file, server.options()


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@twisted_test
async def test_https_upstream_serves_calls_and_websocket_sessions(
    stacks: Stacks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https upstream whose certificate verifies (a CA the gateway trusts through
    SSL_CERT_FILE): HTTP calls go over TLS, and so does a WebSocket session, audio and all."""
    ca_file, server = tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    stack = stacks.demo(tls=server)

    def voices() -> dict[str, Any]:
        url = f"http://127.0.0.1:{stack.port}/v1/audio/voices"
        with urllib.request.urlopen(url, timeout=PATIENCE) as answer:
            assert answer.status == 200
            body: dict[str, Any] = json.loads(answer.read())
            return body

    assert "vivian" in (await deferToThread(voices))["voices"]
    heard = await deferToThread(utterance, stack.url(), ["Hello over TLS."])
    assert heard.audio[0] == speech_of("Hello over TLS.")
    assert heard.events[-1]["type"] == "session.done"
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@twisted_test
async def test_https_upstream_whose_certificate_does_not_verify_gets_an_envelope(
    stacks: Stacks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate from a CA the gateway does not trust: never a connection to it; the
    client gets the gateway's envelope (HTTP call and WebSocket handshake alike)."""
    _, server = tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-ca.pem"))
    stack = stacks.demo(tls=server)

    def voices() -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{stack.port}/v1/audio/voices"
        try:
            urllib.request.urlopen(url, timeout=PATIENCE).close()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        raise AssertionError("the call was served by an upstream that did not verify")

    status, body = await deferToThread(voices)
    assert status == 502, body
    assert (body["error"]["type"], body["error"]["provider"]) == ("upstream_error", "qwen3-tts")
    assert "certificate verify failed" in body["error"]["message"]
    refused = await deferToThread(rejection, stack.url())
    assert refused.response.status_code == status
    await until(lambda: stack.slot_free, "the slot to come back", timeout=PATIENCE)
