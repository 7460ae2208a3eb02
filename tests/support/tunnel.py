"""The WebSocket tunnel's test rig: the handshake and 101 bytes, a counting slot, an open tunnel."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import DeferredSemaphore

from aistack_tts.tunnel._session import WebSocketTunnel
from support.harness import Harness, Peer
from support.logs import LogCapture

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
TARGET = b"/v1/audio/speech/stream?voice=Vivian&x=%2F%20&empty="
HANDSHAKE = (
    b"GET " + TARGET + b" HTTP/1.1\r\n"
    b"Host: gateway.example:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: keep-alive, Upgrade, X-Hop\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: tts, chat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Authorization: Bearer sk-1\r\n"
    b"X-Custom: one\r\n"
    b"X-Custom: two\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"TE: trailers\r\n"
    b"Proxy-Authorization: Basic eDp5\r\n"
    b"X-Hop: dropped\r\n"
    b"X-Request-Id: ws-1\r\n"
    b"\r\n"
)
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols (as it is)\r\n"
    b"upgrade: websocket\r\n"
    b"CONNECTION: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: tts\r\n"
    b"Server: qwen3-tts\r\n"
    b"\r\n"
)
#: What the client gets: the upstream's 101 as it is, with the request's id added at the end.
SWITCHED = SWITCHING[:-2] + b"X-Request-Id: ws-1\r\n\r\n"
#: An unmasked server text frame and a masked client binary frame: bytes the gateway never reads.
SERVER_FRAME = b"\x81\x05hello"
CLIENT_FRAME = b"\x82\x84\x01\x02\x03\x04" + bytes([0x61 ^ 1, 0x62 ^ 2, 0x63 ^ 3, 0x64 ^ 4])


class CountingSemaphore(DeferredSemaphore):
    """A one-token slot that counts how often it was given back."""

    def __init__(self) -> None:
        super().__init__(1)
        self.releases = 0

    def release(self) -> None:
        self.releases += 1
        super().release()


def harness(**kwargs: Any) -> tuple[Harness, CountingSemaphore]:
    slot = CountingSemaphore()
    kwargs.setdefault("ws_idle_timeout", 30.0)
    kwargs.setdefault("idle_timeout", 10.0)
    return Harness(slot=slot, **kwargs), slot


def tunnel(h: Harness) -> WebSocketTunnel:
    [session] = [t for t in h.proxy.calls if isinstance(t, WebSocketTunnel)]
    return session


def opened(h: Harness, early: bytes = b"") -> tuple[Peer, Peer]:
    """A client whose handshake the upstream accepted; the connection is now a tunnel."""
    client = h.request(HANDSHAKE + early)
    up = h.upstream()
    up.send(SWITCHING)
    client.transport.clear()
    up.transport.clear()
    return client, up


def assert_released_once(h: Harness, slot: CountingSemaphore) -> None:
    assert slot.releases == 1
    assert h.tokens == 1
    assert h.proxy.in_flight == 0


def outcome(logs: LogCapture) -> tuple[Any, Any, Any]:
    [event] = logs.access()
    return event["status"], event["outcome"], event["slot"]


def unmask(frame: bytes) -> tuple[int, bytes]:
    """A masked frame with a short payload: its first byte and its payload."""
    assert frame[1] & 0x80, "a frame to a server is masked"
    mask, payload = frame[2:6], frame[6:]
    assert len(payload) == frame[1] & 0x7F
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
