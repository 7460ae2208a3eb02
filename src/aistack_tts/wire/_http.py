"""HTTP as the gateway speaks it: its constants, and header hygiene both ways.

What a transparent proxy must not pass on (hop-by-hop and Connection-named headers), the
methods it proxies, the statuses without a body, what a chunk size may be (both ways), and
the WebSocket handshake test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from twisted.web.http_headers import Headers
from twisted.web.server import Request

#: Headers that are the connection's, not the message's, never passed on either way (the one
#: table of them: the HTTP client keeps them out of a response's headers too); lower-case.
#: RFC 9110 section 7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE,
#: Transfer-Encoding and Upgrade; Trailer because the gateway drops trailers, so the fields
#: it announces never come; the Proxy-* credentials are the gateway's hop's (RFC 9110
#: section 11.7). ``Trailers`` (RFC 2616's misspelling, kept in Twisted's table) is no header.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Request headers the gateway sets itself: the Agent writes Host (naming the upstream) and
#: Content-Length (from the body producer); Expect was already answered to the client by
#: twisted.web, and the body is spooled, so repeating it upstream would only stall the call.
REQUEST_OWN: frozenset[bytes] = frozenset({b"host", b"content-length", b"expect"})

#: The methods the contract proxies; everything else is a 405.
ALLOWED_METHODS = (b"GET", b"POST", b"DELETE")
ALLOW_HEADER = (b"Allow", b", ".join(ALLOWED_METHODS))

#: Statuses that never have a body, so never a Content-Length (RFC 9110 section 8.6).
NO_BODY_STATUS = frozenset({204, 304})

#: The largest chunk size that can be real, in a request or a response: no body is as long as
#: the largest file offset (nginx refuses what overflows its ``off_t`` the same way).
MAX_CHUNK_SIZE = 2**63 - 1
#: RFC 9112 section 7.1: ``chunk-size [ chunk-ext ]``, the size in hex digits only
#: (``int(x, 16)`` would take ``0x``, ``_`` and spaces), at most 16 of them.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?")

#: How much the client's transport may hold unsent before it pauses the upstream. Twisted's
#: default (64 KiB) is one upstream read, so the upstream was paused and resumed after nearly
#: every chunk; this bounds memory per stream just the same, at a few chunks.
CLIENT_SEND_BUFFER = 512 * 1024

#: Retry-After for a 503 upstream_unavailable: the stack is down, not busy.
RETRY_UNAVAILABLE_S = 5


def chunk_size(line: bytes) -> int | None:
    """The size a chunk-size line (its CRLF cut off) declares; ``None`` if it is not one.

    Not one: not hex digits (and an extension) as RFC 9112 writes them, more than 16 digits,
    or a size past ``MAX_CHUNK_SIZE``.
    """
    match = _CHUNK_LINE.fullmatch(line)
    if match is None:
        return None
    size = int(match.group(1), 16)
    return size if size <= MAX_CHUNK_SIZE else None


def chunk_size_problem(size: int) -> str | None:
    """What is wrong with a declared chunk size: one past ``MAX_CHUNK_SIZE`` is not real.

    For a size another parser read: twisted.web's, of a request's chunk-size line, takes any
    number of hex digits, so ``ffffffffffffffffffff`` was a chunk that would never end.
    """
    if size <= MAX_CHUNK_SIZE:
        return None
    # Not the number itself: its line may be a kilobyte of hex digits.
    return f"a chunk size of {len(f'{size:x}')} hex digits is larger than any request body can be"


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The header names listed in ``Connection`` (hop-by-hop by declaration), lower-case."""
    return frozenset(
        token.strip().lower()
        for value in headers.getRawHeaders(b"connection", [])
        for token in value.split(b",")
        if token.strip()
    )


def end_to_end(headers: Headers, drop: Iterable[bytes] = ()) -> Headers:
    """A copy of ``headers`` without hop-by-hop headers, those named in ``Connection`` and ``drop``.

    Values of one header keep their order.
    """
    skip = HOP_BY_HOP | connection_tokens(headers) | frozenset(drop)
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in skip:
            out.setRawHeaders(name, list(values))
    return out


def upstream_request_headers(headers: Headers) -> Headers:
    """The client's request headers as they go upstream."""
    return end_to_end(headers, REQUEST_OWN)


def client_response_headers(headers: Headers, into: Headers) -> None:
    """Copy the upstream's end-to-end response headers into the client response's ``into``.

    Upstream values replace what twisted.web put there by default (Server, Date). One pass,
    straight into ``into``: the response path's hot spot had been copying them twice.
    """
    named = connection_tokens(headers)
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in named:
            into.setRawHeaders(name, list(values))


def header_tokens(headers: Headers, name: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``name`` header, stripped and lower-case."""
    return [
        token.strip().lower()
        for value in headers.getRawHeaders(name, [])
        for token in value.split(b",")
        if token.strip()
    ]


def wants_websocket(headers: Headers) -> bool:
    """Whether a request asks to switch to WebSocket (``Upgrade: websocket`` and ``Connection``).

    An ``Upgrade`` header that ``Connection`` does not name is not an upgrade request (RFC 9110
    section 7.8): such a request is plain HTTP and its ``Upgrade`` is dropped as hop-by-hop.
    """
    return b"websocket" in header_tokens(headers, b"upgrade") and b"upgrade" in connection_tokens(
        headers
    )


def websocket_handshake(method: bytes, target: bytes, host: bytes, headers: Headers) -> bytes:
    """The handshake request the gateway writes upstream for a client's WebSocket request.

    The one place hop-by-hop headers go on: ``Upgrade`` and every ``Sec-WebSocket-*`` as the
    client sent them, and ``Connection: Upgrade``. ``Host`` names the upstream; the other
    headers go as for HTTP (hop-by-hop, those ``Connection`` names, and ``Content-Length`` and
    ``Expect`` dropped: a handshake has no body). The target is written byte-exact.
    """
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: " + host]
    skip = HOP_BY_HOP | connection_tokens(headers) | REQUEST_OWN
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if lower == b"connection":
            lines.append(b"Connection: Upgrade")
        elif lower == b"upgrade" or lower.startswith(b"sec-websocket-") or lower not in skip:
            lines.extend(name + b": " + value for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def is_websocket_request(request: Request) -> bool:
    """Whether ``request`` is a WebSocket handshake the gateway tunnels.

    Only HTTP/1.1 can upgrade (an HTTP/2 stream has no connection of its own to hand over).
    """
    return request.clientproto == b"HTTP/1.1" and wants_websocket(request.requestHeaders)
