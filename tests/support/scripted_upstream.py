"""A raw-TCP upstream whose every connection runs a script: for behaviours HTTP servers avoid.

``RawUpstream`` writes one scripted reply per connection; this one hands each accepted
connection to a function (``Script``) that reads and writes it as it likes: answer before
reading a body and never read again, close a keep-alive connection soon after each answer,
stream without end, hold a WebSocket without reading. Each connection is a ``Conn``, which
records when the gateway closed its side (seen with ``POLLRDHUP``, so without reading).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from support.raw_upstream import ThreadedServer


@dataclass
class Conn:
    """One connection the upstream accepted."""

    sock: socket.socket
    stopping: threading.Event
    accepted: float = field(default_factory=time.monotonic)
    #: Request heads read on it, in order.
    heads: list[bytes] = field(default_factory=list)
    #: When the gateway closed or reset its side (monotonic), once seen.
    closed_at: float | None = None
    closed: threading.Event = field(default_factory=threading.Event)

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

    def read_body(self, head: bytes, buffered: bytearray) -> None:
        """Read (and drop) the body ``head`` announces with Content-Length."""
        length = content_length(head)
        while len(buffered) < length:
            more = self.sock.recv(min(65536, length - len(buffered)))
            if not more:
                self.mark_closed()
                return
            buffered += more
        del buffered[:length]

    def hold_unread(self) -> None:
        """Keep the connection open, reading nothing, until the peer goes or the server stops."""
        poller = select.poll()
        poller.register(self.sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        while not self.stopping.is_set():
            if poller.poll(20):
                self.mark_closed()
                return

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


class ScriptedUpstream(ThreadedServer):
    """Runs ``script`` on every connection the gateway sends a request on (``conns``)."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script
        self.conns: list[Conn] = []

    def _accepted(self, sock: socket.socket) -> None:
        self._spawn(self._run, Conn(sock, self._stopping))

    def _run(self, conn: Conn) -> None:
        conn.sock.settimeout(10)
        try:
            if not conn.sock.recv(1, socket.MSG_PEEK):
                # The gateway's start-up probe: it connects and closes, sending nothing.
                return
            self.conns.append(conn)
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
