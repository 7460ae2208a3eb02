"""The WebSocket tunnel's upstream end before a 101: where it connects, and what it answers.

A step below ``aistack_tts._tunnel``: which requests are tunnelled, the endpoint and ``Host``
of the upstream, and functions over its answer (split and parse the head, add
``X-Request-Id``, pick the decoder for the body of a non-101 answer and start the client's
response from the head). No connection and no state here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from ._accesslog import REQUEST_ID
from ._headers import client_response_headers, header_tokens, wants_websocket
from ._protocol import NO_BODY_STATUS

# The body decoders of twisted.web (no public counterpart): see _twisted_private.
from ._twisted_private import _ChunkedTransferDecoder, _IdentityTransferDecoder

#: The most the upstream's answer head (status line and headers) may take; a real one is a few
#: hundred bytes, so more means a broken upstream, and the buffer stays bounded.
MAX_HEAD_BYTES = 64 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@frozen
class TunnelTarget:
    """Where tunnels go: a stream endpoint to the upstream and the ``Host`` it answers to."""

    endpoint: IStreamClientEndpoint
    host: bytes
    #: The upstream's URL (for the access log).
    url: str = ""

    @classmethod
    def for_upstream(cls, reactor: Any, upstream: str, *, connect_timeout: float) -> TunnelTarget:
        """A plain TCP endpoint (TLS for ``https``) to the upstream URL's host and port."""
        parts = urlsplit(upstream)
        hostname = parts.hostname or ""
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, hostname, port, timeout=connect_timeout
        )
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(hostname), endpoint)
        return cls(endpoint=endpoint, host=parts.netloc.encode("ascii"), url=upstream)


class BadAnswer(ValueError):
    """The upstream's answer to a WebSocket handshake is not a usable HTTP response head."""


@frozen
class AnswerHead:
    """The upstream's status line and headers, and the bytes they came as."""

    raw: bytes
    status: int
    reason: bytes
    headers: Headers = field(eq=False)


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """``(head, rest)`` once ``buffer`` holds a whole head, else ``None``.

    Raises ``BadAnswer`` when the head is, or would be, longer than ``MAX_HEAD_BYTES``.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise BadAnswer(f"the answer head is longer than {MAX_HEAD_BYTES} bytes")
        return None
    return buffer[: end + 4], buffer[end + 4 :]


def parse_head(raw: bytes) -> AnswerHead:
    """Parse a response head (status line, header lines, blank line); raise ``BadAnswer``."""
    status_line, *lines = raw[:-4].split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise BadAnswer(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = Headers()
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise BadAnswer(f"malformed header line: {line[:80]!r}")
        headers.addRawHeader(name, value.strip(b" \t"))
    return AnswerHead(raw, int(match.group(1)), match.group(2) or b"", headers)


def is_websocket_request(request: Request) -> bool:
    """Whether ``request`` is a WebSocket handshake the gateway tunnels.

    Only HTTP/1.1 can upgrade (an HTTP/2 stream has no connection of its own to hand over).
    """
    return request.clientproto == b"HTTP/1.1" and wants_websocket(request.requestHeaders)


def with_request_id(head: AnswerHead, request_id: bytes) -> bytes:
    """``head``'s bytes, with ``X-Request-Id`` added unless the upstream sent its own."""
    if head.headers.hasHeader(REQUEST_ID):
        return head.raw
    return head.raw[:-2] + REQUEST_ID + b": " + request_id + b"\r\n\r\n"


def head_for_client(head: AnswerHead, request: Request) -> bytes:
    """The bytes of a 101 ``head`` for the client, and its ``X-Request-Id`` noted on ``request``.

    The client's id comes back on the 101 too (or the upstream's own, if it set one).
    """
    own = head.headers.getRawHeaders(REQUEST_ID)
    if own:
        request.responseHeaders.setRawHeaders(REQUEST_ID, own)
    ours = (request.responseHeaders.getRawHeaders(REQUEST_ID) or [b"-"])[0]
    return with_request_id(head, ours)


#: What reads the body of an answer that is not a 101.
BodyDecoder = _IdentityTransferDecoder | _ChunkedTransferDecoder


def body_decoder(
    head: AnswerHead, on_data: Callable[[bytes], None], on_end: Callable[[bytes], None]
) -> BodyDecoder | None:
    """The decoder for the body that follows ``head``; ``None`` when it has none.

    Chunked, ``Content-Length``, or (neither) everything until the upstream closes.
    """
    if head.status in NO_BODY_STATUS:
        return None
    codings = header_tokens(head.headers, b"transfer-encoding")
    if codings:
        if codings[-1] == b"chunked":
            return _ChunkedTransferDecoder(on_data, on_end)
        return _IdentityTransferDecoder(None, on_data, on_end)
    lengths = {v.strip() for v in header_tokens(head.headers, b"content-length")}
    if not lengths:
        return _IdentityTransferDecoder(None, on_data, on_end)
    length = lengths.pop()
    if lengths or not length.isdigit():
        raise BadAnswer("the answer has an invalid Content-Length")
    if int(length) == 0:
        return None
    return _IdentityTransferDecoder(int(length), on_data, on_end)


def start_response(request: Request, head: AnswerHead, *, chunked: bool) -> None:
    """Start the client's response as the upstream's ``head`` (``chunked``: its body is)."""
    request.setResponseCode(head.status, head.reason)
    client_response_headers(head.headers, request.responseHeaders)
    if chunked:
        # twisted.web frames the body for the client itself.
        request.responseHeaders.removeHeader(b"content-length")
