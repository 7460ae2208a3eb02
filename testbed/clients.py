"""Blocking raw-socket clients that drive a gateway process on 127.0.0.1.

Exact bytes out, every byte back: ``get_request`` (the request), ``open_stream`` (a client
that stops reading), ``read_to_close`` and ``fetch``. Parsing what they read is the tests'
(``support.wire``).
"""

from __future__ import annotations

import socket


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
