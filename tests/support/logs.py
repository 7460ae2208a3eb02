"""Log events a test reads: the in-process global log (``LogCapture``, ``Captured``) and the JSON
log file of a gateway process (``log_events``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer


class LogCapture:
    """Collects log events while active (used as a context manager)."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._observer = cast(ILogObserver, self.events.append)

    def __enter__(self) -> LogCapture:
        globalLogPublisher.addObserver(self._observer)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self._observer)

    def access(self) -> list[LogEvent]:
        return [e for e in self.events if e.get("log_namespace") == "aistack_tts.access"]

    def failures(self) -> list[LogEvent]:
        return [e for e in self.events if "log_failure" in e or e.get("isError")]


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events a gateway process wrote to ``path`` so far (other lines skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


@implementer(ILogObserver)
class Captured:
    """Keeps the twisted.logger events of one namespace (and when each came) while installed."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.events: list[LogEvent] = []
        #: ``time.monotonic()`` when each of ``events`` was logged.
        self.times: list[float] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == self.namespace:
            self.events.append(event)
            self.times.append(time.monotonic())

    def timed(self) -> list[tuple[float, LogEvent]]:
        """The events with the time each was logged."""
        return list(zip(self.times, self.events, strict=True))

    def matching(self, text: str) -> list[tuple[float, LogEvent]]:
        """The (time, event) pairs whose format contains ``text``."""
        return [(t, e) for t, e in self.timed() if text in e.get("log_format", "")]

    def outcomes(self) -> list[str]:
        """The ``outcome`` of each event (access-log lines)."""
        return [e["outcome"] for e in self.events]

    def messages(self) -> list[str]:
        """Each event, formatted."""
        return [formatEvent(event) for event in self.events]


def capturing(namespace: str) -> Iterator[Captured]:
    """A log fixture's body: a ``Captured`` of ``namespace``, observing the global log while
    the test runs."""
    captured = Captured(namespace)
    globalLogPublisher.addObserver(captured)
    yield captured
    globalLogPublisher.removeObserver(captured)
