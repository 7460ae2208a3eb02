"""The graceful drain: end keep-alive, let calls finish and their responses reach the clients.

At the deadline (or at once, on a second signal) what is left is cut.

A call is over when its last byte is handed to the client's transport, not when the client
has it: the drain also waits for each client connection to flush and close, or the process
would exit with the tail of a response (a chunked terminator, Content-Length bytes) unsent.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ._connections import ConnectionRegistry

#: Once what is left has been aborted, how long the drain waits for the aborted connections
#: to be reported lost (a reactor turn, normally) before it ends regardless.
ABORT_GRACE = 1.0

_log = Logger()


class Drain:
    """One drain of a proxy's calls and its site's client connections."""

    def __init__(
        self,
        clock: IReactorTime,
        connections: ConnectionRegistry,
        *,
        in_flight: Callable[[], int],
        when_idle: Callable[[], Deferred[None]],
        cut_calls: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._connections = connections
        self._in_flight = in_flight
        self._when_idle = when_idle
        self._cut_calls = cut_calls
        self._deadline: IDelayedCall | None = None
        self._give_up: IDelayedCall | None = None
        self._cut = False
        self._waiters: list[Deferred[None]] = []
        #: True once every call and connection is gone (or given up on).
        self.finished = False

    def start(self, timeout: float) -> None:
        """Close idle connections, end keep-alive, and wait up to ``timeout`` s."""
        self._connections.stop_keep_alive()
        calls, connections = self._in_flight(), self._connections.count
        if calls or connections:
            _log.info(
                "draining: waiting up to {timeout}s for {count} call(s)"
                " and {connections} client connection(s)",
                timeout=timeout,
                count=calls,
                connections=connections,
            )
        self._deadline = self._clock.callLater(timeout, self._timed_out)
        waiting = self._when_idle()
        waiting.addCallback(lambda _: self._connections.when_empty())
        waiting.addCallback(self._over)

    def when_done(self) -> Deferred[None]:
        """Fires once the drain is over."""
        waiter: Deferred[None] = Deferred()
        if self.finished:
            waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def cut_now(self) -> int:
        """Cut every call and client connection now; how many calls were cut."""
        count = 0 if self.finished else self._in_flight()
        self._cut_all()
        return count

    def _timed_out(self) -> None:
        self._deadline = None
        _log.warn(
            "drain timeout: cutting {count} call(s) short, closing {connections} client"
            " connection(s)",
            count=self._in_flight(),
            connections=self._connections.count,
        )
        self._cut_all()

    def _cut_all(self) -> None:
        if self.finished or self._cut:
            return
        self._cut = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._cut_calls()
        # A turn of the reactor first: what the cut calls answered (503 draining, to a client
        # still waiting for headers) gets written out before its connection is aborted.
        self._clock.callLater(0, self._connections.abort_all)
        self._give_up = self._clock.callLater(ABORT_GRACE, self._over, None)

    def _over(self, _: object) -> None:
        if self.finished:
            return
        self.finished = True
        for call in (self._deadline, self._give_up):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._give_up = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
