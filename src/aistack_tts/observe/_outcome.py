"""How a call ended: the access event's ``outcome`` and the metrics fault it counts as.

The lowest step of the record of a call (``call._record`` writes it). An ``Outcome`` is
a ``str``, so the access event and the metrics labels carry its value unchanged. An envelope
the gateway answered itself ends with that error's ``type`` as its outcome.
"""

from __future__ import annotations

from enum import StrEnum


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
