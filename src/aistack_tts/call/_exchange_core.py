"""The decisions of one proxied call, without I/O: events in, effects out (sans-IO).

The core of the call step: ``call._exchange`` is its shell, which turns what Twisted
reports (the agent's answer, the body's end, the client leaving, the watchdog, the drain's cut)
into ``Event`` values, hands them to ``ExchangeMachine.handle`` and applies the ``Effect``
values it returns, in order. No transport, no clock, no Deferred: time arrives as ``Stalled``,
failures arrive already classified (``CallFailed``, which says whether a spare upstream is
free), and the upstream pool stays in the shell. Fail-over is decided here, in one step: a
refused call marks its upstream down and, if there is a spare, moves to it and sends again;
if every other upstream that is up is busy, it goes back into the queue for one (``Requeue``,
which the shell answers as it answers a request: a response, or a ``CallFailed``).

Phases: ``connecting`` (a request is out or about to be, no response head yet) →
``streaming`` (the head went to the client, the body flows) → ``done``. Exactly one ``Finish``
ends a call; after it the ends still owed (``RECEIVES``) have no effect. The shell feeds one
event at a time (``call._events.EffectLoop``): one raised while it applies effects waits.

``RECEIVES`` says what each phase can be told; within a phase, the request's own answer comes
only while one is out, and once (a cancelled one only fails). Any other event is a bug of the
shell's: ignored in production, raised in strict mode (``call._events.Strictness``, on in the
tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from attrs import frozen

from aistack_tts._errors import (
    GATEWAY_FAILED,
    GatewayError,
    internal_error,
    stall_cause,
    upstream_timeout,
)
from aistack_tts.observe._outcome import Outcome, cut_outcome

from ._events import (
    AbortClient,
    AnswerWith,
    Bug,
    ClientLeft,
    Cut,
    Ending,
    Finish,
    Stalled,
    strictness,
)

#: The access event's ``cause`` when the client left: before the head, or during the body.
LEFT_BEFORE_HEAD = "the client closed the connection before the upstream answered"
LEFT_DURING_BODY = "the client closed the connection during the body"


class Phase(StrEnum):
    """Where a proxied call is."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    DONE = "done"


# Events: what happened, told by the shell.


@frozen
class Start:
    """The call begins: send its request."""


@frozen
class Response:
    """The upstream's response head arrived."""

    status: int


@frozen
class CallFailed:
    """The request failed before a response head, classified by the shell.

    ``refused``: nothing reached the upstream (refused, DNS, connect timeout), so another
    upstream may take the call; ``spare``: the shell found one that is up, not tried yet and
    free (with a slot token for a call that holds one); ``requeue``: no spare, but the call
    holds a slot and another upstream is up (busy), so it may wait for one there. ``error``
    and ``cause`` say it to the client and the access event, unless the gateway stopped the
    call itself (then the machine knows better).
    """

    refused: bool
    error: GatewayError
    cause: str
    spare: bool = False
    requeue: bool = False


@frozen
class BodyEnded:
    """The upstream body ended: whole (``broken`` is None) or not (``broken`` says why)."""

    broken: str | None = None


Event = Start | Response | CallFailed | BodyEnded | ClientLeft | Stalled | Cut | Bug


# Effects: what the shell does, in the order given.


@frozen
class Send:
    """Send the request to the current upstream (and watch it)."""


@frozen
class StartResponse:
    """Relay the response head to the client and start relaying its body."""

    status: int


@frozen
class CancelCall:
    """Cancel the request that is out; its failure comes back as ``CallFailed``."""


@frozen
class MarkDown:
    """The upstream refused the connection: the pool skips it for its cool-down."""


@frozen
class TakeSpare:
    """Move the call (and its slot) to the spare upstream ``CallFailed`` said is free."""


@frozen
class Requeue:
    """Give the slot back and wait in the queue for one on an upstream that is up, then send.

    Answered like ``Send``: a response, or a ``CallFailed`` (a wait past the queue timeout
    fails as ``gpu_busy``); ``CancelCall`` cancels the wait.
    """


@frozen
class StopUpstream:
    """Close the upstream body's connection, so the server stops generating."""


Effect = (
    Send
    | StartResponse
    | CancelCall
    | MarkDown
    | TakeSpare
    | Requeue
    | StopUpstream
    | AbortClient
    | AnswerWith
    | Finish
)


#: What each phase can be told. After the ``Finish``: the client's connection dropping, and
#: the body's end that stopping the upstream brings.
RECEIVES: Mapping[Phase, tuple[type[Event], ...]] = {
    Phase.CONNECTING: (Start, Response, CallFailed, ClientLeft, Stalled, Cut, Bug),
    Phase.STREAMING: (BodyEnded, ClientLeft, Stalled, Cut, Bug),
    Phase.DONE: (ClientLeft, BodyEnded),
}


