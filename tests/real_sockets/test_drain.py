"""Graceful drain of a real `twist aistack-tts` process on SIGTERM."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.wire import dechunk, parse_response
from testbed.clients import get_request, read_to_close
from testbed.processes import UpstreamProcess, aistack_command, listening_ports
from testbed.upstream_server import pattern

pytestmark = pytest.mark.real_sockets


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamProcess]:
    server = UpstreamProcess.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def start_gateway(upstream: UpstreamProcess, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    twist = str(Path(sys.executable).with_name("twist"))
    listen = "tcp:0:interface=127.0.0.1"
    process = subprocess.Popen(
        [twist, "aistack-tts", "--listen", listen, "--upstream", upstream.url, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (ports := listening_ports(process.pid)):
        assert process.poll() is None, "the gateway exited"
        assert time.monotonic() < deadline, "the gateway did not listen"
        time.sleep(0.02)
    return process, min(ports)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection ended before the headers: {data!r}"
        data += more
    return data


def test_sigterm_lets_a_stream_finish_and_refuses_new_connections(
    upstream: UpstreamProcess,
) -> None:
    """On SIGTERM the gateway stops listening, the stream under way ends whole, then it exits."""
    gateway, port = start_gateway(upstream)
    try:
        # About 1.5 s of streaming: 600 kB at 400 kB/s.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(get_request("/v1/audio/stream?id=drain1&bytes=600000&rate=400000"))
            head = read_head(sock)
            assert head.startswith(b"HTTP/1.1 200 ")
            gateway.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while listening_ports(gateway.pid):
                assert time.monotonic() < deadline, "still listening after SIGTERM"
                time.sleep(0.01)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            rest, reset = read_to_close(sock)
        assert not reset
        assert rest.endswith(b"\r\n0\r\n\r\n"), "the chunked body ended with its last chunk"
        upstream.wait("drain1", {"DONE"}, timeout=10)
        # twist ends by re-raising the signal it stopped on, after the drain.
        assert gateway.wait(timeout=20) == -signal.SIGTERM
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


def test_drain_timeout_cuts_a_long_stream_and_closes_the_upstream(
    upstream: UpstreamProcess,
) -> None:
    """Past --drain-timeout a stream is cut: the client is reset, the upstream sees the close."""
    gateway, port = start_gateway(upstream, "--drain-timeout", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            # 20 s of streaming at this rate: far longer than the drain timeout.
            sock.sendall(get_request("/v1/audio/stream?id=drain2&bytes=8000000&rate=400000"))
            assert read_head(sock).startswith(b"HTTP/1.1 200 ")
            sent = time.monotonic()
            gateway.send_signal(signal.SIGTERM)
            rest, reset = read_to_close(sock)
        assert reset or not rest.endswith(b"\r\n0\r\n\r\n"), "a cut stream never ends cleanly"
        closed = upstream.wait("drain2", {"CLOSED"}, timeout=10)
        assert closed.t - sent < 5
        # twist ends by re-raising the signal it stopped on, after the drain.
        assert gateway.wait(timeout=20) == -signal.SIGTERM
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


# Issue 11: what a drain hands the clients, and the second signal.


class Gateway:
    """``twist aistack-tts`` with its log in a file, SIGINT at its default (so Python turns it
    into KeyboardInterrupt and Twisted handles it, even when the test runner ignores it)."""

    def __init__(self, upstream: UpstreamProcess, workdir: Path, *options: str) -> None:
        self.log_path = workdir / f"gateway-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
        self.process = subprocess.Popen(
            aistack_command(upstream.url, *options),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 30
        while not (ports := listening_ports(self.process.pid)):
            assert self.process.poll() is None, f"the gateway exited: {self.log()}"
            assert time.monotonic() < deadline, "the gateway did not listen"
            time.sleep(0.02)
        self.port = min(ports)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait_not_listening(self) -> None:
        """The drain has begun: the listener is gone."""
        deadline = time.monotonic() + 10
        while listening_ports(self.process.pid):
            assert time.monotonic() < deadline, "still listening after SIGTERM"
            time.sleep(0.01)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    try:
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def keep_alive_get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode()


#: A slow reader: a small receive buffer, and this much per read every SLOW_PAUSE s. Slower
#: than the upstream, so when a call ends the gateway still holds the tail in its buffers.
SLOW_RCVBUF = 64 * 1024
SLOW_PAUSE = 0.01
#: Big enough to fill the kernel's buffers between the gateway and a slow reader (4 MB
#: tcp_wmem), so a call ends with part of its response still queued in the gateway.
BIG = 4_000_000


def slow_client(port: int, request: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def read_slowly(socks: list[socket.socket]) -> list[tuple[bytes, bool]]:
    """Read each socket to EOF, slowly, side by side: (bytes, whether it was reset)."""
    data = {sock: bytearray() for sock in socks}
    reset: set[socket.socket] = set()
    live = list(socks)
    while live:
        for sock in select.select(live, [], [], 20)[0]:
            try:
                more = sock.recv(SLOW_RCVBUF)
            except ConnectionResetError:
                more = b""
                reset.add(sock)
            data[sock] += more
            if not more:
                live.remove(sock)
        time.sleep(SLOW_PAUSE)
    return [(bytes(data[sock]), sock in reset) for sock in socks]


def read_all(
    sock: socket.socket, start: bytes
) -> tuple[int, dict[bytes, list[bytes]], bytes, bool]:
    """Read to EOF after ``start`` (what came already); status, headers, raw body, reset."""
    rest, reset = read_to_close(sock)
    status, headers, body = parse_response(start + rest)
    return status, headers, body, reset


def test_responses_completed_during_the_drain_reach_their_clients_whole(
    upstream: UpstreamProcess, gateways: list[Gateway], tmp_path: Path
) -> None:
    """Calls that finish during the drain reach their (slow) clients whole before the exit: a
    chunked body with its last chunk (the client sent ``Connection: close``), a Content-Length
    body with every byte (a keep-alive client); then each connection is closed cleanly."""
    gateway = Gateway(upstream, tmp_path, "--slots", "2")
    gateways.append(gateway)
    chunked = slow_client(gateway.port, get_request(f"/v1/audio/stream?id=ch&bytes={BIG}"))
    sized = slow_client(
        gateway.port, keep_alive_get(f"/v1/audio/stream?id=cl&bytes={BIG}&length=1")
    )
    with chunked, sized:
        upstream.wait("ch", {"HEADERS"}, timeout=10)
        upstream.wait("cl", {"HEADERS"}, timeout=10)
        gateway.signal(signal.SIGTERM)
        (chunked_raw, chunked_reset), (sized_raw, sized_reset) = read_slowly([chunked, sized])
    status, _, body = parse_response(chunked_raw)
    data, ended = dechunk(body)
    assert (status, chunked_reset, len(data)) == (200, False, BIG)
    assert ended, f"the chunked body lost its terminating chunk: ...{body[-40:]!r}"
    status, headers, body = parse_response(sized_raw)
    assert (status, sized_reset, headers[b"content-length"]) == (200, False, [b"%d" % BIG])
    assert len(body) == BIG, f"{len(body)} of {BIG} Content-Length bytes arrived"
    assert upstream.first("ch", {"DONE"})
    assert upstream.first("cl", {"DONE"})
    assert gateway.process.wait(timeout=20) == -signal.SIGTERM


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """One response on a keep-alive connection, framed by its Content-Length."""
    data = read_head(sock)
    status, headers, body = parse_response(data)
    while len(body) < int(headers[b"content-length"][0]):
        more = sock.recv(65536)
        assert more, f"the connection ended inside a {status} response"
        body += more
    return status, headers, body


def test_drain_closes_keep_alive_connections(
    upstream: UpstreamProcess, gateways: list[Gateway], tmp_path: Path
) -> None:
    """During the drain no connection is kept alive: an idle one is closed when the drain
    begins (while a call still runs), a response begun during the drain says
    ``Connection: close`` and its connection closes after it, and so does one whose headers
    went out before."""
    gateway = Gateway(upstream, tmp_path, "--slots", "2")
    gateways.append(gateway)
    with (
        gateway.connect() as idle,
        gateway.connect() as partial,
        gateway.connect() as late,
        gateway.connect() as long,
    ):
        idle.sendall(keep_alive_get("/healthz"))
        assert read_response(idle)[0] == 200
        partial.sendall(b"GET /v1/audio/echo?id=partial HTTP/1.1\r\nHost: gateway.test\r\n")
        # About 1 s of streaming, headers before the drain; headers 0.4 s into the drain.
        long.sendall(keep_alive_get("/v1/audio/stream?id=long&bytes=400000&rate=400000"))
        long_start = read_head(long)
        late.sendall(keep_alive_get("/v1/audio/stream?id=late&bytes=1000&length=1&delay=0.4"))
        upstream.wait("late", {"START"}, timeout=10)
        gateway.signal(signal.SIGTERM)
        # The idle connection is closed at once, long before the stream ends.
        assert idle.recv(1) == b""
        assert upstream.first("long", {"DONE"}) is None, "closed only when the gateway exited"
        # A request completed during the drain: refused, and its connection's last.
        partial.sendall(b"\r\n")
        status, headers, body = read_response(partial)
        assert (status, headers.get(b"connection")) == (503, [b"close"])
        assert partial.recv(1) == b""
        status, headers, body = read_response(late)
        assert (status, headers.get(b"connection"), len(body)) == (200, [b"close"], 1000)
        assert late.recv(1) == b""
        status, _, body, reset = read_all(long, long_start)
        assert (status, reset, *dechunk(body)) == (200, False, pattern(400000), True)
    assert gateway.process.wait(timeout=20) == -signal.SIGTERM


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_second_signal_cuts_the_drain_at_once(
    upstream: UpstreamProcess, gateways: list[Gateway], tmp_path: Path, second: int
) -> None:
    """A second SIGTERM or SIGINT during the drain cuts what is left now (nginx's fast
    shutdown): one log line, no traceback, the upstream call closed, the process gone within
    a second or two, and it exits by the first signal."""
    gateway = Gateway(upstream, tmp_path)
    gateways.append(gateway)
    with gateway.connect() as sock:
        # 20 s of streaming, under the default 30 s --drain-timeout.
        sock.sendall(get_request("/v1/audio/stream?id=cut&bytes=8000000&rate=400000"))
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        gateway.signal(signal.SIGTERM)
        gateway.wait_not_listening()
        time.sleep(0.2)  # the drain is under way
        sent = time.monotonic()
        gateway.signal(second)
        rest, reset = read_to_close(sock)
        assert reset or not rest.endswith(b"\r\n0\r\n\r\n"), "a cut stream never ends cleanly"
        status = gateway.process.wait(timeout=10)
        gone = time.monotonic() - sent
    assert upstream.wait("cut", {"CLOSED"}, timeout=10).t - sent < 2
    log = gateway.log()
    assert "Traceback" not in log, log
    assert "ReactorNotRunning" not in log, log
    assert log.count("second signal") == 1, log
    assert gone < 2, f"the process took {gone:.1f} s to exit after the second signal"
    assert status == -signal.SIGTERM
