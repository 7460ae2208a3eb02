"""The error envelope: every non-2xx response the gateway itself produces.

Each gateway error is a small exception that carries its HTTP status, envelope type and the
``provider`` that failed, so turning any of them into a response is one function.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    DNSLookupError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.python.failure import Failure

# Twisted's private API: the one private *name* the gateway imports. The Agent's parse error:
# an ``agent=`` given to TTSProxy may still be Twisted's Agent, whose failures carry it (it is
# reported as an upstream that does not speak HTTP/1.1). Private *attributes* the gateway reads
# or overrides are named in the docstring of the module that uses them (``server._channel``,
# ``tunnel._sides``, ``wire._descriptors``, ``wire._socket_state``).
from twisted.web._newclient import ParseError
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest

from .client._head import UpstreamProtocolError
from .wire._descriptors import OUT_OF_DESCRIPTORS, describe_exhaustion
from .wire._http import ALLOW_HEADER

AISTACK = "aistack"
QWEN3_TTS = "qwen3-tts"

#: Shown when the upstream cannot be reached at all: the usual cause is a stack that is not up.
COMPOSE_HINT = (
    "start the Qwen3-TTS stack with `docker compose up -d` "
    "(vLLM-Omni serving Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice)"
)


class GatewayError(Exception):
    """A failure the gateway answers itself, with the contract's JSON envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    provider: ClassVar[str] = AISTACK

    def __init__(self, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.headers = tuple(headers)
        self._envelope: bytes | None = None

    def envelope(self) -> bytes:
        """The JSON body, in OpenAI's error shape plus ``provider``.

        Made once: the answer and the access event's ``bytes_out`` both need it.
        """
        if self._envelope is None:
            self._envelope = self._make_envelope()
        return self._envelope

    def _make_envelope(self) -> bytes:
        return json.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": None,
                    "code": self.type,
                    "provider": self.provider,
                }
            }
        ).encode("utf-8")


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "method_not_allowed"


def method_not_allowed(method: bytes) -> MethodNotAllowed:
    """The 405 for ``method``, with the ``Allow`` of the methods the gateway proxies.

    The one place it is made: the proxied route's method check and a route's (Klein's) alike.
    """
    return MethodNotAllowed(
        f"method {method.decode('latin-1')} is not allowed here", headers=[ALLOW_HEADER]
    )


class RequestTimeout(GatewayError):
    status = 408
    type = "request_timeout"


class URITooLong(GatewayError):
    status = 414
    type = "uri_too_long"


class HeaderTooLarge(GatewayError):
    status = 431
    type = "request_header_too_large"


class RequestTooLarge(GatewayError):
    status = 413
    type = "request_too_large"


class GPUBusy(GatewayError):
    status = 503
    type = "gpu_busy"
    #: Seconds the request waited in the queue before this answer (None: it did not queue).
    queue_wait: float | None = None


class Draining(GatewayError):
    status = 503
    type = "draining"


class NotReady(GatewayError):
    status = 503
    type = "not_ready"
    provider = QWEN3_TTS


class LocalResourceExhausted(GatewayError):
    status = 503
    type = "local_resource_exhausted"


class UpstreamUnavailable(GatewayError):
    status = 503
    type = "upstream_unavailable"
    provider = QWEN3_TTS


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
    provider = QWEN3_TTS


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    provider = QWEN3_TTS


def describe(exc: BaseException | None) -> str:
    """``"<ExceptionType>: <message>"``, looking inside Twisted's wrapper exceptions.

    ``ResponseNeverReceived`` and its kin hold a list of failures whose ``str`` is a repr of
    the list; a client deserves the reasons themselves.
    """
    if exc is None:
        return "UnknownError"
    reasons = getattr(exc, "reasons", None)
    if isinstance(reasons, list) and reasons:
        inner = "; ".join(describe(r.value) if isinstance(r, Failure) else repr(r) for r in reasons)
        return f"{type(exc).__name__}: {inner}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: "Cannot reach it at all" (DNSLookupError is not a ConnectError subclass).
_UNREACHABLE = (ConnectError, DNSLookupError)


def _failures(failure: Failure) -> list[Failure]:
    """``failure`` and, for Twisted's wrappers (``ResponseNeverReceived``), the ones inside."""
    reasons = getattr(failure.value, "reasons", None) if failure.check(ResponseFailed) else None
    inner = [r for r in reasons if isinstance(r, Failure)] if isinstance(reasons, list) else []
    return [failure, *inner]


def local_exhaustion(failure: Failure) -> int | None:
    """The errno when the upstream socket could not be made for want of descriptors.

    Twisted's TCP client reports a failed ``socket()`` (``EMFILE``/``ENFILE``) as
    ``ConnectBindError(errno, strerror)``.
    """
    for f in _failures(failure):
        if f.check(ConnectBindError):
            code = getattr(f.value, "osError", None)
            if code in OUT_OF_DESCRIPTORS:
                assert isinstance(code, int)
                return code
    return None


