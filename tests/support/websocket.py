"""WebSocket passthrough on real sockets: the in-process stacks and the clients that drive them.

A ``Stack`` is an upstream on pytest-twisted's reactor (the demo upstream, or any factory such
as ``EchoFactory``, optionally over TLS) with an in-process gateway in front of it guarded by
one slot; ``Stacks`` starts them for one test and takes each down, checking nothing is left
(fixture ``ws_stacks`` in conftest.py). The clients: the ``websockets`` package's synchronous
client (``ws_connect``, ``utterance``, ``rejection``; blocking, so run in a thread) and a raw
socket that did the handshake (``raw_handshake``, ``masked_text``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from aistack_tts import TTSProxy
from aistack_tts.tunnel._session import WebSocketTunnel
from aistack_tts_demo import DemoUpstream
from aistack_tts_demo._synth import synthesize
from aistack_tts_demo._voices import VoiceRegistry
from support.reactor import disconnected, listen_tracking, new_delayed_calls, reactor, until

STREAM = "/v1/audio/speech/stream"
#: Everything normally happens in milliseconds; this only bounds a hang.
PATIENCE = 15.0
MiB = 1024 * 1024


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
