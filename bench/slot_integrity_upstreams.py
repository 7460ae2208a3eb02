"""The scripted upstreams of ``bench/slot_integrity.py``: raw TCP, one thread per connection.

Each accepted connection runs a ``Script`` (a function over a ``Conn``) that reads and writes
as an HTTP server would not: answer an upload before reading its body and never read again,
answer after 10 s, accept a WebSocket and read nothing, stream 30 MB as fast as the proxy
takes it, or close a keep-alive connection 60 ms after each answer. A ``Conn`` records, without
reading, when the proxy in front closed or reset its side (``POLLRDHUP``), and finds the
proxy's end of the connection in ``/proc/net/tcp`` (its state and send queue).

Same shape as ``tests/support/scripted_upstream.py``, kept apart (the bench does not import the
tests); everything listens on 127.0.0.1, on a port the kernel picks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: An ordinary quick answer, keep-alive.
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
#: A request carrying this header is answered at once by every script (the slot probe).
QUICK_HEADER = b"x-quick: 1"
#: Requests announcing more than this are "uploads" for ``early_answer``.
UPLOAD = 1_000_000
#: ``slow_answer``'s delay.
SLOW_SECONDS = 10.0
#: ``stream``'s body and chunk sizes.
STREAM_BYTES = 30 * 1000 * 1000
STREAM_CHUNK = 64 * 1024
#: ``short_keep_alive``: how long after each answer the upstream closes.
KEEP_ALIVE_SECONDS = 0.06

#: ``/proc/net/tcp`` states (hex), by name.
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
GONE_EVENTS = select.POLLRDHUP | select.POLLHUP | select.POLLERR


@dataclass(frozen=True)
class SocketState:
    """One socket's line of ``/proc/net/tcp``: its state and queues."""

    state: str
    tx_queue: int
    rx_queue: int


def proc_tcp(local_port: int, remote_port: int) -> SocketState | None:
    """The IPv4 socket 127.0.0.1:``local_port`` -> 127.0.0.1:``remote_port``, if the kernel
    still has one (an orphan a process closed but the kernel still flushes included)."""
    local = f"0100007F:{local_port:04X}"
    remote = f"0100007F:{remote_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            tx, _, rx = fields[4].partition(":")
            return SocketState(TCP_STATES.get(fields[3], fields[3]), int(tx, 16), int(rx, 16))
    return None


