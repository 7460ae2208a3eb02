"""The gateway's own resources: running out of file descriptors, and saying so sparingly.

Out of descriptors (``EMFILE``: this process's ``RLIMIT_NOFILE``; ``ENFILE``: the system's
table), the gateway can neither open an upstream socket nor accept a client. That is its own
trouble, not the upstream's: the client gets a 503 from ``aistack`` and no upstream is marked
down. Under such a flood every request fails the same way, so the log gets one line per
``WARN_INTERVAL`` with the count since the previous line, not one per failure.
"""

from __future__ import annotations

import errno
import resource
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

#: At most one warning line per this many seconds for each kind of exhaustion.
WARN_INTERVAL = 10.0

#: Errnos that say the gateway, not the upstream, is out of descriptors.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

_log = Logger(namespace="aistack_tts.resources")


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of the process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


#: Descriptors kept back from client connections (listeners, pooled upstream connections,
#: log files, the reactor's own): this many, or a quarter of a smaller limit.
RESERVED_DESCRIPTORS = 64
#: Python's own ceiling for an unlimited (or absurd) ``RLIMIT_NOFILE``.
_MOST_CONNECTIONS = 1 << 20


def default_max_connections(limit: int | None = None) -> int:
    """How many client connections the descriptor limit allows.

    Two descriptors each (the socket, and a spooled request body or an upstream connection),
    after ``RESERVED_DESCRIPTORS``.
    """
    nofile = descriptor_limit() if limit is None else limit
    nofile = _MOST_CONNECTIONS if nofile < 0 else min(nofile, _MOST_CONNECTIONS)
    return max(1, (nofile - min(RESERVED_DESCRIPTORS, nofile // 4)) // 2)


def describe_exhaustion(code: int) -> str:
    """What ran out, for a client's message or the log, naming the limit."""
    if code == errno.ENFILE:
        return "the system's table of open files is full (ENFILE)"
    return f"the gateway is at its limit ({descriptor_limit()}) of open file descriptors (EMFILE)"


@define
class RateLimitedWarning:
    """Logs ``what`` at most once per ``interval``, counting the occurrences in between."""

    clock: IReactorTime
    what: str
    interval: float = WARN_INTERVAL
    _last: float | None = field(default=None, init=False)
    _unlogged: int = field(default=0, init=False)

    def occurred(self, detail: str, count: int = 1) -> None:
        """``count`` more occurrences; log a line if none was logged in the last interval."""
        self._unlogged += count
        now = self.clock.seconds()
        if self._last is not None and now - self._last < self.interval:
            return
        _log.warn(
            "{what}: {detail} ({count} time(s) since the last such line)",
            what=self.what,
            detail=detail,
            count=self._unlogged,
        )
        self._last = now
        self._unlogged = 0


#: What Twisted's TCP ``Port`` logs while ``accept()`` fails for want of descriptors
#: (``twisted.internet.tcp._accept``), and how many client connections each line stands for.
#: With its reserved descriptor it accepts and closes every waiting client, one line each;
#: without it, one line per read event of the listening socket.
_ACCEPT_EXHAUSTION_LINES = {
    "EMFILE encountered; releasing reserved file descriptor.": 0,
    "EMFILE recovery: Closed socket from {address}": 1,
    "Re-reserving EMFILE recovery file descriptor.": 0,
    "Could not accept new connection ({acceptError})": 1,
}


@implementer(ILogObserver)
@define
class _AcceptExhaustionFilter:
    """Passes a port's log events on, except the accept-exhaustion ones: those are counted."""

    observer: ILogObserver
    warning: RateLimitedWarning

    def __call__(self, event: LogEvent) -> None:
        closed = _ACCEPT_EXHAUSTION_LINES.get(event.get("log_format", ""))
        if closed is None:
            self.observer(event)
        elif closed:
            detail = (
                f"new client connections are closed at once: {describe_exhaustion(errno.EMFILE)}"
            )
            self.warning.occurred(detail, closed)


def quiet_accept_exhaustion(port: Any) -> Any:
    """Make ``port`` log its accept-time ``EMFILE`` at most once per ``WARN_INTERVAL``.

    Twisted's ``Port`` logs through its private ``_logger`` (there is no public way to filter
    one port's events); an instance attribute of the same name, whose observer counts those
    lines and passes the rest on, takes its place. Ports without one are left as they are.
    """
    logger = getattr(port, "_logger", None)
    clock = getattr(port, "reactor", None)
    if isinstance(logger, Logger) and clock is not None:
        warning = RateLimitedWarning(clock, "refusing new client connections")
        port._logger = Logger(
            namespace=logger.namespace,
            source=port,
            observer=_AcceptExhaustionFilter(logger.observer, warning),
        )
    return port
