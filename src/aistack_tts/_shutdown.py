"""A second SIGTERM/SIGINT during the drain cuts what is left at once (nginx's fast shutdown).

Only ``twist aistack-tts`` installs this; a process that embeds the proxy keeps its own signal
handling. The reactor's own handlers stay in charge of the first signal (they log it, stop the
reactor, and remember it, so ``twist`` exits by re-raising it); without this, another signal
makes them stop a stopping reactor again, which logs a ``ReactorNotRunning`` traceback, and
the drain runs on to its timeout.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.logger import Logger

#: The signals that start a drain (and, again, cut it).
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_log = Logger()

_Handler = Callable[[int, FrameType | None], Any]


class FastShutdown:
    """Wraps the reactor's SIGTERM and SIGINT handlers: the first signal stays theirs.

    Any later one (or any signal once the reactor is stopping) calls ``cut_now``, which returns
    how many calls it cut.
    """

    def __init__(self, reactor: Any, cut_now: Callable[[], int]) -> None:
        self._reactor = reactor
        self._cut_now = cut_now
        self._stopping = False

    def install(self) -> None:
        """Wrap the reactor's handlers; call it once the reactor runs (it installs them then)."""
        self._reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        for number in SIGNALS:
            previous = signal.getsignal(number)
            # Only the reactor's own handlers: a signal left ignored, at its default, or
            # handled by someone else (a debugger's SIGINT) stays as it is.
            if getattr(previous, "__self__", None) is self._reactor and callable(previous):
                signal.signal(number, self._handler(previous))

    def _handler(self, previous: _Handler) -> _Handler:
        def handle(number: int, frame: FrameType | None) -> None:
            # In a signal handler: do nothing but hand over to the reactor's thread.
            self._reactor.callFromThread(self._received, previous, number)

        return handle

    def _shutting_down(self) -> None:
        self._stopping = True

    def _received(self, previous: _Handler, number: int) -> None:
        if not self._stopping:
            self._stopping = True
            previous(number, None)
            return
        count = self._cut_now()
        _log.warn(
            "second signal ({name}): cutting {count} call(s) now",
            name=signal.Signals(number).name,
            count=count,
        )
