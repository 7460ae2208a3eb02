"""One structured ``twisted.logger`` event per request, and the request metrics that go with it.

Under ``twist`` the events are JSON lines (``observe._jsonlog``) with the fields below at
the top level, or text lines on a terminal. Each is logged at its outcome's level
(``observe._outcome.level_of``): ``info``, ``warn`` or ``error``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from aistack_tts._errors import GatewayError

from ._metrics import GatewayMetrics
from ._outcome import Outcome, level_of, upstream_fault

log = Logger(namespace="aistack_tts.access")

REQUEST_ID = b"X-Request-Id"
# A client's id is kept if it is a sane token; anything else is replaced by ours.
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_KNOWN_METHODS = frozenset({b"GET", b"POST", b"DELETE", b"HEAD", b"PUT", b"PATCH", b"OPTIONS"})
#: Where a request's arrival time is kept on the request object.
_ARRIVED = "_aistack_arrived"


def ensure_request_id(request: IRequest) -> str:
    """The request's id: the client's ``X-Request-Id`` if sane, else a new one.

    A new id is set on the request's headers, so it is forwarded upstream too.
    """
    values: list[bytes] | None = request.requestHeaders.getRawHeaders(REQUEST_ID)
    if values and len(values) == 1 and _SANE_ID.fullmatch(values[0]):
        return values[0].decode("ascii")
    new = uuid.uuid4().hex
    request.requestHeaders.setRawHeaders(REQUEST_ID, [new.encode("ascii")])
    return new


def tag_response(request: IRequest) -> str:
    """``ensure_request_id``, and put the id on the response (an upstream's own replaces it)."""
    request_id = ensure_request_id(request)
    request.responseHeaders.setRawHeaders(REQUEST_ID, [request_id.encode("ascii")])
    return request_id


def _first(values: list[bytes] | None) -> str | None:
    return values[0].decode("latin-1") if values else None


class _Line:
    """The access event's text, made only when an observer formats it (text logs do)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._fields = fields

    def __format__(self, spec: str) -> str:
        f = self._fields
        text = (
            f"{f['method']} {f['path']} -> {f['status']} {f['outcome']} "
            f"upstream={f['upstream'] or '-'} bytes_out={f['bytes_out']} "
            f"duration={f['duration']:.3f}s queue_wait={_seconds(f['queue_wait'])} "
            f"slot_held={_seconds(f['slot_held'])} slot={f['slot']} request_id={f['request_id']}"
        )
        if "bytes_in" in f:
            text += f" bytes_in={f['bytes_in']}"
        if f["cause"]:
            text += f" cause={json.dumps(f['cause'])}"
        return text


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


class AccessLog:
    """Records each finished request: one log event, and the request metrics."""

    def __init__(self, metrics: GatewayMetrics, clock: IReactorTime) -> None:
        self.metrics = metrics
        self.clock = clock

    def arrived(self, request: IRequest) -> None:
        """Note when ``request`` arrived (once: the first call wins)."""
        if getattr(request, _ARRIVED, None) is None:
            setattr(request, _ARRIVED, self.clock.seconds())

    def since_arrival(self, request: IRequest) -> float:
        """Seconds since ``request`` arrived (0 if its arrival was never noted)."""
        arrived: float | None = getattr(request, _ARRIVED, None)
        return 0.0 if arrived is None else max(self.clock.seconds() - arrived, 0.0)

    def answered(
        self,
        request: IRequest,
        error: GatewayError,
        *,
        slot: str = "none",
        queue_wait: float | None = None,
    ) -> None:
        """Record a request the gateway answered itself, with ``error``'s envelope."""
        self.finished(
            request,
            status=error.status,
            outcome=error.type,
            provider=error.provider,
            slot=slot,
            bytes_out=len(error.envelope()),
            envelope=True,
            cause=error.message,
            queue_wait=queue_wait,
        )

    def left(self, request: IRequest, *, received: int, declared: int | None) -> None:
        """Record a request whose client left while its body was arriving: ``client_left``.

        ``received``: the body bytes that came; ``declared``: its Content-Length, if any.
        """
        of = f" of {declared}" if declared else ""
        self.finished(
            request,
            status=None,
            outcome=Outcome.CLIENT_LEFT,
            provider="none",
            slot="none",
            cause=f"the client left after {received}{of} bytes of the request body",
            bytes_in=received,
        )

    def finished(
        self,
        request: IRequest,
        *,
        status: int | None,
        outcome: str,
        provider: str,
        slot: str,
        bytes_out: int = 0,
        upstream: str | None = None,
        cause: str | None = None,
        queue_wait: float | None = None,
        slot_held: float | None = None,
        envelope: bool = False,
        bytes_in: int | None = None,
    ) -> None:
        """Record ``request``'s end.

        ``provider`` says who answered (``aistack``, ``qwen3-tts``, or ``none`` when the client
        left before any answer); ``slot`` the slot outcome: ``held`` (taken and released),
        ``busy`` (refused with 503), ``exempt`` or ``none`` (never asked for). ``status`` is
        ``None`` when the client got no status line. ``upstream`` is the upstream that served
        (or failed) the call, ``cause`` why it did not end ``ok``; ``queue_wait`` the seconds
        from arrival to the slot (or to giving up on it), ``slot_held`` the seconds it was
        held. ``duration``, logged, is the whole time since the request arrived. ``envelope``:
        ``bytes_out`` is the gateway's own envelope, not relayed upstream bytes. ``bytes_in``,
        logged only when given: the request body bytes received.
        """
        sent = _first(request.requestHeaders.getRawHeaders(REQUEST_ID))
        seen = _first(request.responseHeaders.getRawHeaders(REQUEST_ID)) or sent or "-"
        fields: dict[str, Any] = {
            "method": request.method.decode("latin-1"),
            "path": request.uri.decode("latin-1"),
            "status": status,
            "outcome": outcome,
            "provider": provider,
            "upstream": upstream,
            "cause": cause,
            "bytes_out": bytes_out,
            "duration": self.since_arrival(request),
            "queue_wait": queue_wait,
            "slot_held": slot_held,
            "slot": slot,
            # What the client saw; the id the gateway forwarded, when the upstream set another.
            "request_id": seen,
        }
        if sent is not None and sent != seen:
            fields["gateway_request_id"] = sent
        if bytes_in is not None:
            fields["bytes_in"] = bytes_in
        log.emit(level_of(outcome), "{line}", line=_Line(fields), **fields)
        m = self.metrics
        # Hostile clients choose methods: keep the label set bounded.
        method = request.method if request.method in _KNOWN_METHODS else b"other"
        m.count(m.requests, method.decode("ascii"), str(status or "none"), provider)
        if outcome == "gpu_busy":
            m.gpu_busy.inc()
        elif outcome in (Outcome.CLIENT_ABORT, Outcome.CLIENT_STALLED, Outcome.CLIENT_LEFT):
            m.client_aborts.inc()
        if queue_wait is not None:
            m.queue_wait.observe(queue_wait)
        if upstream is not None:
            m.count(m.upstream_calls, upstream, str(outcome))
        fault = upstream_fault(outcome)
        if fault is not None:
            # "none": every upstream was in its cool-down, none was tried.
            m.count(m.upstream_faults, str(fault), upstream or "none")
        if bytes_out and not envelope:
            m.bytes_streamed.inc(bytes_out)
