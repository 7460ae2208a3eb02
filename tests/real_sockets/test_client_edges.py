"""Slow and malformed clients against a real ``twist aistack-tts`` process.

One gateway process (``--client-timeout 1 --keepalive-timeout 2``) in front of the
``upstream_server.py`` process, driven by blocking raw sockets. Each test would fail on the
gateway before its client deadlines and framing rules: Twisted's single channel timer (60 s,
restarted by every byte) let a dribbling client hold its connection for ever, and its parser
accepted ``Transfer-Encoding: identity``, HTTP/1.1 requests without a Host, and a chunked
body of a million one-byte chunks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from testbed.clients import read_to_close
from testbed.processes import GatewayProcess, UpstreamProcess

pytestmark = pytest.mark.real_sockets

CLIENT_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 2.0
#: How long a test waits for something that should happen within about a second.
PATIENCE = 6.0


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    port = int(upstream.url.rsplit(":", 1)[1])
    process = GatewayProcess.start(
        "aistack-tts",
        port,
        tmp_path_factory.mktemp("gateway"),
        options=[
            "--client-timeout",
            str(CLIENT_TIMEOUT),
            "--keepalive-timeout",
            str(KEEPALIVE_TIMEOUT),
        ],
    )
    try:
        yield process
    finally:
        process.stop()


def connect(gateway: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=PATIENCE)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the gateway closes (a reset after its answer counts as a close)."""
    return read_to_close(sock)[0]


def answer(raw: bytes) -> tuple[int, dict[bytes, bytes], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in lines[1:])
    }
    error = json.loads(body)["error"] if body.startswith(b"{") else {}
    return int(lines[0].split(b" ")[1]), headers, error


def test_a_dribbled_head_is_cut_with_408_about_client_timeout_after_its_first_byte(
    gateway: GatewayProcess,
) -> None:
    """One header byte every 0.25 s kept restarting Twisted's 60 s timer; now the head is
    due ``--client-timeout`` after its first byte."""
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/audio/voices HTTP/1.1\r\n")
        first = time.monotonic()
        sock.setblocking(False)
        raw = b""
        while time.monotonic() - first < PATIENCE:
            with contextlib.suppress(OSError):
                sock.send(b"x")
            time.sleep(0.25)
            try:
                raw += sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
            if b"\r\n\r\n" in raw:
                break
        took = time.monotonic() - first
    assert raw, f"no answer within {PATIENCE} s"
    status, headers, error = answer(raw)
    assert (status, error["type"], error["provider"]) == (408, "request_timeout", "aistack")
    assert b"date" in headers
    assert CLIENT_TIMEOUT * 0.9 <= took <= CLIENT_TIMEOUT + 1.5


