"""Where WebSocket frames end, so the tunnel may add a close frame of its own between them.

The tunnel relays bytes unchanged; it reads only frame headers (RFC 6455 section 5.2), to know
whether the bytes relayed so far in one direction end on a frame boundary. Only there can the
gateway end an idle session with a close frame instead of a bare TCP close (which clients
report as 1006, "abnormal closure"). It also notes the first close frame each way and its
code (two payload bytes), so a session's end is put down to the side that said goodbye
first, not to the side that dropped TCP first.
"""

from __future__ import annotations

import os

from attrs import define, field

from aistack_tts.observe._outcome import Outcome

#: Close code and reason for a session ended by ``--ws-idle-timeout`` (1001: going away).
IDLE_CLOSE = (1001, b"idle timeout")

#: The close frame's opcode.
_CLOSE = 0x8

#: The longest frame header: 2 bytes, an 8-byte extended length, a 4-byte mask.
_MAX_HEADER = 14


def _header_size(head: bytes) -> int | None:
    """The size of the frame header that ``head`` starts, or None before its second byte."""
    if len(head) < 2:
        return None
    length7 = head[1] & 0x7F
    extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def _payload_size(header: bytes) -> int:
    length7 = header[1] & 0x7F
    if length7 == 126:
        return int.from_bytes(header[2:4], "big")
    if length7 == 127:
        return int.from_bytes(header[2:10], "big")
    return length7


class FrameBoundary:
    """Follows one direction of a WebSocket stream: is it between two frames?

    Holds at most a frame header that is still arriving (14 bytes), never payload.
    """

    def __init__(self) -> None:
        self._head = b""
        self._left = 0
        #: A close frame has been relayed in this direction.
        self.closed = False
        #: The first close frame's status code, once its first two payload bytes went by.
        self.close_code: int | None = None
        self._code = b""
        self._capture = 0
        self._mask = b""

    @property
    def at_boundary(self) -> bool:
        """Every frame relayed so far is complete."""
        return not self._head and self._left == 0

    def feed(self, data: bytes) -> None:
        """Note ``data``, the next bytes relayed in this direction."""
        i, end = 0, len(data)
        while i < end:
            if self._left:
                step = min(self._left, end - i)
                if self._capture:
                    self._take_code(data[i : i + min(step, self._capture)])
                self._left -= step
                i += step
                continue
            head = self._head + data[i : i + _MAX_HEADER]
            size = _header_size(head)
            if size is None or len(head) < size:
                self._head = head  # the rest of data was all header: wait for more
                return
            i += size - len(self._head)
            self._left = _payload_size(head[:size])
            self._head = b""
            if head[0] & 0x0F == _CLOSE and not self.closed:
                self.closed = True
                self._capture = 2 if self._left >= 2 else 0
                self._mask = head[size - 4 : size] if head[1] & 0x80 else b""

    def _take_code(self, data: bytes) -> None:
        """Keep the close frame's first payload bytes: its status code (unmasked)."""
        offset = len(self._code)
        if self._mask:
            data = bytes(b ^ self._mask[(offset + j) % 4] for j, b in enumerate(data))
        self._code += data
        self._capture -= len(data)
        if not self._capture:
            self.close_code = int.from_bytes(self._code, "big")


def close_frame(code: int, reason: bytes, *, masked: bool) -> bytes:
    """A close frame; ``masked`` for one sent to a server (RFC 6455 section 5.3)."""
    payload = code.to_bytes(2, "big") + reason
    assert len(payload) <= 125, "a control frame's payload fits in 125 bytes"
    if not masked:
        return bytes([0x88, len(payload)]) + payload
    mask = os.urandom(4)
    return (
        bytes([0x88, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@define
class Frames:
    """Where frames end in what was relayed each way, and who sent the first close frame."""

    to_client: FrameBoundary = field(factory=FrameBoundary)
    to_upstream: FrameBoundary = field(factory=FrameBoundary)
    #: Who sent the first close frame: ``client`` or ``upstream``.
    closer: str | None = None

    def to_client_feed(self, data: bytes) -> None:
        """``data`` went from the upstream to the client."""
        self.to_client.feed(data)
        if self.closer is None and self.to_client.closed:
            self.closer = "upstream"

    def to_upstream_feed(self, data: bytes) -> None:
        """``data`` went from the client to the upstream."""
        self.to_upstream.feed(data)
        if self.closer is None and self.to_upstream.closed:
            self.closer = "client"

    def closed_by(self, dropped: str) -> tuple[Outcome, str]:
        """The outcome and its cause for a session whose ``dropped`` side ended its TCP first.

        It is put down to the side that sent the first close frame, if one did.
        """
        closer = self.closer
        if closer is None:
            return (
                Outcome.closed_by(dropped),
                f"the {dropped} closed the connection without a close frame",
            )
        frames = self.to_upstream if closer == "client" else self.to_client
        code = frames.close_code
        cause = f"the {closer} sent the first close frame (code {code or 'none'})"
        return Outcome.closed_by(closer), cause
