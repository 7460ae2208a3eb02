"""Graceful drain of a real `twist aistack-tts` process on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_process import get_request, listening_ports
from upstream_server import UpstreamProcess

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


def read_rest(sock: socket.socket) -> tuple[bytes, bool]:
    """Read to EOF; say whether the connection was reset instead of closed cleanly."""
    data = b""
    try:
        while more := sock.recv(1 << 20):
            data += more
    except ConnectionResetError:
        return data, True
    return data, False


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
            rest, reset = read_rest(sock)
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
            rest, reset = read_rest(sock)
        assert reset or not rest.endswith(b"\r\n0\r\n\r\n"), "a cut stream never ends cleanly"
        closed = upstream.wait("drain2", {"CLOSED"}, timeout=10)
        assert closed.t - sent < 5
        # twist ends by re-raising the signal it stopped on, after the drain.
        assert gateway.wait(timeout=20) == -signal.SIGTERM
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
