"""One structured ``twisted.logger`` event per request, and the request metrics that go with it.

``twist --log-format=json aistack-tts`` writes each event as one JSON line.
"""

from __future__ import annotations

import re
import uuid

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ._metrics import UPSTREAM_FAULTS, GatewayMetrics

log = Logger(namespace="aistack_tts.access")

REQUEST_ID = b"X-Request-Id"
# A client's id is kept if it is a sane token; anything else is replaced by ours.
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_KNOWN_METHODS = frozenset({b"GET", b"POST", b"DELETE", b"HEAD", b"PUT", b"PATCH", b"OPTIONS"})


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


class AccessLog:
    """Records each finished request: one log event, and the request metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def finished(
        self,
        request: IRequest,
        *,
        status: int | None,
        outcome: str,
        provider: str,
        slot: str,
        bytes_out: int = 0,
        duration: float = 0.0,
    ) -> None:
        """Record ``request``'s end.

        ``provider`` says who answered (``aistack``, ``qwen3-tts``, or ``none`` when the client
        left before any answer); ``slot`` the slot outcome: ``held`` (taken and released),
        ``busy`` (refused with 503) or ``none`` (never asked for). ``status`` is ``None`` when
        the client got no status line.
        """
        ids = request.requestHeaders.getRawHeaders(REQUEST_ID) or [b"-"]
        method = request.method.decode("latin-1")
        path = request.uri.decode("latin-1")
        request_id = ids[0].decode("latin-1")
        # The text line is made here, once: with every field in the format, twisted.logger's
        # JSON output would format each field twice more (log_flattened) on every request.
        log.info(
            "{line}",
            line=(
                f"{method} {path} -> {status} {outcome} bytes_out={bytes_out} "
                f"duration={duration:.3f}s slot={slot} request_id={request_id}"
            ),
            method=method,
            path=path,
            status=status,
            outcome=outcome,
            provider=provider,
            bytes_out=bytes_out,
            duration=duration,
            slot=slot,
            request_id=request_id,
        )
        m = self.metrics
        # Hostile clients choose methods: keep the label set bounded.
        method = request.method if request.method in _KNOWN_METHODS else b"other"
        m.requests.labels(method.decode("ascii"), str(status or "none"), provider).inc()
        if outcome == "gpu_busy":
            m.gpu_busy.inc()
        elif outcome in ("client_abort", "client_stalled"):
            m.client_aborts.inc()
        fault = UPSTREAM_FAULTS.get(outcome)
        if fault is not None:
            m.upstream_faults.labels(fault).inc()
        if bytes_out:
            m.bytes_streamed.inc(bytes_out)
