"""What a real ``twist aistack-tts`` does with an upstream that breaks HTTP's framing.

The upstream is ``raw_upstream.RawUpstream``: exact bytes, then a clean close (FIN) or a reset
(RST). The client is a raw socket that reads to the end and says how the connection ended.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from support.logs import log_events
from support.raw_upstream import RawUpstream, Reply, raw_upstream, wait_for
from support.wire import dechunk, parse_response
from testbed.clients import get_request, read_to_close
from testbed.processes import AISTACK_TTS, GatewayProcess

pytestmark = pytest.mark.real_sockets

#: A close-delimited 200: no Content-Length, no chunking; the body ends when the connection does.
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n\r\n" + b"a" * 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawUpstream, GatewayProcess]]:
    """One raw upstream (each test sets its ``reply``) and one gateway in front of it."""
    with raw_upstream(Reply(b"")) as upstream:
        workdir = tmp_path_factory.mktemp("framing")
        gateway = GatewayProcess.start(AISTACK_TTS, upstream.port, workdir)
        try:
            yield upstream, gateway
        finally:
            gateway.stop()


def call(port: int, target: str = "/v1/audio/speech") -> tuple[bytes, bool]:
    """``GET target``; the raw response and whether the connection was reset (not closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(get_request(target))
        return read_to_close(sock)


def access_outcomes(gateway: GatewayProcess) -> list[str]:
    """The outcome of each access event the gateway logged so far."""
    return [
        e["outcome"]
        for e in log_events(gateway.log_path)
        if e.get("namespace") == "aistack_tts.access"
    ]


def answer(stack: tuple[RawUpstream, GatewayProcess], reply: Reply) -> tuple[bytes, bool, str]:
    """One call with the upstream answering ``reply``: raw response, reset?, access outcome."""
    upstream, gateway = stack
    upstream.reply = reply
    before = len(access_outcomes(gateway))
    raw, reset = call(gateway.port)
    assert wait_for(lambda: len(access_outcomes(gateway)) > before, timeout=5)
    return raw, reset, access_outcomes(gateway)[before]


def test_close_delimited_body_ended_by_a_reset_aborts_the_client(stack: Any) -> None:
    """A length-less 200 cut by an RST never ends cleanly: the client is reset, no terminator.

    The access event says ``upstream_error_mid_body``, as for the other mid-body faults.
    """
    raw, reset, outcome = answer(stack, Reply(CLOSE_DELIMITED, end="rst"))
    assert reset, f"the client connection must be aborted, not closed: {raw[-200:]!r}"
    if raw:  # the abort may discard what the gateway had not sent yet
        status, _headers, body = parse_response(raw)
        assert status == 200
        _data, terminated = dechunk(body)
        assert not terminated, "a reset upstream body was ended as if it were whole"
    assert outcome == "upstream_error_mid_body"


def test_close_delimited_body_ended_by_a_fin_is_whole(stack: Any) -> None:
    """A length-less 200 ended by a clean close is the whole body: it ends cleanly."""
    raw, reset, outcome = answer(stack, Reply(CLOSE_DELIMITED, end="fin"))
    status, _headers, body = parse_response(raw)
    assert (status, dechunk(body), reset, outcome) == (200, (b"a" * 1000, True), False, "ok")


#: Upstream heads the gateway must not relay, and what its 502 message must say.
INVALID_HEADS = {
    "a_2_mib_head": (
        b"HTTP/1.1 200 OK\r\n" + (b"X-Pad: " + b"p" * 1000 + b"\r\n") * 2048,
        "its response head is over the gateway's limit of 65536 bytes",
    ),
    "nul_in_a_header_value": (
        b"HTTP/1.1 200 OK\r\nX-Voice: al\x00loy\r\nContent-Length: 2\r\n\r\nok",
        "control character 0x00 in the value of its header 'X-Voice'",
    ),
    "chunked_then_identity": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding 'chunked, identity'",
    ),
    "chunked_and_content_length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        "both Transfer-Encoding and Content-Length in its response",
    ),
    "bad_status_line": (b"HTTP/1.1 OK 200\r\n\r\n", "bad status line 'HTTP/1.1 OK 200'"),
}


@pytest.mark.parametrize("name", sorted(INVALID_HEADS))
def test_invalid_upstream_head_is_a_502_saying_why(stack: Any, name: str) -> None:
    """An upstream head that is too big or not valid HTTP/1.1 never reaches the client.

    The client gets a 502 ``upstream_error`` envelope whose message says what was wrong (no
    exception names), and the gateway closes that upstream connection (the upstream holds it
    open, so only the gateway can).
    """
    data, message = INVALID_HEADS[name]
    upstream, _gateway = stack
    raw, _reset, outcome = answer(stack, Reply(data, end="hold"))
    status, error = envelope_of(raw)
    assert (status, error["type"], error["provider"]) == (502, "upstream_error", "qwen3-tts")
    assert error["message"] == f"the upstream's response is not valid HTTP/1.1: {message}"
    assert outcome == "upstream_error"
    assert upstream.seen[-1].peer_closed.wait(5), "the gateway kept the upstream connection"


def envelope_of(raw: bytes) -> tuple[int, dict[str, Any]]:
    """Status and ``error`` object of a gateway envelope."""
    status, headers, body = parse_response(raw)
    assert headers[b"content-type"] == [b"application/json"], raw[:300]
    error: dict[str, Any] = json.loads(body)["error"]
    return status, error