def is_connect_failure(failure: Failure) -> bool:
    """The upstream could not be reached at all (refused, DNS, connect timeout).

    Not when the gateway itself could not make a socket (``local_exhaustion``).
    """
    if local_exhaustion(failure) is not None:
        return False
    if failure.check(*_UNREACHABLE):
        return True
    # A pooled connection can be refused only when a new one is made; but the Agent wraps
    # some connect-time failures in ResponseNeverReceived. Look one level in.
    if failure.check(ResponseNeverReceived):
        reasons = getattr(failure.value, "reasons", [])
        return any(isinstance(r, Failure) and r.check(*_UNREACHABLE) for r in reasons)
    return False


#: Said to the client when the upstream's response could not be relayed as HTTP/1.1.
NOT_HTTP = "the upstream's response is not valid HTTP/1.1"


def _protocol_error(failure: Failure) -> BaseException | None:
    """The parse failure inside ``failure`` (Twisted wraps it in ``ResponseFailed``), if any."""
    for f in _failures(failure):
        if f.check(UpstreamProtocolError, ParseError):
            return f.value
    return None


#: What a client is told when the gateway itself failed (a bug, logged with its traceback).
GATEWAY_FAILED = "the gateway failed; see its log"


def internal_error() -> GatewayError:
    """The envelope for a failure of the gateway itself."""
    return GatewayError(GATEWAY_FAILED)


def upstream_timeout() -> UpstreamTimeout:
    """The envelope for an upstream that sent nothing for ``--idle-timeout`` before its head."""
    return UpstreamTimeout("the Qwen3-TTS upstream did not answer in time")


def error_for_upstream_failure(
    failure: Failure, *, timed_out: bool, retry_after: int
) -> GatewayError:
    """Map a failed upstream call (before response headers) to the envelope for the client."""
    if timed_out:
        return upstream_timeout()
    exhausted = local_exhaustion(failure)
    if exhausted is not None:
        return LocalResourceExhausted(
            f"{describe_exhaustion(exhausted)}, so it cannot open a connection to the "
            "upstream; retry after the time in Retry-After",
            headers=[(b"Retry-After", b"1")],
        )
    if is_connect_failure(failure):
        return UpstreamUnavailable(
            f"cannot reach the Qwen3-TTS upstream ({describe(failure.value)}); {COMPOSE_HINT}",
            headers=[(b"Retry-After", b"%d" % retry_after)],
        )
    if failure.check(CancelledError):
        return UpstreamError("CancelledError: the upstream call was cancelled")
    parse_error = _protocol_error(failure)
    if isinstance(parse_error, UpstreamProtocolError):
        return UpstreamError(f"{NOT_HTTP}: {parse_error}")
    if parse_error is not None:
        return UpstreamError(f"{NOT_HTTP}: {describe(parse_error)}")
    return UpstreamError(describe(failure.value))


def failure_cause(
    failure: Failure, *, timed_out: bool, idle_timeout: float, connect_timeout: float
) -> str:
    """Why an upstream call failed before its headers, for the access event's ``cause``.

    The exception the client's envelope names, and which of the gateway's timeouts fired.
    """
    if timed_out:
        return f"--idle-timeout: no byte from the upstream for {idle_timeout:g} s"
    if any(f.check(TimeoutError, TCPTimedOutError) for f in _failures(failure)):
        return (
            f"--connect-timeout: no connection within {connect_timeout:g} s "
            f"({describe(failure.value)})"
        )
    return describe(failure.value)


def stall_cause(kind: str, idle_timeout: float) -> str:
    """Why a call was cut by its watchdog: who went quiet, and for how long."""
    if kind == "client":
        return f"--idle-timeout: the client read nothing for {idle_timeout:g} s"
    return f"--idle-timeout: no byte from the upstream for {idle_timeout:g} s"


def apply_error(request: IRequest, error: GatewayError) -> bytes:
    """Set ``error``'s status and headers on ``request``; return the envelope body to write."""
    body = error.envelope()
    request.setResponseCode(error.status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [b"application/json"])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    headers.setRawHeaders(b"Cache-Control", [b"no-store"])
    for name, value in error.headers:
        headers.setRawHeaders(name, [value])
    return body


def write_error(request: IRequest, error: GatewayError) -> None:
    """Answer ``request`` with ``error``'s envelope and finish it."""
    request.write(apply_error(request, error))
    request.finish()


#: Reason phrases of the statuses answered before a request reaches a resource.
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def early_answer(
    error: GatewayError, now: float, headers: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """The whole response for ``error`` written before any request object can answer.

    It is the connection's last (``Connection: close``); ``headers`` are added to it.
    """
    body = error.envelope()
    reason = _REASONS.get(error.status, b"Error")
    head = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Date: " + datetimeToString(now),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    head.extend(name + b": " + value for name, value in (*headers, *error.headers))
    return b"\r\n".join(head) + b"\r\n\r\n" + body
