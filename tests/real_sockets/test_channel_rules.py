"""The client connection's rules of issue 23 item 5, against a real ``twist aistack-tts`` process.

One gateway (``--client-timeout 5 --keepalive-timeout 30 --max-body 100000``) in front of the
``upstream_server.py`` process, driven by blocking raw sockets. Each test failed on the
gateway before the rule: ``Connection: keep-alive,close`` kept the connection open, a folded
``Content-Length`` turned the body into a second request, an absurd chunk size (or one over
``--max-body``) waited for the client timeout, ``Expect: 100-continue`` invited the body of a
request about to get ``503 gpu_busy``, and an upload cut short left no access event.
``tests/server/test_channel_rules.py`` has the in-memory tests of each rule.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.logs import log_events
from testbed.processes import GatewayProcess, UpstreamProcess

pytestmark = pytest.mark.real_sockets

CLIENT_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 30.0
MAX_BODY = 100_000
#: "At once": well under the client timeout, with room for a loaded machine.
AT_ONCE = 2.0


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess.start(
        "aistack-tts",
        upstream.port,
        tmp_path_factory.mktemp("gateway"),
        options=[
            # A busy GPU answers at once: the Expect test is about a refusal before the body.
            "--queue-timeout",
            "0",
            "--client-timeout",
            str(CLIENT_TIMEOUT),
            "--keepalive-timeout",
            str(KEEPALIVE_TIMEOUT),
            "--max-body",
            str(MAX_BODY),
        ],
    )
    try:
        yield process
    finally:
        process.stop()


def connect(gateway: GatewayProcess, timeout: float = CLIENT_TIMEOUT + 3) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout)


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What arrives within ``within`` s, and whether the gateway closed (or reset) by then."""
    data = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, True
        if not more:
            return data, True
        data += more
    return data, False


def envelope(raw: bytes) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines[1:])
    }
    error = json.loads(body)["error"] if body.startswith(b"{") else {}
    return int(lines[0].split(b" ")[1]), headers, error


# a) close anywhere in Connection.


@pytest.mark.parametrize(
    "connection",
    [
        b"Connection: keep-alive,close\r\n",
        b"Connection: Keep-Alive,CLOSE\r\n",
        b"Connection: keep-alive\r\nConnection: close\r\n",
    ],
    ids=["no-space", "any-case", "second-line"],
)
def test_close_in_any_form_closes_after_the_response(
    gateway: GatewayProcess, connection: bytes
) -> None:
    """The response says ``Connection: close`` and the connection ends right after it (it
    stayed open for the 30 s keep-alive timeout)."""
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/audio/echo?id=conn HTTP/1.1\r\nHost: gw\r\n" + connection + b"\r\n")
        raw, closed = read_until_closed(sock, AT_ONCE)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert closed, "the connection stayed open after the response"
    assert b"\r\nConnection: close\r\n" in raw.partition(b"\r\n\r\n")[0] + b"\r\n"


# b) obs-fold.


def test_a_folded_content_length_is_refused_and_smuggles_nothing(
    gateway: GatewayProcess, upstream: UpstreamProcess
) -> None:
    """``X-Pad: x`` then `` Content-Length: N``: Twisted joined the lines, so the carrier went
    upstream without a body and its body went upstream as a second request; now a 400."""
    smuggled = b"GET /v1/audio/echo?id=smuggled-fold HTTP/1.1\r\nHost: gw\r\n\r\n"
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=carrier-fold HTTP/1.1\r\nHost: gw\r\nX-Pad: x\r\n"
            b" Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
        )
        raw, closed = read_until_closed(sock, AT_ONCE)
    time.sleep(0.2)
    assert upstream.events("smuggled-fold") == [], "the body went upstream as a request"
    assert upstream.events("carrier-fold") == []
    status, _headers, error = envelope(raw)
    assert (status, error["type"], error["provider"]) == (400, "invalid_request", "aistack")
    assert "folding" in error["message"]
    assert closed


