"""The upstream's answer to a WebSocket handshake, as the client gets it.

A step below ``tunnel._session``: the answer is read by the HTTP client's own parser
(``client._parser.ResponseParser`` with ``upgrade=True``), so its grammar, bounds and body
framing are a call's; what is here says how it goes on: a 101's bytes with ``X-Request-Id``
added, or the client's response started from another status. No connection and no state.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers
from twisted.web.server import Request

from aistack_tts.client._head import Head
from aistack_tts.observe._accesslog import REQUEST_ID
from aistack_tts.wire._http import client_response_headers

_REQUEST_ID = REQUEST_ID.lower()


def _request_ids(head: Head) -> list[bytes]:
    """The values of the upstream's own ``X-Request-Id`` headers."""
    return [value for name, value in head.headers if name.lower() == _REQUEST_ID]


def with_request_id(head: Head, request_id: bytes) -> bytes:
    """``head``'s bytes, with ``X-Request-Id`` added unless the upstream sent its own."""
    if _request_ids(head):
        return head.raw
    return head.raw[:-2] + REQUEST_ID + b": " + request_id + b"\r\n\r\n"


def head_for_client(head: Head, request: Request) -> bytes:
    """The bytes of a 101 ``head`` for the client, and its ``X-Request-Id`` noted on ``request``.

    The client's id comes back on the 101 too (or the upstream's own, if it set one).
    """
    own = _request_ids(head)
    if own:
        request.responseHeaders.setRawHeaders(REQUEST_ID, own)
    ours = (request.responseHeaders.getRawHeaders(REQUEST_ID) or [b"-"])[0]
    return with_request_id(head, ours)


def start_response(request: Request, head: Head, *, chunked: bool) -> None:
    """Start the client's response as the upstream's ``head`` (``chunked``: its body is)."""
    request.setResponseCode(head.status, head.reason)
    headers = Headers()
    for name, value in head.headers:
        headers.addRawHeader(name, value)
    client_response_headers(headers, request.responseHeaders)
    if chunked:
        # twisted.web frames the body for the client itself.
        request.responseHeaders.removeHeader(b"content-length")
