"""A fast stand-in for the Qwen3-TTS upstream, for ``bench/run.py``: plain asyncio, one process.

    python -m bench.fast_upstream --port 0 --port-file PATH

``testbed/upstream_server.py`` is a twisted.web server: it is what the real-socket tests use, but
in a throughput benchmark it would cost about as much CPU per byte as the gateways under
test. This one is plain asyncio on raw non-blocking sockets with a hand-written HTTP/1.1
parser, sending bodies with ``socket.send`` straight from a ready-made block of chunk frames,
so the upstream is not the bottleneck:

- ``GET /v1/audio/voices``: the model's voices as a small JSON body with ``Content-Length``
  (keep-alive, as uvicorn answers it).
- ``GET|POST /v1/audio/speech?bytes=N&chunk=C&delay=S&head=early&id=X``: N body bytes in
  ``Transfer-Encoding: chunked`` chunks of C bytes (65536 unless given), sent only as fast
  as the kernel takes them (a stalled consumer stalls it; nothing is buffered in user
  space). ``delay=S`` waits S seconds before the status line and the first chunk (sent in
  one ``send``), or, with ``head=early``, sends the status line and headers at once and
  waits S seconds before the first chunk. A request body (``Content-Length``) is read and
  ignored. An HTTP/1.0 request (twisted.web.proxy sends those) gets the body unframed and a close.
- anything else: ``404``.

It listens on 127.0.0.1, writes the bound port to ``PATH`` (atomically) and, for requests with
an ``id`` query parameter only (so a load generator does not flood stdout), prints the same
event lines as ``testbed/upstream_server.py``, flushed::

    LISTENING - <t> <port>
    START <id> <t> <method> <raw-uri>
    HEADERS <id> <t>                  the status line and headers were written
    STALLED <id> <t> <sent>           a send has waited 0.2 s for the socket to take more
    DONE <id> <t> <sent>              the last byte was handed to the kernel
    CLOSED <id> <t> <sent>            the connection was lost before the response was done

``<t>`` is ``time.monotonic()`` (CLOCK_MONOTONIC: comparable across processes on one Linux
machine) and ``<sent>`` the body bytes written so far.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

#: How long the transport must stay paused before STALLED is reported.
STALL_REPORT_S = 0.2
VOICES = json.dumps(
    {
        "voices": [
            "aiden",
            "dylan",
            "eric",
            "ono_anna",
            "ryan",
            "serena",
            "sohee",
            "uncle_fu",
            "vivian",
        ],
        "uploaded_voices": [],
    }
).encode()
MAX_HEAD = 64 * 1024
#: Full chunk frames are sent in blocks of about this size (fewer system calls).
BLOCK = 1024 * 1024


def emit(kind: str, ident: str, *fields: object) -> None:
    """Print one event line and flush it."""
    parts = [kind, ident, f"{time.monotonic():.6f}", *(str(f) for f in fields)]
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()


def pattern(size: int) -> bytes:
    """``size`` deterministic body bytes."""
    block = bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


_frames: dict[tuple[int, bool], bytes] = {}


def frame(size: int, chunked: bool) -> bytes:
    """One body chunk of ``size`` bytes, with its chunked framing when ``chunked``."""
    key = (size, chunked)
    found = _frames.get(key)
    if found is None:
        data = pattern(size)
        found = b"%x\r\n%b\r\n" % (size, data) if chunked else data
        if len(_frames) < 64:
            _frames[key] = found
    return found


_blocks: dict[tuple[int, bool, int], bytes] = {}


def block(size: int, chunked: bool, count: int) -> bytes:
    """``count`` whole chunk frames of ``size`` bytes, as one bytes object."""
    key = (size, chunked, count)
    found = _blocks.get(key)
    if found is None:
        found = frame(size, chunked) * count
        if len(_blocks) < 16:
            _blocks[key] = found
    return found


class _Head:
    """A parsed request head."""

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def parse_head(raw: bytes) -> _Head:
    """Request line and headers (names lowercased; a repeated header keeps its last value)."""
    lines = raw.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return _Head(method, target, version, headers)


class Connection:
    """One client connection on a non-blocking socket; serves its requests one after another.

    Plain event-loop callbacks, no coroutines: the socket stays registered for reading the
    whole time (so a reset from the peer is seen at once, even mid-response), and bodies are
    sent with ``socket.send`` straight from a ready-made block of chunk frames, with no
    user-space buffer: when the kernel's send buffer is full the connection waits for
    writability, so a stalled consumer stalls it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._buffer = bytearray()
        self._closed = False
        # The response under way: a queue of blocks to send and what comes after them.
        self._busy = False
        self._ident: str | None = None
        self._sent = 0
        self._keep_alive = True
        self._out: memoryview | None = None  # the rest of the block being sent
        self._out_body = 0  # body bytes in that block (counted once it is sent)
        self._next: Callable[[], None] | None = None  # when the block is sent
        self._writing = False
        self._flushing = False
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        # The speech body still to send.
        self._left = 0
        self._chunk = 65536
        self._chunked = True
        loop.add_reader(self._fd, self._readable)

    # Reading and parsing.

    def _readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self._buffer += data
        self._advance()

    def _advance(self) -> None:
        while not self._busy and not self._closed:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._close()
                return
            head = parse_head(bytes(self._buffer[:end]))
            length = int(head.headers.get("content-length", "0"))
            if len(self._buffer) < end + 4 + length:
                return  # the body is not all here yet
            del self._buffer[: end + 4 + length]
            self._serve(head)

    def _serve(self, head: _Head) -> None:
        path, _, query = head.target.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        self._busy = True
        self._keep_alive = head.keep_alive
        self._ident = params.get("id") or None
        self._sent = 0
        if self._ident is not None:
            emit("START", self._ident, head.method, head.target)
        if path == "/v1/audio/voices" and head.method == "GET":
            self._simple(200, "OK", "application/json", VOICES)
        elif path == "/v1/audio/speech" and head.method in ("GET", "POST"):
            self._speech(params, chunked=head.version != "HTTP/1.0")
        else:
            self._simple(404, "Not Found", "text/plain", b"not here\n")

    # Responses.

    def _simple(self, status: int, reason: str, content_type: str, body: bytes) -> None:
        connection = b"" if self._keep_alive else b"Connection: close\r\n"
        data = b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nContent-Length: %d\r\n%b\r\n%b" % (
            status,
            reason.encode(),
            content_type.encode(),
            len(body),
            connection,
            body,
        )
        self._send(data, len(body), self._finished)

    def _speech(self, params: dict[str, str], chunked: bool) -> None:
        self._left = int(params.get("bytes", "1048576"))
        self._chunk = max(1, int(params.get("chunk", "65536")))
        self._chunked = chunked
        if not chunked:
            self._keep_alive = False
        delay = float(params.get("delay", "0"))
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
        connection = b"" if self._keep_alive else b"Connection: close\r\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\n%b%b\r\n" % (framing, connection)
        if delay > 0 and params.get("head") == "early":
            self._send(head, 0, self._headers_sent)
            self._timer = self._loop.call_later(delay, self._first, b"")
        elif delay > 0:
            self._timer = self._loop.call_later(delay, self._first, head)
        else:
            self._first(head)

    def _headers_sent(self) -> None:
        if self._ident is not None:
            emit("HEADERS", self._ident)

    def _first(self, head: bytes) -> None:
        """The first chunk, after the status line and headers when they did not go yet."""
        self._timer = None
        size = min(self._chunk, self._left)
        self._left -= size
        data = head + frame(size, self._chunked) if size else head
        if head:
            self._headers_sent()
        self._send(data, size, self._pump)

    def _pump(self) -> None:
        """Send the next block of whole chunk frames, or the last chunk and the end."""
        one = frame(self._chunk, self._chunked)
        per_block = max(1, BLOCK // len(one))
        if self._left >= self._chunk * per_block:
            self._left -= self._chunk * per_block
            self._send(
                block(self._chunk, self._chunked, per_block), self._chunk * per_block, self._pump
            )
        elif self._left > 0:
            size = min(self._chunk, self._left)
            self._left -= size
            self._send(frame(size, self._chunked), size, self._pump)
        else:
            self._send(b"0\r\n\r\n" if self._chunked else b"", 0, self._finished)

    def _finished(self) -> None:
        if self._ident is not None:
            emit("DONE", self._ident, self._sent)
        self._busy = False
        self._ident = None
        if not self._keep_alive:
            self._close()
        elif self._buffer:
            self._advance()

    # Sending.

    def _send(self, data: bytes, body: int, then: Callable[[], None]) -> None:
        """Send ``data`` (``body`` body bytes), then call ``then``; one at a time."""
        self._out = memoryview(data)
        self._out_body = body
        self._next = then
        if not self._flushing:
            self._flush()

    def _flush(self) -> None:
        """Send what is queued; a ``then`` that queues more is served by this same loop."""
        self._flushing = True
        try:
            while not self._closed and self._out is not None:
                out = self._out
                if out:
                    try:
                        n = self._sock.send(out)
                    except BlockingIOError:
                        self._wait_writable()
                        return
                    except OSError:
                        self._lost()
                        return
                    self._out = out[n:]
                    if self._stall is not None:  # progress: not stalled
                        self._stall.cancel()
                        self._stall = None
                    continue
                self._out = None
                self._sent += self._out_body
                self._out_body = 0
                then, self._next = self._next, None
                if then is not None:
                    then()  # may queue the next block
            self._not_waiting()
        finally:
            self._flushing = False

    def _wait_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._flush)
        if self._stall is None and self._ident is not None:
            ident = self._ident
            self._stall = self._loop.call_later(
                STALL_REPORT_S, lambda: emit("STALLED", ident, self._sent)
            )

    def _not_waiting(self) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    # Closing.

    def _lost(self) -> None:
        """The peer went away (reset, or end of stream)."""
        if self._closed:
            return
        if self._busy and self._ident is not None:
            emit("CLOSED", self._ident, self._sent)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._not_waiting()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._fd)
        self._sock.close()


async def serve(port: int, port_file: Path | None, interface: str) -> None:
    """Listen and run until cancelled."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((interface, port))
    listener.listen(4096)
    listener.setblocking(False)
    number = int(listener.getsockname()[1])
    if port_file is not None:
        temporary = port_file.with_name(port_file.name + ".tmp")
        temporary.write_text(f"{number}\n")
        os.replace(temporary, port_file)
    emit("LISTENING", "-", number)
    while True:
        sock, _ = await loop.sock_accept(listener)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Connection(loop, sock)


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, default=None)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.port_file, args.interface))


if __name__ == "__main__":
    main()
