"""Issue 23, items 1-4: the slot is never held for a client that left, never taken from one
still listening, and no call is lost to connection reuse.

A real ``twist aistack-tts`` process in front of ``ScriptedUpstream`` (a thread per upstream
connection, each running a script an HTTP server would not: answer before reading the body,
close soon after each answer, hold a WebSocket without reading), driven by blocking raw
sockets. Each test failed on the gateway before issue 23:

- an early answer to a 3 MB upload put the connection back into the pool with the body
  unread, and the next call queued behind it until ``--idle-timeout`` (504); with 20 MB the
  connection waited for a flush that never came;
- a client that reset while the gateway was not reading it (bytes pipelined behind its call,
  or a WebSocket whose upstream stopped reading) held the slot for the upstream's whole delay;
- a client reading steadily at 48 KiB/s was cut as ``client_stalled`` at the idle timeout;
- about half the POSTs sent as an upstream closed its keep-alive connection failed with 502.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.scripted_upstream import Conn, ScriptedUpstream, content_length, scripted_upstream
from support.tunnel import HANDSHAKE
from testbed.processes import GatewayProcess

pytestmark = pytest.mark.real_sockets

#: How long a test waits for what should take milliseconds.
PROMPT = 1.5
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"


def gateway(upstream: ScriptedUpstream, tmp_path: Path, *options: str) -> GatewayProcess:
    return GatewayProcess.start("aistack-tts", upstream.port, tmp_path, options=options)


@pytest.fixture
def running() -> Iterator[Callable[[GatewayProcess], GatewayProcess]]:
    started: list[GatewayProcess] = []

    def track(process: GatewayProcess) -> GatewayProcess:
        started.append(process)
        return process

    try:
        yield track
    finally:
        for process in started:
            process.stop()


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: gw",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """One Content-Length response: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed after {data!r}")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = content_length(head)
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed mid-body")
        body += more
    return int(head.split(b" ")[1]), body


def call(port: int, raw: bytes, timeout: float = 10) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return answer(sock)


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- 1. an early answer poisons the pool ------------------------------------------------------


def early_answer(conn: Conn) -> None:
    """Answer a large upload 0.3 s after its head, read nothing more; serve the rest normally."""
    buffered = bytearray()
    while (head := conn.read_head(buffered)) is not None:
        if content_length(head) > 1_000_000:
            time.sleep(0.3)
            conn.sock.sendall(OK)
            conn.hold_unread()
            return
        conn.read_body(head, buffered)
        conn.sock.sendall(OK)


