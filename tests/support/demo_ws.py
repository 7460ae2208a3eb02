"""The demo's WebSocket session on a StringTransport: frames both ways, past the handshake."""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from support.demo import WS_HANDSHAKE, Wire


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    mask = b"\x11\x22\x33\x44"
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (unmasked) frames the server wrote: opcode and payload each."""
    frames = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class StreamWire(Wire):
    """A WebSocket session with the demo on a StringTransport, past the handshake."""

    def __init__(self) -> None:
        super().__init__()
        transport: Any = self.transport
        transport.protocol = self.protocol  # as a TCP transport has it
        self.send(WS_HANDSHAKE)
        head = self.received()
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        # autobahn took the connection over from twisted.web: the transport's protocol is its.
        self.ws = transport.protocol
        self.transport.clear()

    def event(self, **event: Any) -> None:
        self.ws.dataReceived(client_frame(json.dumps(event).encode()))

    def frames(self) -> list[tuple[int, bytes]]:
        return server_frames(self.received())

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for opcode, payload in self.frames() if opcode == 0x1]

    def audio(self) -> list[bytes]:
        return [payload for opcode, payload in self.frames() if opcode == 0x2]

    def lose(self) -> None:
        producer = self.transport.producer
        if producer is not None:
            producer.stopProducing()
        self.ws.connectionLost(Failure(ConnectionDone()))
