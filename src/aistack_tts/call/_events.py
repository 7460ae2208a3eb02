"""What both call cores share: the events every call is told and the effects every call ends with.

The lowest step of the two sans-IO cores, ``call._exchange_core`` (an HTTP call) and
``tunnel._session_core`` (a WebSocket session): the client leaving, the watchdog, the
drain's cut and a bug are told alike, and both end with the same ``Finish``.
"""

from __future__ import annotations

from enum import StrEnum

from attrs import frozen

from aistack_tts._errors import GatewayError

# Events.


@frozen
class ClientLeft:
    """The client's connection went away (or the router cancelled the call)."""


@frozen
class Stalled:
    """The watchdog ran out: ``"upstream"`` sent nothing, or the ``"client"`` read nothing.

    In a WebSocket session after the 101 it is ``--ws-idle-timeout``: nothing either way.
    """

    kind: str


@frozen
class Cut:
    """The gateway ends the call now (the shutdown drain ran out): ``error`` for the client."""

    error: GatewayError


@frozen
class Bug:
    """An exception escaped the shell while it handled the call (already logged)."""

    why: str


# Effects.


@frozen
class AbortClient:
    """Abort the client's connection: its response must not look complete."""


@frozen
class AnswerWith:
    """The client gets ``error``'s envelope; the ``Finish`` that follows writes it."""

    error: GatewayError


class Ending(StrEnum):
    """What ends the client's response, once the slot is released."""

    #: The relayed body is whole: end the response.
    BODY = "body"
    #: Write the envelope of the ``AnswerWith`` just before.
    ENVELOPE = "envelope"
    #: Nothing: the client left, or was aborted.
    NONE = "none"


@frozen
class Finish:
    """The call is over: release the slot, end the response (``ending``), write the record.

    ``fired``: whether the router's Deferred fires now; on the abort paths it is let go when
    the client's connection drops.
    """

    outcome: str
    cause: str | None
    fired: bool = True
    ending: Ending = Ending.NONE
