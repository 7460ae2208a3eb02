"""The WebSocket tunnel's upstream end before a 101: what it answers.

A step below ``tunnel._session``: functions over the upstream's answer (split and parse
the head, add ``X-Request-Id``, say how the body of a non-101 answer is framed and start the
client's response from the head). The head's grammar and the body's framing rules are the HTTP
client's (``client._head``); only a 101 is an answer here and not there. No connection and
no state here.
"""

from __future__ import annotations

from attrs import field, frozen
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from aistack_tts.client._head import (
    FIELD_LINE,
    MAX_UPSTREAM_HEAD,
    STATUS_LINE,
    UpstreamProtocolError,
    body_framing,
    field_line_error,
    head_end,
    shown,
)
from aistack_tts.observe._accesslog import REQUEST_ID
from aistack_tts.wire._http import NO_BODY_STATUS, client_response_headers

#: The most the upstream's answer head (status line and headers) may take, as for the HTTP
#: client; a real one is a few hundred bytes, so more means a broken upstream, and the buffer
#: stays bounded.
MAX_HEAD_BYTES = MAX_UPSTREAM_HEAD


class BadAnswer(ValueError):
    """The upstream's answer to a WebSocket handshake is not a usable HTTP response head."""


@frozen
class AnswerHead:
    """The upstream's status line and headers, and the bytes they came as."""

    raw: bytes
    status: int
    reason: bytes
    headers: Headers = field(eq=False)


def split_head(buffer: bytes, limit: int = MAX_HEAD_BYTES) -> tuple[bytes, bytes] | None:
    """``(head, rest)`` once ``buffer`` holds a whole head, else ``None``.

    A head ends at a blank line, its line ends CRLF or a bare LF (as the HTTP client reads
    them, RFC 9112 section 2.2). Raises ``BadAnswer`` when the head is, or would be, longer
    than ``limit``: what is left of ``MAX_HEAD_BYTES`` after any interim heads before it.
    """
    end = head_end(buffer, 0, limit)
    if end < 0:
        if len(buffer) >= limit:
            raise BadAnswer(
                f"the answer head (with any interim ones) is longer than {MAX_HEAD_BYTES} bytes"
            )
        return None
    return buffer[:end], buffer[end:]


def parse_head(raw: bytes) -> AnswerHead:
    """Parse a response head (status line, header lines, blank line); raise ``BadAnswer``.

    The head is kept with CRLF line ends whatever it came with, as it is sent on as it is.
    """
    lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")[:-2]]
    status_line = lines[0]
    match = STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise BadAnswer(f"bad status line {shown(status_line)}")
    _version, status, reason = match.groups()
    headers = Headers()
    for line in lines[1:]:
        field = FIELD_LINE.fullmatch(line)
        if field is None:
            raise BadAnswer(str(field_line_error(line)))
        name, value = field.groups()
        headers.addRawHeader(name, value)
    crlf = b"\r\n".join(lines) + b"\r\n\r\n"
    return AnswerHead(crlf, int(status), reason or b"", headers)


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


def answer_framing(head: AnswerHead) -> tuple[int | None, bool] | None:
    """``(Content-Length, chunked)`` of the body after ``head``; ``None`` when it has none.

    As ``Head`` has them (neither: everything until the upstream closes). Raises
    ``BadAnswer`` for framing a proxy cannot relay, as the HTTP client refuses it.
    """
    if head.status in NO_BODY_STATUS:
        return None
    try:
        length, chunked = body_framing(
            head.headers.getRawHeaders(b"transfer-encoding"),
            head.headers.getRawHeaders(b"content-length"),
        )
    except UpstreamProtocolError as e:
        raise BadAnswer(str(e)) from None
    return None if length == 0 else (length, chunked)


def start_response(request: Request, head: AnswerHead, *, chunked: bool) -> None:
    """Start the client's response as the upstream's ``head`` (``chunked``: its body is)."""
    request.setResponseCode(head.status, head.reason)
    client_response_headers(head.headers, request.responseHeaders)
    if chunked:
        # twisted.web frames the body for the client itself.
        request.responseHeaders.removeHeader(b"content-length")