# c) Chunk sizes.


@pytest.mark.parametrize(
    ("size", "status", "kind"),
    [
        (b"ffffffffffffffffffff", 400, "invalid_request"),
        (b"fffff", 413, "request_too_large"),
    ],
    ids=["absurd-400", "over-max-body-413"],
)
def test_a_chunk_size_is_judged_as_soon_as_its_line_is_in(
    gateway: GatewayProcess, upstream: UpstreamProcess, size: bytes, status: int, kind: str
) -> None:
    """A size no body can have is a 400, one over ``--max-body`` (1,048,575 > 100,000) a 413,
    at once: both were a 408 after the client timeout (5 s here)."""
    ident = b"chunk-%d" % status
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n%s\r\n" % (ident, size)
        )
        sent = time.monotonic()
        raw, closed = read_until_closed(sock, CLIENT_TIMEOUT + 2)
        took = time.monotonic() - sent
    got, headers, error = envelope(raw)
    assert (got, error["type"]) == (status, kind), raw[:300]
    assert took < AT_ONCE, f"answered after {took:.2f} s"
    assert b"date" in headers
    assert closed
    assert upstream.events(ident.decode()) == []


# d) Expect: 100-continue and a busy GPU.


def test_expect_with_the_gpu_busy_gets_the_503_before_100_continue(
    gateway: GatewayProcess, upstream: UpstreamProcess
) -> None:
    """A call holds the slot (the upstream waits 3 s before its headers); a POST with
    ``Expect: 100-continue`` gets the ``gpu_busy`` envelope with Retry-After and no ``100
    Continue``, so it never sends its body (it was invited, then refused)."""
    holder = connect(gateway)
    try:
        holder.sendall(
            b"GET /v1/audio/stream?id=holder&bytes=1000&delay=3 HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        upstream.wait("holder", {"START"}, timeout=10)
        with connect(gateway) as sock:
            sock.sendall(
                b"POST /v1/audio/echo?id=expecting HTTP/1.1\r\nHost: gw\r\nContent-Length: 50000"
                b"\r\nExpect: 100-continue\r\n\r\n"
            )
            raw, closed = read_until_closed(sock, AT_ONCE)
    finally:
        holder.close()
    upstream.wait("holder", {"CLOSED", "DONE"}, timeout=10)
    assert not raw.startswith(b"HTTP/1.1 100 "), "the body was invited"
    status, headers, error = envelope(raw)
    assert (status, error["type"], error["provider"]) == (503, "gpu_busy", "aistack")
    assert 1 <= int(headers[b"retry-after"]) <= 60
    assert b"retry-after-ms" in headers
    assert closed
    assert upstream.events("expecting") == []


def test_expect_with_the_gpu_free_is_invited(gateway: GatewayProcess) -> None:
    """A free slot: ``100 Continue``, then the call, as before."""
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=invited HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        sock.settimeout(AT_ONCE)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        raw, _closed = read_until_closed(sock, AT_ONCE)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


# e) An upload cut by the client.


def test_an_upload_cut_by_the_client_leaves_a_client_left_event(
    gateway: GatewayProcess,
) -> None:
    """30,000 of 100,000 declared bytes, then the client closes: one access event with outcome
    ``client_left``, no status, and ``bytes_in`` 30,000 (there was none)."""
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=cut HTTP/1.1\r\nHost: gw\r\nX-Request-Id: upload-cut\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"a" * 30_000
        )
        time.sleep(0.2)
    deadline = time.monotonic() + AT_ONCE * 2
    while True:
        events = [
            e
            for e in log_events(gateway.log_path)
            if e.get("namespace") == "aistack_tts.access" and e.get("request_id") == "upload-cut"
        ]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert events, "no access event for the cut upload"
    [event] = events
    assert event["outcome"] == "client_left"
    assert (event["status"], event["provider"], event["slot"]) == (None, "none", "none")
    assert event["bytes_in"] == 30_000
    assert event["path"] == "/v1/audio/echo?id=cut"
