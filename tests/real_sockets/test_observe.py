"""The operator's view of a real ``twist aistack-tts`` process: its log lines and ids.

Each test starts the gateway as an operator would (stdout to a file, so not a terminal) and
reads what it wrote with ``json.loads`` per ``\\n``-separated line, as a JSON-lines ingester
does. ``str.splitlines`` is not used: it also splits at 0x1E, and would hide RFC 7464 records.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support.raw_upstream import Reply, raw_upstream
from testbed.processes import aistack_command, listening_ports, stop_process

pytestmark = [pytest.mark.real_sockets]

#: Bounds a wait for something that normally takes milliseconds.
PATIENCE = 10.0
SPEECH = json.dumps({"input": "Hello there.", "voice": "Vivian"})


class Gateway:
    """``twist aistack-tts`` with stdout to a file; its JSON lines, read back."""

    def __init__(self, command: list[str], workdir: Path) -> None:
        self.log_path = workdir / f"gateway-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.port = 0
        expected = 2 if "--demo" in command else 1
        deadline = time.monotonic() + 30
        while not self.port:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start: {self.log_path.read_text()}")
            ports = listening_ports(self.process.pid)
            if len(ports) == expected:
                # With --demo the demo upstream listens too: the gateway is the one with /healthz.
                [self.port] = [p for p in ports if call(p, "GET", "/healthz")[0] == 200]
            time.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()

    def lines(self) -> list[dict[str, Any]]:
        """Every complete line written so far, each parsed on its own."""
        text = self.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.split("\n")[:-1]]

    def access(self) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("namespace") == "aistack_tts.access"]

    def access_for(self, request_id: str) -> dict[str, Any]:
        """The access event of the call the client saw ``request_id`` on (waits for it)."""
        found: list[dict[str, Any]] = []

        def logged() -> bool:
            found[:] = [e for e in self.access() if e.get("request_id") == request_id]
            return bool(found)

        until(logged, f"an access event with request_id {request_id}")
        [event] = found
        return event


def until(predicate: Callable[[], object], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def call(
    port: int,
    method: str,
    path: str,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, float]:
    """One request on a new connection: status, headers (lower-case names), body, seconds."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        data = response.read()
        got = {name.lower(): value for name, value in response.getheaders()}
        return response.status, got, data, time.monotonic() - started
    finally:
        conn.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Gateway]:
    """The gateway with the demo upstream, waiting up to 5 s for a busy GPU."""
    # --demo runs its own upstream: no --upstream with it (the gateway refuses one).
    command = aistack_command("http://127.0.0.1:9", "--demo")
    at = command.index("--upstream")
    del command[at : at + 2]
    gateway = Gateway([*command, "--queue-timeout", "5", "--max-body", "4096"], tmp_path)
    try:
        yield gateway
    finally:
        gateway.stop()


def test_every_line_is_a_json_object_with_an_iso_time(demo: Gateway) -> None:
    """Not a terminal: each log line is one JSON object (no RFC 7464 0x1E), with an ISO 8601
    ``time``, ``level``, ``namespace`` and ``message``; the access fields are at the top."""
    status, headers, _body, _s = call(demo.port, "GET", "/v1/audio/voices")
    assert status == 200
    event = demo.access_for(headers["x-request-id"])
    assert (event["method"], event["path"], event["status"], event["outcome"]) == (
        "GET",
        "/v1/audio/voices",
        200,
        "ok",
    )
    raw = demo.log_path.read_bytes()
    assert b"\x1e" not in raw
    for line in demo.lines():
        assert {"time", "level", "namespace", "message"} <= line.keys(), line
        assert datetime.fromisoformat(line["time"]).tzinfo is not None, line["time"]


def test_start_up_line_says_what_runs(demo: Gateway) -> None:
    """One start-up line names the upstream, the slots, the queue and the switches."""
    until(lambda: any("slot" in e["message"] for e in demo.lines()), "the start-up line")
    [line] = [e for e in demo.lines() if e["namespace"] == "aistack_tts.startup"]
    text = line["message"]
    for expected in ("http://127.0.0.1:", "1 slot", "queue-timeout 5", "max-body 4096", "/metrics"):
        assert expected in text, text
    assert line["upstreams"].startswith("http://127.0.0.1:")
    # Listening on tcp:0, the line names where it is bound (logged once it is).
    assert line["listen"] == "tcp:0:interface=127.0.0.1"
    assert line["bound"] == f"127.0.0.1:{demo.port}"
    assert text.endswith(f"listen tcp:0:interface=127.0.0.1 on 127.0.0.1:{demo.port}")
    # Twisted's own "GatewaySite starting on PORT" (and the demo's) are left out.
    assert not [e for e in demo.lines() if " starting on " in e["message"]]


