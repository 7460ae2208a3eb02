"""WebSocket passthrough: a slow reader holds the upstream back instead of growing the gateway.

The upstream is a raw flood server (``Flood``: a 101, then one huge binary frame, written only
while its socket takes data); the client a raw socket with a small receive buffer that reads
nothing, then slowly, then everything. In process, the gateway's buffers stay bounded and the
frame arrives whole and in order; as a ``twist aistack-tts`` process, its RSS stays flat.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from support.reactor import reactor, twisted_test, until
from support.websocket import PATIENCE, MiB, Stacks, raw_handshake
from testbed.processes import AISTACK_TTS, GatewayProcess

pytestmark = [pytest.mark.real_sockets]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@implementer(IPushProducer)
class Flood(Protocol):
    """Answers a handshake with a 101, then sends one binary frame of ``total`` bytes.

    It writes only while its socket takes data (it is the push producer of its own transport),
    so its own buffer stays small: what it has ``sent`` is what the gateway let through.
    """

    CHUNK = bytes(range(256)) * 256  # 64 KiB; payload byte i is i % 256

    def __init__(self, total: int, handshakes: list[Flood] | None = None) -> None:
        self.total = total
        #: Where it puts itself once a handshake comes (a connection without one is the
        #: gateway's start-up probe).
        self._handshakes = handshakes
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
        if self._handshakes is not None:
            self._handshakes.append(self)
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


def flood_factory(total: int, floods: list[Flood]) -> Factory:
    """A factory of ``Flood``s of ``total`` bytes, each kept in ``floods`` once its handshake
    comes (not the gateway's start-up probe, which connects and sends nothing)."""
    return Factory.forProtocol(lambda: Flood(total, floods))


@twisted_test
async def test_slow_reader_keeps_the_gateway_buffers_bounded(ws_stacks: Stacks) -> None:
    """In process: while the client reads nothing, the upstream is held back and the gateway
    holds at most its send buffer; then the whole 128 MiB frame arrives in order."""
    total = 128 * MiB
    floods: list[Flood] = []
    stack = ws_stacks.start(flood_factory(total, floods))
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
