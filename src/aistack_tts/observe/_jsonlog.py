"""JSON lines: one log event per line, as ``jq``, Loki and Fluent Bit read them.

``twist``'s own JSON output is RFC 7464 (each record starts with 0x1E) and nests every field
under Twisted's own names, which a ``json.loads`` per line rejects. Each line here is one
object: ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``message`` (the event as text),
``system`` where Twisted set one, ``traceback`` for a failure, and the event's own fields whose
values are JSON scalars at the top level (an access event's ``status``, ``duration``, ...).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    PredicateResult,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer

_SCALARS = (str, int, float, bool, type(None))
#: The keys every line has; an event's own field of that name does not replace them.
_RESERVED = frozenset({"time", "level", "namespace", "message", "system", "traceback"})
#: Keys of events Twisted logs through its legacy ``log.msg`` bridge that repeat ``message``.
_LEGACY = frozenset({"isError", "format", "why"})
_LEFT_OUT = _RESERVED | _LEGACY
#: One encoder for every line (``json.dumps`` with options builds a new one per call).
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode
#: A format that is one plain field (``"{line}"``, the access event's): its value, formatted.
_ONE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Twisted's own line as each port starts listening (``GatewaySite starting on 8000``).
_PORT_STARTING = re.compile(r"\w+ starting on .+")


class Preformatted:
    """An event's text made beforehand.

    ``"{text}"`` shows it; JSON lines leave it out (it is their ``message`` already).
    """

    def __init__(self, text: str) -> None:
        self._text = text

    def __format__(self, spec: str) -> str:
        return self._text


def iso_time(timestamp: float | None) -> str | None:
    """``timestamp`` (seconds since the epoch) as ISO 8601 in UTC, to the microsecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def message_of(event: LogEvent) -> str:
    """``formatEvent(event)``, without string.Formatter for a format of one plain field.

    The same text: ``formatEvent`` formats ``"{name}"`` as ``format(event["name"], "")``.
    """
    fmt = event.get("log_format")
    if isinstance(fmt, str) and "log_flattened" not in event:
        field = _ONE_FIELD.fullmatch(fmt)
        if field is not None and field.group(1) in event:
            try:
                return str(format(event[field.group(1)], ""))
            except BaseException:
                pass  # formatEvent says what went wrong, as it would have
    return formatEvent(event)


def event_as_json_line(event: LogEvent) -> str:
    """``event`` as one line of JSON, ending with a newline."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": iso_time(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": message_of(event),
    }
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        record["system"] = system
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if isinstance(value, _SCALARS) and key not in _LEFT_OUT and not key.startswith("log_"):
            record[key] = value
    return _ENCODE(record) + "\n"


def json_lines_observer(out: IO[Any]) -> FileLogObserver:
    """A log observer writing ``event_as_json_line`` for each event to ``out``."""
    return FileLogObserver(out, event_as_json_line)


def use_json_lines(twist_options: Any) -> None:
    """Make ``twist``'s JSON log format (its default when stdout is not a terminal) JSON lines.

    Public (``aistack_tts.use_json_lines``): a ``twist`` plugin's ``Options.postOptions``
    calls it with ``getattr(self, "parent", None)`` (twist's own options), and its log lines
    are then the gateway's: one JSON object per line, fields as this module's docstring says.
    ``twist`` has settled the format (``--log-format``, or by whether its log file is a tty)
    before it parses the plugin's options; it starts logging only after the service is made.
    Text stays Twisted's own. Nothing changes under other runners (``twistd``).
    """
    if getattr(twist_options, "get", None) is None:
        return
    if twist_options.get("logFormat") == "json":
        twist_options["fileLogObserverFactory"] = json_lines_observer


@implementer(ILogFilterPredicate)
class _NoPortStarting:
    """``no`` for Twisted's "<factory> starting on <port>" line, else ``maybe``."""

    def __call__(self, event: LogEvent) -> Any:  # a PredicateResult (typed Any by Twisted)
        text = event.get("log_text")
        if event.get("log_namespace") != "log_legacy" or not isinstance(text, str):
            return PredicateResult.maybe
        return PredicateResult.no if _PORT_STARTING.fullmatch(text) else PredicateResult.maybe


def quiet_port_lines(twist_options: Any) -> None:
    """Leave Twisted's "<factory> starting on <port>" lines out of ``twist``'s log.

    The port logs one for each listener whatever its factory's ``noisy`` says; the gateway's
    start-up line names where it listens (``bound``), and ``--demo``'s line its demo upstream's
    URL. Both formats, text and JSON lines; nothing changes under other runners.
    """
    if getattr(twist_options, "get", None) is None:
        return
    make = twist_options.get("fileLogObserverFactory")
    if make is None:
        return

    def quiet(out: IO[Any]) -> ILogObserver:
        return FilteringLogObserver(make(out), [_NoPortStarting()])

    twist_options["fileLogObserverFactory"] = quiet
