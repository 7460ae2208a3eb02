"""The watchdog: one timer per call that notices when nothing has happened for too long.

The lowest step of a call's timing, shared by ``call._bridge`` (body chunks touch it),
``call._exchange`` and ``tunnel._session`` (which turn its expiry into a stall or an
idle close). The clock is injected.

``--idle-timeout`` means, for each direction: the upstream must send a byte at least that
often while the gateway waits for it; the client, while the gateway waits for it to read
(its send buffer is full), must take at least one byte in that time. The second is measured
as progress, not as an empty buffer: ``unsent`` (bytes written to the client that have not
reached it) going down counts, so a player reading in real time is never cut, however long
its buffers take to drain, and one that reads nothing is cut on time.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: While the client is blamed, how often its progress is looked at (at most).
CLIENT_SAMPLE_S = 1.0


@define
class Watchdog:
    """Fires ``on_stall(kind)`` when nothing has happened for ``timeout`` seconds.

    ``kind`` says who went quiet: ``"upstream"`` (no byte from it) or ``"client"`` (it stopped
    reading while the gateway waited to write). ``touch`` runs once per body chunk, so it only
    notes the time; the one timer re-arms itself for the rest of the interval when it fires.
    While the client is blamed, ``unsent`` (bytes still on their way to it, ``None`` when
    unknown) is sampled: each drop counts as the client's activity.
    """

    clock: IReactorTime
    timeout: float
    on_stall: Callable[[str], None]
    unsent: Callable[[], int | None] | None = None
    _call: IDelayedCall | None = field(default=None, init=False)
    _last: float = field(default=0.0, init=False)
    _kind: str = field(default="upstream", init=False)
    _unsent: int | None = field(default=None, init=False)

    def touch(self, kind: str = "upstream") -> None:
        """Something happened: start counting again, blaming ``kind`` if it runs out."""
        self._last = self.clock.seconds()
        self._kind = kind
        if kind == "client" and self.unsent is not None:
            self._unsent = self.unsent()
            if self._call is not None and self._call.active():
                # Sample sooner than the timeout: progress is seen when it happens.
                self._call.cancel()
                self._call = None
        if self._call is None:
            self._call = self.clock.callLater(self._wait(self.timeout), self._check)

    def stop(self) -> None:
        """Disarm."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _wait(self, remaining: float) -> float:
        if self._kind == "client" and self._unsent is not None:
            return min(remaining, CLIENT_SAMPLE_S)
        return remaining

    def _check(self) -> None:
        now = self.clock.seconds()
        if self._kind == "client" and self.unsent is not None:
            unsent = self.unsent()
            if unsent is not None and self._unsent is not None and unsent < self._unsent:
                self._last = now  # the client took bytes since the last look
            self._unsent = unsent
        quiet = now - self._last
        if quiet < self.timeout:
            self._call = self.clock.callLater(self._wait(self.timeout - quiet), self._check)
            return
        self._call = None
        self.on_stall(self._kind)