@pytest.mark.parametrize("size", [3_000_000, 20_000_000], ids=["3MB", "20MB"])
def test_an_early_answer_to_an_upload_never_delays_the_next_call(
    size: int, tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    with scripted_upstream(early_answer) as upstream:
        gw = running(gateway(upstream, tmp_path, "--idle-timeout", "5"))
        assert call(gw.port, post(b"/v1/audio/voices", b"v" * size)) == (200, b"ok")
        started = time.monotonic()
        status = call(gw.port, b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert status == (200, b"ok")
        assert time.monotonic() - started < PROMPT, "the next call did not queue behind it"
        assert len(upstream.conns) == 2, "it went on a fresh connection"
        early = upstream.conns[0]
        assert early.closed.wait(PROMPT), "the connection with unread bytes is aborted at once"


# --- 2. a client that leaves while the gateway is not reading it ------------------------------


def hold_unless_quick(conn: Conn) -> None:
    """Answer ``X-Quick`` requests at once; hold any other without answering or reading."""
    buffered = bytearray()
    while (head := conn.read_head(buffered)) is not None:
        if b"\r\nX-Quick: 1" not in head:
            conn.hold_unread()
            return
        conn.read_body(head, buffered)
        conn.sock.sendall(OK)


QUICK = post(b"/v1/audio/speech", b"{}", b"X-Quick: 1")


def assert_freed_when_reset(
    sock: socket.socket, upstream: ScriptedUpstream, gw: GatewayProcess
) -> None:
    """Reset ``sock``: its upstream connection is closed within 0.5 s, and the slot is free."""
    left = time.monotonic()
    reset(sock)
    held = upstream.conns[0]
    assert held.closed.wait(PROMPT), "the upstream connection is closed when the client goes"
    assert held.closed_at is not None
    assert held.closed_at - left < 0.5
    assert call(gw.port, QUICK) == (200, b"ok"), "the slot is free"


def test_a_client_that_resets_behind_pipelined_bytes_frees_the_slot_at_once(
    tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    with scripted_upstream(hold_unless_quick) as upstream:
        gw = running(gateway(upstream, tmp_path))
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.sendall(post(b"/v1/audio/speech", b'{"input": "a long text"}'))
        deadline = time.monotonic() + 5
        while not upstream.conns or not upstream.conns[0].heads:
            assert time.monotonic() < deadline, "the call never reached the upstream"
            time.sleep(0.01)
        # Pipelined behind the call: twisted.web stops reading once it holds 16 KiB of them.
        sock.sendall(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n" * 2000)
        time.sleep(0.3)
        assert_freed_when_reset(sock, upstream, gw)


def switch_and_hold(conn: Conn) -> None:
    """Accept a WebSocket upgrade, then read nothing (a server stuck generating)."""
    buffered = bytearray()
    head = conn.read_head(buffered)
    if head is None:
        return
    if b"\r\nX-Quick: 1" in head:
        conn.read_body(head, buffered)
        conn.sock.sendall(OK)
        return
    conn.sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    conn.hold_unread()


def masked_frame(size: int) -> bytes:
    """A masked binary frame of ``size`` zero bytes (mask 0: the payload is unchanged)."""
    return b"\x82\xff" + struct.pack(">Q", size) + b"\0\0\0\0" + b"\0" * size


def test_a_websocket_client_that_resets_while_the_upstream_reads_nothing_frees_the_slot(
    tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    with scripted_upstream(switch_and_hold) as upstream:
        gw = running(gateway(upstream, tmp_path))
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        sock.sendall(HANDSHAKE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        # Frames until nothing more is taken: the upstream reads nothing, so the gateway stops
        # reading the client once the upstream's socket is full.
        sock.setblocking(False)
        frame = masked_frame(65536)
        deadline = time.monotonic() + 10
        stuck_since: float | None = None
        while stuck_since is None or time.monotonic() - stuck_since < 0.5:
            assert time.monotonic() < deadline, "the gateway never stopped reading the client"
            try:
                sock.send(frame)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                time.sleep(0.02)
        assert_freed_when_reset(sock, upstream, gw)


# --- 3. a client that is listening is never cut as stalled -----------------------------------


def stream_forever(conn: Conn) -> None:
    """A chunked 200 of 64 KiB chunks, as fast as the gateway takes them, for 60 s at most."""
    buffered = bytearray()
    if conn.read_head(buffered) is None:
        return
    conn.sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: audio/pcm\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    deadline = time.monotonic() + 60
    while not conn.stopping.is_set() and time.monotonic() < deadline:
        conn.sock.sendall(chunk)


def slow_reader(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n\r\n")
    return sock


def test_a_client_reading_at_audio_speed_is_never_cut(
    tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    """24 kHz 16-bit PCM played in real time: 48 KiB/s, for 3.5 times ``--idle-timeout``."""
    with scripted_upstream(stream_forever) as upstream:
        gw = running(gateway(upstream, tmp_path, "--idle-timeout", "2"))
        sock = slow_reader(gw.port)
        rate = 48 * 1024
        started = time.monotonic()
        received = 0
        while time.monotonic() - started < 7.0:
            data = sock.recv(4096)
            assert data, f"cut after {time.monotonic() - started:.1f} s, {received} bytes"
            received += len(data)
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        assert received > 6 * rate
        assert not upstream.conns[0].closed.is_set(), "the call is still under way"
        sock.close()


def test_a_client_that_reads_nothing_is_still_cut_on_time(
    tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    with scripted_upstream(stream_forever) as upstream:
        gw = running(gateway(upstream, tmp_path, "--idle-timeout", "2"))
        sock = slow_reader(gw.port)
        started = time.monotonic()
        deadline = started + 10
        while not upstream.conns:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert upstream.conns[0].closed.wait(8), "cut, and the upstream closed"
        closed_at = upstream.conns[0].closed_at
        assert closed_at is not None
        assert 2.0 <= closed_at - started < 2.0 + 1.0 + PROMPT
        sock.close()


# --- 4. a POST sent on a connection the upstream is closing ----------------------------------


def short_keep_alive(conn: Conn) -> None:
    """Answer ``Connection: keep-alive``, then close the connection 50 ms after each answer."""
    buffered = bytearray()
    head = conn.read_head(buffered)
    if head is None:
        return
    conn.read_body(head, buffered)
    conn.sock.sendall(OK)
    time.sleep(0.05)


def test_posts_on_a_connection_the_upstream_is_closing_are_sent_again(
    tmp_path: Path, running: Callable[[GatewayProcess], GatewayProcess]
) -> None:
    with scripted_upstream(short_keep_alive) as upstream:
        gw = running(gateway(upstream, tmp_path))
        statuses = []
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            for i in range(50):
                sock.sendall(post(b"/v1/audio/speech", b'{"n": %d}' % i))
                statuses.append(answer(sock)[0])
                time.sleep(0.05)
        assert statuses == [200] * 50
        assert len(upstream.conns) >= 50, "each went on a connection the upstream answered"