class ExchangeMachine:
    """The state of one proxied call and what each event makes of it.

    ``strict``: raise on an event the phase cannot receive (default: ``call._events.STRICT``).
    """

    def __init__(self, idle_timeout: float, *, strict: bool | None = None) -> None:
        self._idle_timeout = idle_timeout
        self._strict = strictness(strict)
        self.phase = Phase.CONNECTING
        self._started = False
        #: A request is out and has not answered yet.
        self._calling = False
        # Why the gateway stops the call itself, before the head; the first one cancels.
        self._client_gone = False
        self._timed_out = False
        self._cut: GatewayError | None = None

    def handle(self, event: Event) -> list[Effect]:
        """What ``event`` changes: the effects for the shell to apply, in order."""
        if not isinstance(event, RECEIVES[self.phase]):
            return self._unexpected(event)
        if self.phase is Phase.CONNECTING:
            return self._connecting(event)
        if self.phase is Phase.STREAMING:
            return self._streaming(event)
        return []

    def _unexpected(self, event: Event) -> list[Effect]:
        return self._strict.unexpected("exchange", self.phase, event)

    # Before the head.

    def _connecting(self, event: Event) -> list[Effect]:
        match event:
            case Start() if not self._started:
                self._started = True
                return self._attempt()
            case Response(status) if self._calling and not self._stopping:
                self._calling = False
                self.phase = Phase.STREAMING
                return [StartResponse(status)]
            case CallFailed() if self._calling:
                self._calling = False
                if event.refused and not self._stopping:
                    # Nothing reached the upstream: it is skipped for a while, and the call
                    # goes to a spare one if there is one.
                    if event.spare:
                        return [MarkDown(), TakeSpare(), *self._attempt()]
                    if event.requeue:
                        self._calling = True
                        return [MarkDown(), Requeue()]
                    return [MarkDown(), *self._failed(event)]
                return self._failed(event)
            case ClientLeft() | Stalled() | Cut():
                # The first reason cancels the request that is out; its failure (or, before
                # the first attempt, the Start) then ends the call.
                first = not self._stopping
                if isinstance(event, ClientLeft):
                    self._client_gone = True
                elif isinstance(event, Stalled):
                    self._timed_out = True
                else:
                    self._cut = event.error
                return [CancelCall()] if self._calling and first else []
            case Bug(why):
                self._calling = False
                if self._client_gone:
                    return self._finish(Outcome.INTERNAL_ERROR, why)
                return self._answer(internal_error(), GATEWAY_FAILED)
        # A second Start, or an answer with no request out (or from a cancelled one).
        return self._unexpected(event)

    @property
    def _stopping(self) -> bool:
        """The gateway has a reason of its own to end the call before the head."""
        return self._client_gone or self._timed_out or self._cut is not None

    def _attempt(self) -> list[Effect]:
        """Send the request, unless the gateway stopped the call meanwhile."""
        stopped = self._stopped()
        if stopped is not None:
            return stopped
        self._calling = True
        return [Send()]

    def _failed(self, failed: CallFailed) -> list[Effect]:
        """No request is out and none will be: answer the client, unless it left."""
        stopped = self._stopped()
        if stopped is not None:
            return stopped
        return self._answer(failed.error, failed.cause)

    def _stopped(self) -> list[Effect] | None:
        """How a call the gateway stopped ends (the client left, a cut, a stall); None if not.

        The request's own failure is then the gateway's doing and says nothing.
        """
        if self._client_gone:
            return self._finish(Outcome.CLIENT_ABORT, LEFT_BEFORE_HEAD)
        if self._cut is not None:
            return self._answer(self._cut, self._cut.message)
        if self._timed_out:
            # Before the head only the upstream can be quiet.
            return self._answer(upstream_timeout(), stall_cause("upstream", self._idle_timeout))
        return None

    # After the head.

    def _streaming(self, event: Event) -> list[Effect]:
        match event:
            case BodyEnded(None):
                return self._finish(Outcome.OK, None, ending=Ending.BODY)
            case BodyEnded(str(why)):
                # Truth after the head: a truncated body must never end like a whole one.
                return [*self._abort(), *self._finish(Outcome.UPSTREAM_ERROR_MID_BODY, why)]
            case ClientLeft():
                self._client_gone = True
                return [StopUpstream(), *self._finish(Outcome.CLIENT_ABORT, LEFT_DURING_BODY)]
            case Stalled(kind):
                cause = stall_cause(kind, self._idle_timeout)
                return self._stop_both(Outcome.stalled(kind), cause)
            case Cut(error):
                return self._stop_both(cut_outcome(error.type), error.message)
            case Bug(why):
                return self._stop_both(Outcome.INTERNAL_ERROR, why)
        return self._unexpected(event)

    def _stop_both(self, outcome: str, cause: str) -> list[Effect]:
        """Close the upstream body and abort the client (a cut, a stall, a bug)."""
        return [StopUpstream(), *self._abort(), *self._finish(outcome, cause)]

    def _abort(self) -> list[Effect]:
        if self._client_gone:
            return []
        self._client_gone = True
        return [AbortClient()]

    # The ways out.

    def _answer(self, error: GatewayError, cause: str) -> list[Effect]:
        """End the call with the gateway's envelope for ``error``."""
        return [AnswerWith(error), *self._finish(error.type, cause, ending=Ending.ENVELOPE)]

    def _finish(
        self, outcome: str, cause: str | None, *, ending: Ending = Ending.NONE
    ) -> list[Effect]:
        """The one way out."""
        self.phase = Phase.DONE
        return [Finish(outcome, cause, ending=ending)]
