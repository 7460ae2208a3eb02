"""What a proxied call and a WebSocket session share.

Their slot token, their record (status, provider, outcome), and the one way out, which
releases the slot exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.web.server import Request
from zope.interface import implementer

from ._context import CallContext, IInFlightCall
from ._errors import GatewayError, LocalResourceExhausted, write_error
from ._slot import SlotHold
from ._upstream import Watchdog


@implementer(IInFlightCall)
class ProxiedCall:
    """The common part of ``_Exchange`` and ``WebSocketTunnel``; subclasses add the transport."""

    def __init__(
        self,
        context: CallContext,
        request: Request,
        hold: SlotHold | None,
        on_stall: Callable[[str], None],
    ) -> None:
        self._context = context
        self._request = request
        #: None for a slot-exempt call.
        self._hold = hold
        self._clock = context.clock
        self._started = self._clock.seconds()
        #: From the request's arrival to now, when the slot (if any) was just taken.
        self._queue_wait = context.access_log.since_arrival(request)
        #: Why the call did not end ``ok`` (for the access event).
        self._cause: str | None = None
        self._envelope_bytes = 0
        self._state = "connecting"
        self._status: int | None = None
        self._provider = "none"
        #: Set when the gateway cuts the call short (drain timeout): what a client still
        #: waiting for an answer is told.
        self._cut_short: GatewayError | None = None
        self._watchdog = Watchdog(self._clock, context.idle_timeout, on_stall)
        # What the router waits on. Fired only once an HTTP answer is finished; on the abort
        # paths (and after a 101) it stays pending and the router cancels it when the
        # connection drops.
        self.done: Deferred[None] = Deferred(lambda _: self._client_left())

    def _client_left(self) -> None:
        """The client went away (or the router gave up on it)."""
        raise NotImplementedError

    def _bytes_out(self) -> int:
        """Body bytes relayed to the client so far."""
        raise NotImplementedError

    def _upstream_url(self) -> str | None:
        """The upstream this call went to."""
        raise NotImplementedError

    def cut_short(self, error: GatewayError) -> None:
        """End the call now (the gateway is shutting down), telling a waiting client ``error``."""
        raise NotImplementedError

    def _answer_with(self, error: GatewayError) -> None:
        """End the call with the gateway's envelope for ``error``."""
        if isinstance(error, LocalResourceExhausted):
            self._context.exhaustion_warning.occurred(error.message)
        self._status = error.status
        self._provider = error.provider
        self._cause = self._cause or error.message
        self._envelope_bytes = len(error.envelope())
        self._finish(error.type, then=lambda: write_error(self._request, error))

    def _finish(
        self, outcome: str, *, then: Callable[[], None] | None = None, fired: bool = True
    ) -> None:
        """The only exit: release the slot, end the response (``then``), log, let the router go.

        The slot is released before the response ends: ending it makes twisted.web start the
        next pipelined request on this connection at once, and that one must find it free.
        On the abort paths (``fired=False``) the router is let go when the connection drops.
        """
        if self._state == "done":
            return
        self._state = "done"
        self._watchdog.stop()
        if self._hold is not None:
            self._hold.release()
        self._context.in_flight.untrack(self)
        if then is not None:
            then()
        held = self._clock.seconds() - self._started
        metrics = self._context.metrics
        metrics.upstream_total.observe(held)
        if self._hold is not None:
            metrics.slot_held.observe(held)
        slotted = self._hold is not None
        self._context.access_log.finished(
            self._request,
            status=self._status,
            outcome=outcome,
            provider=self._provider,
            slot="held" if slotted else "exempt",
            bytes_out=self._bytes_out() + self._envelope_bytes,
            envelope=self._envelope_bytes > 0,
            upstream=self._upstream_url(),
            cause=None if outcome == "ok" else self._cause,
            queue_wait=self._queue_wait if slotted else None,
            slot_held=held if slotted else None,
        )
        if fired and not self.done.called:
            self.done.callback(None)
