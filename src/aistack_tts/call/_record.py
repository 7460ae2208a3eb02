"""The record of one call: what a proxied call and a WebSocket session both keep, and their exit.

A step below ``call._exchange`` and ``tunnel._session``, each of which holds one
``CallRecord`` (composition, not a base class): the slot token, when the call started, the
status and provider the client saw, why it did not end ``ok``, and ``finish``, the one way
out, which releases the slot exactly once and writes the access event and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.server import Request

from aistack_tts._errors import QWEN3_TTS, GatewayError, LocalResourceExhausted, write_error
from aistack_tts.wire._send_now import send_now

from ._context import CallContext, IInFlightCall
from ._slot import SlotHold


class CallRecord:
    """One call's slot token and what its access event will say; ``finish`` ends it once."""

    def __init__(
        self,
        context: CallContext,
        request: Request,
        hold: SlotHold | None,
        call: IInFlightCall,
        upstream: str,
    ) -> None:
        self._context = context
        self._request = request
        self._call = call
        #: None for a slot-exempt call. A fail-over swaps it (``swap_hold``).
        self.hold = hold
        self.started = context.clock.seconds()
        #: From the request's arrival to now, when the slot (if any) was just taken.
        self._queue_wait = context.access_log.since_arrival(request)
        #: The upstream the call went to (a fail-over changes it).
        self.upstream = upstream
        self.status: int | None = None
        self.provider = "none"
        #: Why the call did not end ``ok`` (for the access event); the first reason wins
        #: where ``answer_with`` is concerned.
        self.cause: str | None = None
        self._envelope_bytes = 0
        self.finished = False
        context.in_flight.track(call)

    def swap_hold(self, hold: SlotHold) -> None:
        """Give the slot token back and keep ``hold`` instead (a fail-over to another GPU)."""
        assert self.hold is not None
        self.hold.release()
        self.hold = hold

    def requeued(self, hold: SlotHold) -> None:
        """The call waited in the queue again (its upstream refused): ``hold`` is its slot now.

        Its wait and its hold count from here: the refused attempt is part of the wait, so
        ``queue_wait`` and ``slot_held`` still add up to the call's duration.
        """
        self.swap_hold(hold)
        self._queue_wait = self._context.access_log.since_arrival(self._request)
        self.started = self._context.clock.seconds()

    def answered(self, status: int) -> None:
        """The upstream's answer head arrived with ``status``: it is who answers the client."""
        self.status = status
        self.provider = QWEN3_TTS
        self._context.metrics.upstream_headers.observe(self._context.clock.seconds() - self.started)

    def answer_with(self, error: GatewayError) -> Callable[[], None]:
        """Note ``error`` as the answer; what writes its envelope (``finish``'s ``then``)."""
        if isinstance(error, LocalResourceExhausted):
            self._context.exhaustion_warning.occurred(error.message)
        self.status = error.status
        self.provider = error.provider
        self.cause = self.cause or error.message
        self._envelope_bytes = len(error.envelope())
        return lambda: write_error(self._request, error)

    def finish(
        self,
        outcome: str,
        *,
        bytes_out: int,
        cause: str | None = None,
        then: Callable[[], None] | None = None,
        flush: bool = True,
    ) -> bool:
        """The only exit: release the slot, end the response (``then``), log. False if done before.

        ``cause``, when given, says why the call did not end ``ok`` (else the one noted before).
        ``flush``: what ``then`` wrote goes to the kernel before the bookkeeping; False when it
        writes nothing (a send of nothing is a system call all the same).

        The slot is released before the response ends: ending it makes twisted.web start the
        next pipelined request on this connection at once, and that one must find it free.
        """
        if self.finished:
            return False
        self.finished = True
        if cause is not None:
            self.cause = cause
        if self.hold is not None:
            self.hold.release()
        self._context.in_flight.untrack(self._call)
        if then is not None:
            then()
            if flush:
                # The client has its answer before the bookkeeping below, not after it.
                send_now(self._request.transport)
        held = self._context.clock.seconds() - self.started
        metrics = self._context.metrics
        metrics.upstream_total.observe(held)
        slotted = self.hold is not None
        if slotted:
            metrics.slot_held.observe(held)
        self._context.access_log.finished(
            self._request,
            status=self.status,
            outcome=outcome,
            provider=self.provider,
            slot="held" if slotted else "exempt",
            bytes_out=bytes_out + self._envelope_bytes,
            envelope=self._envelope_bytes > 0,
            upstream=self.upstream,
            cause=None if outcome == "ok" else self.cause,
            queue_wait=self._queue_wait if slotted else None,
            slot_held=held if slotted else None,
        )
        return True
