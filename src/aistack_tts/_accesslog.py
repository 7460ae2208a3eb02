"""One structured ``twisted.logger`` event per request (``twist --log-format=json`` ready)."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.iweb import IRequest

log = Logger(namespace="aistack_tts.access")

_FORMAT = (
    "{method} {path} -> {status} {outcome} bytes_out={bytes_out} "
    "duration={duration:.3f}s slot={slot}"
)


def log_request(
    request: IRequest,
    *,
    status: int | None,
    outcome: str,
    slot: str,
    bytes_out: int = 0,
    duration: float = 0.0,
) -> None:
    """Emit the access event for ``request``.

    ``slot`` is the slot outcome: ``held`` (taken and released), ``busy`` (refused with 503)
    or ``none`` (never asked for). ``status`` is ``None`` when the client got no status line.
    """
    log.info(
        _FORMAT,
        method=request.method.decode("latin-1"),
        path=request.uri.decode("latin-1"),
        status=status,
        outcome=outcome,
        bytes_out=bytes_out,
        duration=duration,
        slot=slot,
    )
