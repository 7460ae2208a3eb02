"""The bytes on the wire: parse a response, decode chunking, read an envelope.

The parsers work on what a StringTransport holds and on what a socket read (the blocking
raw-socket clients that read it are ``testbed.clients``).
"""

from __future__ import annotations

import json
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
