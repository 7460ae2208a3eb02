"""The gateway's own resources: running out of file descriptors, and saying so sparingly.

Out of descriptors (``EMFILE``: this process's ``RLIMIT_NOFILE``; ``ENFILE``: the system's
table), the gateway can neither open an upstream socket nor accept a client. That is its own
trouble, not the upstream's: the client gets a 503 from ``aistack`` and no upstream is marked
down. Under such a flood every request fails the same way, so the log gets one line per
L{WARN_INTERVAL} with the count since the previous line, not one per failure.
"""

from __future__ import annotations

import errno
import resource

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: At most one warning line per this many seconds for each kind of exhaustion.
WARN_INTERVAL = 10.0

#: Errnos that say the gateway, not the upstream, is out of descriptors.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

_log = Logger(namespace="aistack_tts.resources")


def descriptor_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of the process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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