@dataclass
class Conn:
    """One connection the upstream accepted."""

    sock: socket.socket
    upstream_port: int
    stopping: threading.Event
    accepted: float = field(default_factory=time.monotonic)
    #: Request heads read on it, in order.
    heads: list[bytes] = field(default_factory=list)
    #: When the proxy closed or reset its side (monotonic), once seen.
    closed_at: float | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    #: Body bytes ``stream`` wrote on it.
    streamed: int = 0
    #: When ``slow_answer`` wrote its delayed answers (monotonic).
    answered: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._peer: int = self.sock.getpeername()[1]

    @property
    def peer_port(self) -> int:
        """The proxy's port of this connection."""
        return self._peer

    def proxy_side(self) -> SocketState | None:
        """The proxy's end of this connection in ``/proc/net/tcp`` (None once gone)."""
        return proc_tcp(self._peer, self.upstream_port)

    def unread(self) -> int:
        """Bytes waiting in this end's receive queue."""
        state = proc_tcp(self.upstream_port, self._peer)
        return state.rx_queue if state else 0

    def read_head(self, buffered: bytearray) -> bytes | None:
        """The next request head (its body left unread); ``None`` if the peer closed."""
        while b"\r\n\r\n" not in buffered:
            try:
                more = self.sock.recv(65536)
            except OSError:
                more = b""
            if not more:
                self.mark_closed()
                return None
            buffered += more
        end = buffered.index(b"\r\n\r\n") + 4
        head = bytes(buffered[:end])
        del buffered[:end]
        self.heads.append(head)
        return head

    def read_body(self, head: bytes, buffered: bytearray) -> bool:
        """Read (and drop) the body ``head`` announces with Content-Length; False if the peer
        closed first."""
        length = content_length(head)
        while len(buffered) < length:
            try:
                more = self.sock.recv(min(65536, length - len(buffered)))
            except OSError:
                more = b""
            if not more:
                self.mark_closed()
                return False
            buffered += more
        del buffered[:length]
        return True

    def send(self, data: bytes) -> bool:
        """``sendall``; False (and the connection marked closed) if the peer is gone."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.mark_closed()
            return False
        return True

    def watch(self, seconds: float | None = None) -> bool:
        """Read nothing for ``seconds`` (None: until the server stops) or until the peer closes
        or resets its side; True if it is still there."""
        poller = select.poll()
        poller.register(self.sock, GONE_EVENTS)
        end = None if seconds is None else time.monotonic() + seconds
        while not self.stopping.is_set() and (end is None or time.monotonic() < end):
            if poller.poll(5):
                self.mark_closed()
                return False
        return not self.stopping.is_set()

    def mark_closed(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self.closed.set()


#: What runs on each connection, in its own thread.
Script = Callable[[Conn], None]


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def quick(head: bytes) -> bool:
    return QUICK_HEADER in head.lower()


# The scripts (issue 23, items 1-4).


def early_answer(delay: float = 0.0) -> Script:
    """Item 1: answer an upload (> 1 MB) ``delay`` s after its head is in (watching, not
    reading, meanwhile), read nothing more, hold the connection open; serve anything else at
    once, keep-alive."""

    def script(conn: Conn) -> None:
        buffered = bytearray()
        while (head := conn.read_head(buffered)) is not None:
            if content_length(head) > UPLOAD:
                if (delay <= 0 or conn.watch(delay)) and conn.send(OK):
                    conn.watch()
                return
            if not conn.read_body(head, buffered) or not conn.send(OK):
                return

    return script


def slow_answer(conn: Conn) -> None:
    """Item 2 (HTTP): answer each request 10 s after it came (watching, not reading, meanwhile);
    ``X-Quick`` ones at once."""
    buffered = bytearray()
    while (head := conn.read_head(buffered)) is not None:
        if not conn.read_body(head, buffered):
            return
        if quick(head):
            if not conn.send(OK):
                return
            continue
        if not conn.watch(SLOW_SECONDS) or not conn.send(OK):
            return
        conn.answered.append(time.monotonic())


def accept_key(head: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
            return base64.b64encode(digest.digest())
    return b""


def switch_and_hold(conn: Conn) -> None:
    """Item 2 (WebSocket): accept an upgrade with a 101, then read nothing (a server stuck
    generating); anything else is answered at once."""
    buffered = bytearray()
    while (head := conn.read_head(buffered)) is not None:
        if b"upgrade: websocket" in head.lower():
            switching = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(head) + b"\r\n\r\n"
            )
            if conn.send(switching):
                conn.watch()
            return
        if not conn.read_body(head, buffered) or not conn.send(OK):
            return


def stream(conn: Conn) -> None:
    """Item 3: a chunked 200 of 30 MB in 64 KiB chunks, as fast as the proxy takes them."""
    buffered = bytearray()
    while (head := conn.read_head(buffered)) is not None:
        if not conn.read_body(head, buffered):
            return
        if quick(head):
            if not conn.send(OK):
                return
            continue
        if not conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n\r\n"
        ):
            return
        chunk = b"%x\r\n" % STREAM_CHUNK + b"a" * STREAM_CHUNK + b"\r\n"
        conn.sock.setblocking(False)
        poller = select.poll()
        poller.register(conn.sock, select.POLLOUT | GONE_EVENTS)
        view = memoryview(chunk)
        while conn.streamed < STREAM_BYTES and not conn.stopping.is_set():
            events = 0
            for _, got in poller.poll(20):
                events |= got
            if events & GONE_EVENTS:
                conn.mark_closed()
                return
            if events & select.POLLOUT:
                try:
                    view = view[conn.sock.send(view) :]
                except BlockingIOError:
                    continue
                except OSError:
                    conn.mark_closed()
                    return
                if not view:
                    conn.streamed += STREAM_CHUNK
                    view = memoryview(chunk)
        conn.sock.settimeout(10)
        if not conn.send(b"0\r\n\r\n"):
            return


def short_keep_alive(conn: Conn) -> None:
    """Item 4: read one request, answer it ``Connection: keep-alive``, and close the connection
    60 ms later without reading anything more (a keep-alive shorter than the proxy's)."""
    buffered = bytearray()
    head = conn.read_head(buffered)
    if head is None or not conn.read_body(head, buffered):
        return
    conn.send(OK)
    time.sleep(KEEP_ALIVE_SECONDS)


class ScriptedUpstream:
    """Runs ``script`` on every connection to 127.0.0.1 (a port the kernel picks)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.conns: list[Conn] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(10)
        self._listener.close()

    def first(self, predicate: Callable[[Conn], bool], timeout: float) -> Conn | None:
        """The first connection ``predicate`` holds for, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            for conn in list(self.conns):
                if predicate(conn):
                    return conn
            if time.monotonic() > deadline:
                return None
            time.sleep(0.005)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn = Conn(sock, self.port, self._stopping)
            except OSError:  # gone before we looked
                sock.close()
                continue
            self.conns.append(conn)
            self._spawn(self._run, conn)

    def _run(self, conn: Conn) -> None:
        conn.sock.settimeout(30)
        try:
            self.script(conn)
        except OSError:
            conn.mark_closed()
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()


@contextmanager
def scripted_upstream(script: Script) -> Iterator[ScriptedUpstream]:
    """A running ``ScriptedUpstream``, stopped afterwards."""
    server = ScriptedUpstream(script)
    server.start()
    try:
        yield server
    finally:
        server.stop()
