"""The queue and a dead upstream, against a real ``twist aistack-tts`` (issue 26).

Two upstreams, one dead, three calls 50 ms apart: all three are served (they got 200, 503,
503). An upstream that comes back serves the first call after it (calls got 503 for the rest
of the cool-down).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.processes import GatewayProcess, UpstreamProcess, refusing_port, stop_process

pytestmark = pytest.mark.real_sockets


SPEECH = {"model": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "voice": "Vivian", "input": "Hi"}


def speech(
    port: int, target: str = "/v1/audio/stream?bytes=1000&delay=0.5", body: bytes | None = None
) -> tuple[int, str]:
    """One call through the gateway: its status and its envelope's type (if any)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {} if body is None else {"Content-Type": "application/json"}
    try:
        connection.request("GET" if body is None else "POST", target, body, headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 200:
        return 200, ""
    return response.status, json.loads(body)["error"]["type"]


@pytest.fixture
def gateway_with_a_dead_upstream(
    upstream: UpstreamProcess, tmp_path: Path
) -> Iterator[GatewayProcess]:
    with refusing_port() as dead:
        options = ["--upstream", f"http://127.0.0.1:{dead}", "--queue-timeout", "5"]
        process = GatewayProcess.start("aistack-tts", upstream.port, tmp_path, options=options)
        try:
            yield process
        finally:
            process.stop()


def test_three_calls_with_one_upstream_dead_are_all_served(
    gateway_with_a_dead_upstream: GatewayProcess,
) -> None:
    """Three calls 50 ms apart (each 0.5 s on the live upstream): the one refused by the
    dead upstream and the ones queued behind wait for the live one, and all get 200."""
    port = gateway_with_a_dead_upstream.port
    results: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: results.append(speech(port))) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(30)
    assert results == [(200, "")] * 3


def speak(port: int) -> tuple[int, str]:
    """``POST /v1/audio/speech`` (it takes the slot) through the gateway."""
    return speech(port, "/v1/audio/speech", json.dumps(SPEECH).encode())


def demo_upstream(port: int) -> subprocess.Popen[bytes]:
    twist = str(Path(sys.executable).parent / "twist")
    listen = f"tcp:{port}:interface=127.0.0.1"
    return subprocess.Popen(
        [twist, "aistack-tts-demo-upstream", "--listen", listen],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_accepting(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_the_first_call_after_the_upstream_returns_is_served(tmp_path: Path) -> None:
    """The upstream refuses: 503 upstream_unavailable, and again (each call tries it). It
    comes back within the cool-down (30 s here): the next call gets 200, not a 503 for the
    rest of the cool-down."""
    with refusing_port() as port:
        pass  # a port nothing listens on
    gateway = GatewayProcess.start("aistack-tts", port, tmp_path, options=["--down-cooldown", "30"])
    upstream: subprocess.Popen[bytes] | None = None
    try:
        assert speak(gateway.port) == (503, "upstream_unavailable")
        assert speak(gateway.port) == (503, "upstream_unavailable")
        upstream = demo_upstream(port)
        wait_accepting(port)
        assert speak(gateway.port) == (200, "")
        assert speak(gateway.port) == (200, "")
    finally:
        gateway.stop()
        if upstream is not None:
            stop_process(upstream)