def test_a_stalled_body_is_cut_with_408(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        sent = time.monotonic()
        raw = read_all(sock)
        took = time.monotonic() - sent
    status, _headers, error = answer(raw)
    assert (status, error["type"]) == (408, "request_timeout")
    assert took <= CLIENT_TIMEOUT + 1.5


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(
    gateway: GatewayProcess,
) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/audio/echo HTTP/1.1\r\nHost: gw\r\n\r\n")
        raw = b""
        while b"}" not in raw:
            raw += sock.recv(65536)
        served = time.monotonic()
        assert raw.startswith(b"HTTP/1.1 200 ")
        assert sock.recv(65536) == b""
        idle = time.monotonic() - served
    assert KEEPALIVE_TIMEOUT * 0.9 <= idle <= KEEPALIVE_TIMEOUT + 1.5


def test_an_upstream_thinking_longer_than_the_client_timeout_is_not_cut(
    gateway: GatewayProcess,
) -> None:
    """Being served is ``--idle-timeout``'s business, not the client timeout's."""
    with connect(gateway) as sock:
        sock.sendall(
            b"GET /v1/audio/stream?bytes=1000&delay=2.5 HTTP/1.1\r\nHost: gw\r\n"
            b"Connection: close\r\n\r\n"
        )
        raw = read_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert raw.endswith(b"0\r\n\r\n")


def test_fresh_clients_are_served_promptly_beside_hundreds_of_slow_ones(
    gateway: GatewayProcess,
) -> None:
    """300 clients dribbling heads or bodies: a fresh request is answered at once, and every
    slow one is cut within about the client timeout."""
    slow: list[socket.socket] = []
    try:
        for i in range(300):
            sock = connect(gateway)
            if i % 2:
                sock.sendall(b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n")
            else:
                sock.sendall(
                    b"POST /v1/audio/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 9999\r\n\r\n"
                )
            sock.setblocking(False)
            slow.append(sock)
        started = time.monotonic()
        fresh_ms = []
        for _ in range(5):
            before = time.monotonic()
            with connect(gateway) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                assert read_all(sock).startswith(b"HTTP/1.1 200 ")
            fresh_ms.append((time.monotonic() - before) * 1000)
            for s in slow:
                with contextlib.suppress(OSError):
                    s.send(b"x")
            time.sleep(0.1)
        assert max(fresh_ms) < 500, fresh_ms
        open_ = set(range(len(slow)))
        while open_ and time.monotonic() - started < PATIENCE:
            for i in list(open_):
                try:
                    data = slow[i].recv(65536)
                except BlockingIOError:
                    try:
                        slow[i].send(b"x")
                    except OSError:
                        open_.discard(i)
                    continue
                except ConnectionResetError:
                    data = b""
                if not data or b"408" in data:
                    open_.discard(i)
            time.sleep(0.1)
        assert not open_, f"{len(open_)} slow clients still connected after {PATIENCE} s"
    finally:
        for s in slow:
            s.close()


# Framing: each of these reached the upstream before.


def test_transfer_encoding_identity_cannot_smuggle_a_request(
    gateway: GatewayProcess, upstream: UpstreamProcess
) -> None:
    """Twisted ignored ``Transfer-Encoding: identity``, so the 'body' was parsed as a second
    request and forwarded (a front proxy reading identity as the body's framing would not)."""
    smuggled = b"GET /v1/audio/echo?id=smuggled-te HTTP/1.1\r\nHost: gw\r\n\r\n"
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=carrier-te HTTP/1.1\r\nHost: gw\r\n"
            b"Transfer-Encoding: identity\r\n\r\n" + smuggled
        )
        raw = read_all(sock)
    status, _headers, error = answer(raw)
    assert (status, error["type"]) == (400, "invalid_request")
    assert "Transfer-Encoding" in error["message"]
    time.sleep(0.2)
    assert upstream.events("smuggled-te") == []
    assert upstream.events("carrier-te") == []


@pytest.mark.parametrize(
    "hosts", [b"", b"Host: a\r\nHost: b\r\n", b"Host: a b\r\n"], ids=["none", "two", "invalid"]
)
def test_http11_without_exactly_one_valid_host_is_400(
    gateway: GatewayProcess, upstream: UpstreamProcess, hosts: bytes
) -> None:
    ident = f"host-{len(hosts)}"
    with connect(gateway) as sock:
        sock.sendall(b"GET /v1/audio/echo?id=%s HTTP/1.1\r\n%s\r\n" % (ident.encode(), hosts))
        raw = read_all(sock)
    status, headers, error = answer(raw)
    assert (status, error["type"]) == (400, "invalid_request")
    assert b"date" in headers
    time.sleep(0.2)
    assert upstream.events(ident) == []


def test_a_body_of_one_byte_chunks_is_refused_and_health_stays_quick(
    gateway: GatewayProcess, upstream: UpstreamProcess
) -> None:
    """A million one-byte chunks held the reactor for seconds; now the body is refused once
    its pieces are too small on average, and the rest is not parsed."""
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=tiny-chunks HTTP/1.1\r\nHost: gw\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(100):
                sock.sendall(b"1\r\nx\r\n" * 10_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = read_all(sock)
    status, _headers, error = answer(raw)
    assert (status, error["type"]) == (400, "invalid_request")
    assert "chunked request body" in error["message"]
    assert upstream.events("tiny-chunks") == []


def test_early_answers_have_date_and_metrics_are_not_cached(gateway: GatewayProcess) -> None:
    with connect(gateway) as sock:
        sock.sendall(
            b"POST /v1/audio/echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999\r\n\r\n"
        )
        status, headers, error = answer(read_all(sock))
    assert (status, error["type"]) == (413, "request_too_large")
    assert b"date" in headers
    with connect(gateway) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        status, headers, _ = answer(read_all(sock))
    assert status == 200
    assert headers[b"cache-control"] == b"no-store"


@pytest.mark.parametrize(
    ("head", "status", "kind"),
    [
        (b"GET /v1/audio/" + b"a" * 17_000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n",
            431,
            "request_header_too_large",
        ),
    ],
    ids=["request-line", "header-line"],
)
def test_overlong_lines_get_an_answer(
    gateway: GatewayProcess, head: bytes, status: int, kind: str
) -> None:
    """Twisted closed these without a word (curl: "Empty reply from server")."""
    with connect(gateway) as sock:
        sock.sendall(head)
        got, _headers, error = answer(read_all(sock))
    assert (got, error["type"]) == (status, kind)
