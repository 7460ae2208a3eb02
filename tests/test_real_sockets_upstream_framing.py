"""What a real ``twist aistack-tts`` does with an upstream that breaks HTTP's framing.

The upstream is L{raw_upstream.RawUpstream}: exact bytes, then a clean close (FIN) or a reset
(RST). The client is a raw socket that reads to the end and says how the connection ended.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_process import AISTACK_TTS, GatewayProcess, get_request
from raw_upstream import RawUpstream, Reply, raw_upstream, wait_for
from support import dechunk, parse_response

pytestmark = pytest.mark.real_sockets

#: A close-delimited 200: no Content-Length, no chunking; the body ends when the connection does.
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n\r\n" + b"a" * 1000


@pytest.fixture
def gateway_for(tmp_path: Path) -> Iterator[Any]:
    """Start a gateway in front of a raw upstream; stopped at the end."""
    started: list[GatewayProcess] = []

    def start(upstream: RawUpstream, *options: str) -> GatewayProcess:
        gateway = GatewayProcess.start(AISTACK_TTS, upstream.port, tmp_path, options=options)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def call(port: int, target: str = "/v1/audio/speech") -> tuple[bytes, bool]:
    """``GET target``; the raw response and whether the connection was reset (not closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(get_request(target))
        data = b""
        try:
            while more := sock.recv(1 << 20):
                data += more
        except ConnectionResetError:
            return data, True
    return data, False


def log_events(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The (JSON) log events the gateway wrote so far."""
    events = []
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def access_outcomes(gateway: GatewayProcess) -> list[str]:
    """The outcome of each access event the gateway logged so far."""
    return [
        e["outcome"] for e in log_events(gateway) if e.get("log_namespace") == "aistack_tts.access"
    ]


def logged_outcomes(gateway: GatewayProcess, count: int) -> list[str]:
    """Wait (briefly) for ``count`` access lines; their outcomes."""
    wait_for(lambda: len(access_outcomes(gateway)) >= count, timeout=5)
    return access_outcomes(gateway)


def test_close_delimited_body_ended_by_a_reset_aborts_the_client(gateway_for: Any) -> None:
    """A length-less 200 cut by an RST never ends cleanly: the client is reset, no terminator.

    The access event says ``upstream_error_mid_body``, as for the other mid-body faults.
    """
    with raw_upstream(Reply(CLOSE_DELIMITED, end="rst")) as upstream:
        gateway = gateway_for(upstream)
        raw, reset = call(gateway.port)
        assert reset, f"the client connection must be aborted, not closed: {raw[-200:]!r}"
        if raw:  # the abort may discard what the gateway had not sent yet
            status, _headers, body = parse_response(raw)
            assert status == 200
            _data, terminated = dechunk(body)
            assert not terminated, "a reset upstream body was ended as if it were whole"
        assert logged_outcomes(gateway, 1) == ["upstream_error_mid_body"]


def test_close_delimited_body_ended_by_a_fin_is_whole(gateway_for: Any) -> None:
    """A length-less 200 ended by a clean close is the whole body: it ends cleanly."""
    with raw_upstream(Reply(CLOSE_DELIMITED, end="fin")) as upstream:
        gateway = gateway_for(upstream)
        raw, reset = call(gateway.port)
        status, _headers, body = parse_response(raw)
        assert (status, dechunk(body), reset) == (200, (b"a" * 1000, True), False)
        assert logged_outcomes(gateway, 1) == ["ok"]
