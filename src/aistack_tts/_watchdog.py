"""The watchdog: one timer per call that notices when nothing has happened for too long.

The lowest step of a call's timing, shared by ``aistack_tts._bridge`` (body chunks touch it),
``aistack_tts._exchange`` and ``aistack_tts._tunnel`` (which turn its expiry into a stall or an
idle close). The clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime


@define
class Watchdog:
    """Fires ``on_stall(kind)`` when nothing has happened for ``timeout`` seconds.

    ``kind`` says who went quiet: ``"upstream"`` (no byte from it) or ``"client"`` (it stopped
    reading while the gateway waited to write). ``touch`` runs once per body chunk, so it only
    notes the time; the one timer re-arms itself for the rest of the interval when it fires.
    """

    clock: IReactorTime
    timeout: float
    on_stall: Callable[[str], None]
    _call: IDelayedCall | None = field(default=None, init=False)
    _last: float = field(default=0.0, init=False)
    _kind: str = field(default="upstream", init=False)

    def touch(self, kind: str = "upstream") -> None:
        """Something happened: start counting again, blaming ``kind`` if it runs out."""
        self._last = self.clock.seconds()
        self._kind = kind
        if self._call is None:
            self._call = self.clock.callLater(self.timeout, self._check)

    def stop(self) -> None:
        """Disarm."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        quiet = self.clock.seconds() - self._last
        if quiet < self.timeout:
            self._call = self.clock.callLater(self.timeout - quiet, self._check)
            return
        self._call = None
        self.on_stall(self._kind)
