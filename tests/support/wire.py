"""The bytes on the wire: parse a response, decode chunking, read an envelope; raw socket clients.

The parsers work on what a StringTransport holds and on what a socket read; the clients
(``get_request``, ``open_stream``, ``read_to_close``, ``fetch``) are blocking raw-socket ones
that drive a gateway process on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
from typing import Any


def parse_response(raw: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    """Status, headers (lower-case names) and raw (possibly chunked) body of a response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


def envelope(raw: bytes) -> dict[str, Any]:
    """The ``error`` object of a gateway envelope response."""
    _status, headers, body = parse_response(raw)
    assert headers[b"content-type"] == [b"application/json"]
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code", "provider"}
    return error


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; also say whether it ended with the terminating chunk."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(data[pos:eol].split(b";")[0], 16)
        start = eol + 2
        if size == 0:
            return bytes(out), data.startswith(b"\r\n", start)
        out += data[start : start + size]
        if len(data) < start + size + 2:
            return bytes(out), False
        pos = start + size + 2


def get_request(target: str) -> bytes:
    """The bytes of ``GET target`` with ``Connection: close``."""
    return f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode()


def open_stream(
    port: int,
    target: str,
    *,
    receive_buffer: int = 128 * 1024,
    body_bytes: int = 64 * 1024,
    timeout: float = 10,
) -> socket.socket:
    """A raw client that sent ``GET target`` and read the headers and ``body_bytes`` of body.

    Then it stops reading. Its receive buffer is fixed (set before connecting) so the kernel
    does not absorb tens of MB on its behalf, and a stall reaches the gateway quickly.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(get_request(target))
        data = b""
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and len(data) - head_end - 4 >= body_bytes:
                break
            more = sock.recv(65536)
            if not more:
                raise ConnectionError(f"the connection ended early: {data[:400]!r}")
            data += more
        if not data.startswith(b"HTTP/1.1 200 "):
            raise ConnectionError(f"not a 200: {data[:400]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def read_to_close(sock: socket.socket) -> tuple[bytes, bool]:
    """Read until the gateway closes; the bytes, and whether it reset the connection."""
    data = b""
    try:
        while more := sock.recv(1 << 20):
            data += more
    except ConnectionResetError:
        return data, True
    return data, False


def fetch(port: int, target: str, timeout: float = 10) -> bytes:
    """``GET target`` and read until the gateway closes the connection; the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(get_request(target))
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)