def test_request_id_comes_back_on_200_envelope_early_answer_and_101(demo: Gateway) -> None:
    """``X-Request-Id`` is on every answer (the client's own when sane), and is the id logged."""
    mine = {"X-Request-Id": "mine-1"}
    status, headers, _b, _s = call(demo.port, "GET", "/v1/audio/voices", None, mine)
    assert (status, headers["x-request-id"]) == (200, "mine-1")
    demo.access_for("mine-1")

    status, headers, body, _s = call(demo.port, "GET", "/nowhere")
    assert status == 404
    event = demo.access_for(headers["x-request-id"])
    assert (event["outcome"], event["bytes_out"]) == ("not_found", len(body))

    # Over --max-body: answered by the channel before any routing.
    status, headers, body, _s = call(demo.port, "POST", "/v1/audio/speech", "x" * 5000)
    assert status == 413
    event = demo.access_for(headers["x-request-id"])
    assert (event["outcome"], event["bytes_out"]) == ("request_too_large", len(body))

    head = websocket_close_session(demo.port, "ws-1")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nX-Request-Id: ws-1\r\n" in head


def websocket_close_session(port: int, request_id: str) -> bytes:
    """Open a WebSocket session, close it with a close frame (1000); the 101 head."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        sock.sendall(
            (
                "GET /v1/audio/speech/stream HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nX-Request-Id: {request_id}\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            assert more, data
            data += more
        head, rest = data.split(b"\r\n\r\n", 1)
        mask = os.urandom(4)
        payload = (1000).to_bytes(2, "big")
        masked = bytes(b ^ mask[i] for i, b in enumerate(payload))
        sock.sendall(bytes([0x88, 0x80 | 2]) + mask + masked)
        while more := sock.recv(65536):
            rest += more
        assert rest.startswith(b"\x88"), "the upstream answered our close frame"
    return head + b"\r\n"


def test_websocket_closed_by_the_client_is_logged_so(demo: Gateway) -> None:
    """A session the client ends with a close frame is ``ws_closed_by_client``, even though
    the upstream (as RFC 6455 asks of a server) drops the TCP connection first."""
    websocket_close_session(demo.port, "ws-close")
    event = demo.access_for("ws-close")
    assert (event["status"], event["outcome"]) == (101, "ws_closed_by_client")
    assert "1000" in event["cause"]


def test_queue_wait_and_slot_hold_are_logged_apart(demo: Gateway) -> None:
    """Two speech calls at once on one slot: the second waits. Its logged duration includes
    the wait (what its client measured), with ``queue_wait`` and ``slot_held`` apart."""
    results: dict[str, float] = {}

    def speak(request_id: str) -> None:
        status, _h, _b, seconds = call(
            demo.port,
            "POST",
            "/v1/audio/speech",
            SPEECH,
            # The real server (and so the demo) refuses a body not declared JSON.
            {"X-Request-Id": request_id, "Content-Type": "application/json"},
        )
        assert status == 200
        results[request_id] = seconds

    threads = [threading.Thread(target=speak, args=(f"q{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert len(results) == 2
    events = sorted((demo.access_for(rid) for rid in results), key=lambda e: e["queue_wait"])
    first, second = events
    assert first["queue_wait"] < 0.1 < second["queue_wait"]
    for event in events:
        assert event["upstream"].startswith("http://127.0.0.1:")
        parts = event["queue_wait"] + event["slot_held"]
        assert event["duration"] == pytest.approx(parts, abs=0.05)
        # The client waited at least what the log says (and not much more).
        assert event["duration"] <= results[event["request_id"]] + 0.01
        assert results[event["request_id"]] - event["duration"] < 0.5
    assert second["queue_wait"] >= first["slot_held"] - 0.1
    _s, _h, metrics, _t = call(demo.port, "GET", "/metrics")
    text = metrics.decode()
    assert "aistack_tts_queue_wait_seconds_count 2.0" in text
    upstream = first["upstream"]
    assert f'aistack_tts_upstream_calls_total{{outcome="ok",upstream="{upstream}"}} 2.0' in text


def test_readyz_probes_and_the_demo_are_told_apart(demo: Gateway) -> None:
    """/readyz probes log no "Starting factory"; the demo upstream's own lines say they are
    the demo's, so they are not taken for the gateway's."""
    for _ in range(2):
        assert call(demo.port, "GET", "/readyz")[0] == 200
    _status, headers, _b, _s = call(demo.port, "GET", "/v1/audio/voices")
    demo.access_for(headers["x-request-id"])
    until(lambda: any("demo" in e["namespace"] for e in demo.lines()), "a demo line")
    lines = demo.lines()
    assert not [e for e in lines if "factory" in e["message"].lower()]
    demo_lines = [e for e in lines if "GET /v1/audio/voices" in e["message"]]
    ours = [e for e in demo_lines if e["namespace"] == "aistack_tts.access"]
    theirs = [e for e in demo_lines if e["namespace"] != "aistack_tts.access"]
    assert len(ours) == 1
    assert theirs
    for event in theirs:
        assert event["namespace"] == "aistack_tts_demo.access"
        assert event["message"].startswith("demo upstream: "), event["message"]


def test_a_dead_upstream_is_named_with_its_cause(tmp_path: Path, refused_upstream: str) -> None:
    """An upstream that refuses: a warning at start names it and the cause; the access event
    names both (the exception the client's envelope names) at level error, counts the
    envelope's bytes; the fault is counted by upstream."""
    dead = refused_upstream
    gateway = Gateway(aistack_command(dead), tmp_path)
    try:
        # At start, once it listens: one warning naming the upstream and why.
        def warned() -> list[dict[str, Any]]:
            return [e for e in gateway.lines() if e["level"] == "warn"]

        until(warned, "the start's warning")
        [warning] = warned()
        assert (warning["namespace"], warning["upstream"]) == ("aistack_tts.startup", dead)
        assert "ConnectionRefusedError" in warning["cause"]
        assert warning["message"].startswith(f"upstream {dead} cannot be reached (")
        status, headers, body, _s = call(gateway.port, "GET", "/v1/audio/voices")
        assert status == 503
        event = gateway.access_for(headers["x-request-id"])
        assert (event["outcome"], event["upstream"]) == ("upstream_unavailable", dead)
        assert event["level"] == "error"
        assert "ConnectionRefusedError" in event["cause"]
        assert event["bytes_out"] == len(body)
        _s, _h, metrics, _t = call(gateway.port, "GET", "/metrics")
        assert (
            f'aistack_tts_upstream_faults_total{{type="unavailable",upstream="{dead}"}} 1.0'
            in metrics.decode()
        )
    finally:
        gateway.stop()


def test_the_upstreams_own_request_id_and_the_timeout_that_fired(tmp_path: Path) -> None:
    """An upstream that answers with its own ``X-Request-Id``: the client gets that one, and
    the log carries it and the gateway's. A silent upstream: the cause names --idle-timeout."""
    own = Reply(b"HTTP/1.1 200 OK\r\nX-Request-Id: up-7\r\nContent-Length: 2\r\n\r\nok")
    with raw_upstream(own) as upstream:
        gateway = Gateway(aistack_command(upstream.url, "--idle-timeout", "0.3"), tmp_path)
        try:
            status, headers, _b, _s = call(
                gateway.port, "GET", "/v1/audio/voices", None, {"X-Request-Id": "mine-2"}
            )
            assert (status, headers["x-request-id"]) == (200, "up-7")
            assert b"X-Request-Id: mine-2" in upstream.seen[-1].request
            event = gateway.access_for("up-7")
            assert event["gateway_request_id"] == "mine-2"

            upstream.reply = Reply(b"", end="hold")
            status, headers, _b, _s = call(gateway.port, "GET", "/v1/audio/voices")
            assert status == 504
            event = gateway.access_for(headers["x-request-id"])
            assert event["outcome"] == "upstream_timeout"
            assert "--idle-timeout" in event["cause"]
        finally:
            gateway.stop()


def test_the_standalone_demo_upstream_writes_the_same_json_lines(tmp_path: Path) -> None:
    """``twist aistack-tts-demo-upstream`` off a terminal: the gateway's JSON lines (one
    object a line, ISO time, level, namespace, message), not Twisted's raw event JSON."""
    command = aistack_command("http://127.0.0.1:9")
    twist = command[: command.index("aistack-tts")]
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*twist, "aistack-tts-demo-upstream", "--listen", "tcp:0:interface=127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")},
        )
        try:
            ports: set[int] = set()

            def bound() -> bool:
                ports.update(listening_ports(process.pid))
                return bool(ports)

            until(bound, "the demo's port")
            [port] = ports
            assert call(port, "GET", "/v1/audio/voices")[0] == 200
            until(lambda: b"GET /v1/audio/voices" in log_path.read_bytes(), "its access line")
        finally:
            stop_process(process)
    raw = log_path.read_bytes()
    assert b"\x1e" not in raw
    lines = [json.loads(line) for line in raw.decode().split("\n")[:-1]]
    for line in lines:
        assert {"time", "level", "namespace", "message"} <= line.keys(), line
        assert "log_format" not in line, line
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
    assert [e for e in lines if e["namespace"] == "aistack_tts_demo.access"]
    # Its only line naming the port it bound: kept.
    assert any(e["message"] == f"DemoUpstreamSite starting on {port}" for e in lines)
