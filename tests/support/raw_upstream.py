"""A raw-TCP upstream for the real-socket tests: exact bytes per connection, then FIN or RST.

``testbed/upstream_server.py`` speaks HTTP through twisted.web, which cannot send a malformed
head or end a length-less body with a reset. This one is a thread in the test process that,
for each connection, reads the request head (and a ``Content-Length`` body), writes the
scripted ``Reply`` bytes and ends as it says:

- ``"fin"``: a clean close (the peer's ``recv`` sees EOF);
- ``"rst"``: ``SO_LINGER`` (1, 0) then close, so the kernel sends a reset;
- ``"hold"``: keep the connection open until the peer closes it (or the server stops).

Each connection is recorded as a ``Seen``: what request arrived, and whether the peer (the
gateway) closed its side while the server held it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """What the upstream writes on each connection, and how it ends it."""

    data: bytes
    end: str = "fin"


@dataclass
class Seen:
    """One connection the upstream accepted."""

    request: bytes = b""
    #: Set once the gateway closed (or reset) its side of the connection.
    peer_closed: threading.Event = field(default_factory=threading.Event)


class ThreadedServer:
    """Accepts connections on 127.0.0.1 (an ephemeral port), each handed to ``_accepted``.

    The accept loop and each connection run in threads of their own; ``stop`` ends them.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Accept connections in a background thread."""
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Stop accepting, end held connections, and wait for the threads."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """Serve ``conn`` (in a thread of its own, by ``_spawn``)."""
        raise NotImplementedError


class RawUpstream(ThreadedServer):
    """Serves ``reply`` to every connection."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply
        self.seen: list[Seen] = []

    def _accepted(self, conn: socket.socket) -> None:
        seen = Seen()
        self.seen.append(seen)
        self._spawn(self._serve, conn, seen)

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        conn.settimeout(10)
        try:
            seen.request = _read_request(conn)
            conn.sendall(self.reply.data)
            if self.reply.end == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.reply.end == "hold":
                conn.settimeout(0.05)
                while not self._stopping.is_set():
                    try:
                        if not conn.recv(65536):
                            seen.peer_closed.set()
                            return
                    except TimeoutError:
                        continue
        except OSError:
            seen.peer_closed.set()
        finally:
            conn.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return data
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return data


@contextmanager
def raw_upstream(reply: Reply) -> Iterator[RawUpstream]:
    """A running ``RawUpstream``, stopped afterwards."""
    server = RawUpstream(reply)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 10) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` s pass; say which."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
