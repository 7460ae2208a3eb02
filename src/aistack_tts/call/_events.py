"""What both call cores share: the events every call is told, the effects it ends with, the loop.

The lowest step of the two sans-IO cores, ``call._exchange_core`` (an HTTP call) and
``tunnel._session_core`` (a WebSocket session): the client leaving, the watchdog, the
drain's cut and a bug are told alike, and both end with the same ``Finish``. Both shells feed
their core through the same ``EffectLoop``, so neither core is ever entered from inside itself,
and both cores answer an event their phase cannot receive the same way (``Strictness``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Generic, TypeVar

from attrs import Factory, define, frozen

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
    #: Nothing: the client left, was aborted, or (after a 101) holds a tunnel that closed.
    NONE = "none"


@frozen
class Finish:
    """The call is over: release the slot, end the response (``ending``), write the record."""

    outcome: str
    cause: str | None
    ending: Ending = Ending.NONE


# What a core does with an event its phase cannot receive.


class UnexpectedEvent(AssertionError):
    """A core was told an event its phase cannot receive: a bug in its shell (strict mode)."""


@define
class Strictness:
    """Whether the cores raise ``UnexpectedEvent`` or ignore an event they cannot receive.

    Off in production, where such an event is ignored (the shells' callers are Twisted
    callbacks, where an exception helps nobody). The test suite turns ``STRICT`` on; ``seen``
    keeps what was raised, for an exception a Deferred may have swallowed.
    """

    on: bool = False
    seen: list[str] = Factory(list)

    def unexpected(self, core: str, phase: str, event: object) -> list[Any]:
        """No effect, or (strict) ``UnexpectedEvent``."""
        if not self.on:
            return []
        said = f"the {core} in phase {phase} cannot receive {event!r}"
        self.seen.append(said)
        raise UnexpectedEvent(said)


#: The cores' setting, unless one is made with ``strict=``.
STRICT = Strictness()


def strictness(strict: bool | None) -> Strictness:
    """A core's setting: ``STRICT`` unless the core was told (``strict``) itself."""
    return STRICT if strict is None else Strictness(on=strict)


# The loop both shells run.

EventT = TypeVar("EventT")
EffectT = TypeVar("EffectT")


class EffectLoop(Generic[EventT, EffectT]):
    """Feeds a core one event at a time and applies the effects it returns, in order.

    Applying an effect may raise an event at once (cancelling a Deferred runs its errback,
    aborting a connection may report it lost): that event waits until the whole batch is
    applied and is fed then, so the core is never entered while one of its answers is only
    half done. An exception leaves what is queued for the next ``feed``.
    """

    def __init__(
        self, handle: Callable[[EventT], Iterable[EffectT]], apply: Callable[[EffectT], None]
    ) -> None:
        self._handle = handle
        self._apply = apply
        self._queue: deque[EventT] = deque()
        self._running = False

    def feed(self, event: EventT) -> None:
        """Deliver ``event`` now, or (raised while effects are applied) once they are."""
        self._queue.append(event)
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                for effect in self._handle(self._queue.popleft()):
                    self._apply(effect)
        finally:
            self._running = False
