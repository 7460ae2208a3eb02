"""How a call ended: the access event's ``outcome`` and the metrics fault it counts as.

The lowest step of the record of a call (``call._record`` writes it). An ``Outcome`` is
a ``str``, so the access event and the metrics labels carry its value unchanged. An envelope
the gateway answered itself ends with that error's ``type`` as its outcome. ``level_of``
says at which log level an outcome's access event is logged.
"""

from __future__ import annotations

from enum import StrEnum

from twisted.logger import LogLevel


class Outcome(StrEnum):
    """The ways a proxied call or a WebSocket session ends."""

    OK = "ok"
    #: The client left: before the upstream answered, during the body, or while queued.
    CLIENT_ABORT = "client_abort"
    CLIENT_ABORT_QUEUED = "client_abort_queued"
    #: The client left while it was still sending its request body (no call was made).
    CLIENT_LEFT = "client_left"
    #: No byte for ``--idle-timeout`` from the upstream, or the client not reading.
    UPSTREAM_STALLED = "upstream_stalled"
    CLIENT_STALLED = "client_stalled"
    #: The upstream broke its body after the headers went out: the client is aborted.
    UPSTREAM_ERROR_MID_BODY = "upstream_error_mid_body"
    #: A bug in the gateway (logged with its traceback); the client is aborted.
    INTERNAL_ERROR = "internal_error"
    #: The shutdown drain ran out of time with the call under way.
    DRAINING_CUT = "draining_cut"
    #: WebSocket sessions: the handshake answered with another status, the idle close, and
    #: who ended an open session first.
    WS_REJECTED = "ws_rejected"
    WS_IDLE = "ws_idle"
    WS_CLOSED_BY_CLIENT = "ws_closed_by_client"
    WS_CLOSED_BY_UPSTREAM = "ws_closed_by_upstream"
    #: Envelopes the gateway answered for an upstream that failed before the headers.
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_ERROR = "upstream_error"

    @classmethod
    def stalled(cls, kind: str) -> Outcome:
        """``upstream_stalled`` or ``client_stalled``, for the watchdog's ``kind``."""
        return cls(f"{kind}_stalled")

    @classmethod
    def closed_by(cls, side: str) -> Outcome:
        """``ws_closed_by_client`` or ``ws_closed_by_upstream``."""
        return cls(f"ws_closed_by_{side}")


#: Outcomes that are the upstream's fault, and the fault type they count as.
_FAULTS: dict[str, str] = {
    Outcome.UPSTREAM_UNAVAILABLE: "unavailable",
    Outcome.UPSTREAM_TIMEOUT: "timeout",
    Outcome.UPSTREAM_ERROR: "error",
    Outcome.UPSTREAM_ERROR_MID_BODY: "mid_body",
    Outcome.UPSTREAM_STALLED: "stalled",
}


def upstream_fault(outcome: str) -> str | None:
    """The ``aistack_tts_upstream_faults`` label for ``outcome``, if it is the upstream's fault."""
    return _FAULTS.get(outcome)


def cut_outcome(error_type: str) -> str:
    """The outcome of a call cut short with an error of ``error_type`` (``draining_cut``)."""
    return f"{error_type}_cut"


#: Outcomes logged at ``warn``: the gateway turned the call away or cut it for its own
#: reasons (a busy GPU, shutdown), or a client held the slot without reading.
_WARN = frozenset(
    {
        "gpu_busy",
        "draining",
        "not_ready",
        Outcome.CLIENT_STALLED,
        Outcome.DRAINING_CUT,
    }
)
#: Outcomes logged at ``error``: an upstream fault, or the gateway's own failure.
_ERROR = frozenset(
    {
        *_FAULTS,
        Outcome.INTERNAL_ERROR,
        "local_resource_exhausted",
    }
)
#: Outcomes logged at ``info``: the call went as the client and upstream had it go (an
#: upstream's own 4xx/5xx passed through is ``ok``), the client left or sent a bad request.
_INFO = frozenset(
    {
        Outcome.OK,
        Outcome.CLIENT_ABORT,
        Outcome.CLIENT_ABORT_QUEUED,
        Outcome.CLIENT_LEFT,
        Outcome.WS_REJECTED,
        Outcome.WS_IDLE,
        Outcome.WS_CLOSED_BY_CLIENT,
        Outcome.WS_CLOSED_BY_UPSTREAM,
        "invalid_request",
        "not_found",
        "method_not_allowed",
        "request_timeout",
        "uri_too_long",
        "request_header_too_large",
        "request_too_large",
    }
)

#: Each known outcome's access-event level (README's Logs section has the same table).
LEVELS: dict[str, LogLevel] = {
    **dict.fromkeys(_INFO, LogLevel.info),
    **dict.fromkeys(_WARN, LogLevel.warn),
    **dict.fromkeys(_ERROR, LogLevel.error),
}


def level_of(outcome: str) -> LogLevel:
    """The log level of an access event that ended with ``outcome``.

    ``info`` for ``ok`` and what clients do (leave, send a bad request), ``warn`` for calls
    turned away or cut by the gateway (``gpu_busy``, draining), ``error`` for upstream faults
    and the gateway's own; an outcome not named here (any other ``*_cut``) is ``warn``.
    """
    level: LogLevel = LEVELS.get(outcome, LogLevel.warn)
    return level
