"""A real ``twist aistack-tts`` out of file descriptors: its own trouble, not the upstream's.

The gateway runs with a small ``RLIMIT_NOFILE`` and the test holds enough client connections
open to use up every descriptor it has; a request on one of them then needs an upstream socket
the gateway cannot open (``EMFILE``).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aistack_tts.wire._descriptors import default_max_connections
from support.logs import log_events
from support.raw_upstream import Reply, raw_upstream, wait_for
from support.wire import parse_response
from testbed.clients import read_to_close
from testbed.processes import aistack_command, listening_ports, stop_process

pytestmark = pytest.mark.real_sockets

#: The gateway's descriptor limit in this module: room to start, little to spare.
NOFILE = 64
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Gateway:
    """``twist aistack-tts`` (JSON lines: stdout is a file) with ``RLIMIT_NOFILE`` = ``NOFILE``."""

    def __init__(self, upstream: str, workdir: Path, *options: str) -> None:
        self.log_path = workdir / "gateway.log"
        self._log = self.log_path.open("wb")

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
        self.process = subprocess.Popen(
            aistack_command(upstream, *options),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=limit,
        )
        assert wait_for(lambda: listening_ports(self.process.pid), timeout=30)
        self.port = min(listening_ports(self.process.pid))

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log_path)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with raw_upstream(Reply(OK, end="fin")) as upstream:
        # A --max-connections over what the descriptors allow (its default would refuse the
        # connections first, which is the point of that default: see the last test).
        started = Gateway(upstream.url, tmp_path, "--max-connections", str(NOFILE * 4))
        try:
            yield started
        finally:
            started.stop()


def request(sock: socket.socket) -> bytes:
    """``GET`` on a connected socket; the whole response (the gateway closes after it)."""
    sock.sendall(
        b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    return read_to_close(sock)[0]


def exhaust(gateway: Gateway) -> list[socket.socket]:
    """Connect until the gateway holds every descriptor it may open; the connections."""
    held = []
    for _ in range(NOFILE + 16):
        held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=10))
    # The gateway accepts what it can (Twisted closes the rest at once); wait until it is full.
    assert wait_for(lambda: open_fds(gateway.process.pid) >= NOFILE, timeout=10)
    return held


def test_out_of_descriptors_is_a_503_from_the_gateway_and_recovers_at_once(
    gateway: Gateway,
) -> None:
    """EMFILE on the upstream socket: 503 ``local_resource_exhausted`` from ``aistack``.

    The message names the limit, ``Retry-After: 1``; the upstream is not marked down, so the
    first request after descriptors free is served (not 5 s of ``upstream_unavailable``), and
    three failures log one warning line, not three.
    """
    first = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    assert parse_response(request(first))[0] == 200
    early = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(3)]
    time.sleep(0.2)  # let the gateway accept these before the rest fill its table
    held = exhaust(gateway)
    answers = []
    for sock in early:
        answers.append(request(sock))
        # Its answer closed one connection: fill the freed descriptor again.
        held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=10))
        assert wait_for(lambda: open_fds(gateway.process.pid) >= NOFILE, timeout=10)
    for sock in [first, *early, *held]:
        sock.close()
    for raw in answers:
        status, headers, body = parse_response(raw)
        assert status == 503, raw[:300]
        error = json.loads(body)["error"]
        assert (error["type"], error["provider"]) == ("local_resource_exhausted", "aistack")
        assert f"limit ({NOFILE})" in error["message"]
        assert headers[b"retry-after"] == [b"1"]
    assert wait_for(lambda: open_fds(gateway.process.pid) < NOFILE - 8, timeout=10)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as again:
        raw = request(again)
    assert parse_response(raw)[0] == 200, raw[:300]
    warnings = [e for e in gateway.events() if e.get("namespace") == "aistack_tts.resources"]
    assert [w["what"] for w in warnings] == [
        "refusing new client connections",
        "out of file descriptors",
    ], warnings


def test_connections_refused_for_want_of_descriptors_log_one_line(gateway: Gateway) -> None:
    """Twisted closes each client it cannot keep (EMFILE at accept) and logs a line for each;
    the gateway logs one line per interval instead, with the count."""
    held = exhaust(gateway)
    more = [socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(20)]
    for sock in more:
        assert sock.recv(1) == b"", "closed by the gateway at once"
    for sock in held + more:
        sock.close()
    events = gateway.events()
    per_connection = [
        e
        for e in events
        if "EMFILE" in str(e.get("message", "")) and e.get("namespace") != "aistack_tts.resources"
    ]
    assert not per_connection, per_connection[:3]
    [warning] = [e for e in events if e.get("namespace") == "aistack_tts.resources"]
    assert warning["what"] == "refusing new client connections"
    assert f"limit ({NOFILE})" in warning["detail"]
    assert warning["count"] >= 1


def test_max_connections_by_default_keeps_descriptors_for_the_calls(tmp_path: Path) -> None:
    """With no --max-connections, the limit comes from the descriptors ((64 - 16) / 2 = 24
    here): the 25th client connection is closed at once, the held ones can still make their
    calls (an upstream socket each), and one line is logged for the refusals. The gateway
    before accepted every connection until it could open no upstream socket."""
    most = default_max_connections(NOFILE)
    with raw_upstream(Reply(OK, end="fin")) as upstream:
        gateway = Gateway(upstream.url, tmp_path)
        try:
            held = [
                socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                for _ in range(most)
            ]
            extra = [
                socket.create_connection(("127.0.0.1", gateway.port), timeout=10) for _ in range(10)
            ]
            for sock in extra:
                assert sock.recv(1) == b"", "closed by the gateway at once"
                sock.close()
            answers = [request(sock) for sock in held[:3]]
            for sock in held:
                sock.close()
            assert [parse_response(raw)[0] for raw in answers] == [200, 200, 200]
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as again:
                assert parse_response(request(again))[0] == 200
        finally:
            gateway.stop()
    warnings = [e for e in gateway.events() if e.get("namespace") == "aistack_tts.resources"]
    assert [w["what"] for w in warnings] == ["refusing new client connections"], warnings
    assert f"{most} client connections are open" in warnings[0]["detail"]
