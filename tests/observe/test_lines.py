"""The operator's view, in memory: JSON lines, close frames, causes, the start-up line."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from aistack_tts._config import GatewayConfig
from aistack_tts._errors import failure_cause
from aistack_tts.observe._jsonlog import (
    event_as_json_line,
    json_lines_observer,
    quiet_port_lines,
    use_json_lines,
)
from aistack_tts.observe._startup import startup_fields, startup_line
from aistack_tts.tunnel._frames import FrameBoundary, close_frame
from support.logs import LogCapture


def test_a_json_line_is_one_object_with_the_fields_on_top() -> None:
    """Scalar fields go to the top level; objects only into ``message``; time is ISO 8601."""
    with LogCapture() as logs:
        Logger(namespace="t").info("{who} did {what!r}", who="a", what=object(), n=3, ok=None)
    line = event_as_json_line(logs.events[0])
    assert line.endswith("\n")
    assert line.count("\n") == 1
    record = json.loads(line)
    assert (record["namespace"], record["level"], record["who"], record["n"]) == (
        "t",
        "info",
        "a",
        3,
    )
    assert record["message"].startswith("a did <object object")
    assert "what" not in record
    assert "ok" in record
    assert datetime.fromisoformat(record["time"]).utcoffset() is not None


def test_a_failure_carries_its_traceback_and_newlines_stay_escaped() -> None:
    """A logged failure is still one line, with the traceback as a field."""
    with LogCapture() as logs:
        try:
            raise ValueError("two\nlines")
        except ValueError:
            Logger(namespace="t").failure("it broke")
    line = event_as_json_line(logs.events[0])
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["level"] == LogLevel.critical.name
    assert "ValueError: two\nlines" in record["traceback"]


def test_twists_json_format_becomes_json_lines_and_text_stays() -> None:
    """Only twist's ``json`` choice is replaced; ``text`` and other runners are left alone."""
    json_options = {"logFormat": "json", "fileLogObserverFactory": object()}
    use_json_lines(json_options)
    assert json_options["fileLogObserverFactory"] is json_lines_observer
    text = object()
    text_options = {"logFormat": "text", "fileLogObserverFactory": text}
    use_json_lines(text_options)
    assert text_options["fileLogObserverFactory"] is text
    use_json_lines(None)


def test_twisteds_port_starting_lines_are_left_out() -> None:
    """``GatewaySite starting on 8000`` (logged by the port, whatever ``noisy`` says) is left
    out of either format; other legacy lines, the port's close included, stay."""
    written: list[str] = []
    options: dict[str, Any] = {
        "logFormat": "json",
        "fileLogObserverFactory": lambda out: lambda event: written.append(event["log_text"]),
    }
    quiet_port_lines(options)
    observer = options["fileLogObserverFactory"](None)
    for text in (
        "GatewaySite starting on 8000",
        "DemoUpstreamSite starting on '/tmp/demo.sock'",
        "(TCP Port 8000 Closed)",
        "a plugin starting on Monday, said a plugin",
    ):
        observer({"log_namespace": "log_legacy", "log_text": text, "log_level": LogLevel.info})
    observer({"log_namespace": "x", "log_text": "Site starting on 1", "log_level": LogLevel.info})
    assert written == [
        "(TCP Port 8000 Closed)",
        "a plugin starting on Monday, said a plugin",
        "Site starting on 1",
    ]
    quiet_port_lines(None)
    quiet_port_lines({})


def test_the_first_close_frame_and_its_code_are_noted_across_pieces() -> None:
    """A masked close frame split anywhere still yields its code; later ones do not count."""
    frame = (
        b"\x81\x02hi" + close_frame(1000, b"bye", masked=True) + close_frame(1001, b"", masked=True)
    )
    for cut in range(len(frame)):
        boundary = FrameBoundary()
        boundary.feed(frame[:cut])
        boundary.feed(frame[cut:])
        assert (boundary.closed, boundary.close_code) == (True, 1000)
    plain = FrameBoundary()
    plain.feed(b"\x81\x02hi")
    assert (plain.closed, plain.close_code) == (False, None)
    unmasked = FrameBoundary()
    unmasked.feed(close_frame(4000, b"", masked=False))
    assert unmasked.close_code == 4000


def test_the_cause_names_the_exception_or_the_timeout() -> None:
    """Refused: the exception. Watchdog: --idle-timeout. Connect timeout: --connect-timeout."""
    refused = Failure(ConnectionRefusedError("111: Connection refused"))
    timed = Failure(TimeoutError())
    args = {"idle_timeout": 60.0, "connect_timeout": 5.0}
    assert failure_cause(refused, timed_out=False, **args).startswith("ConnectionRefusedError")
    assert failure_cause(refused, timed_out=True, **args).startswith("--idle-timeout: ")
    assert failure_cause(timed, timed_out=False, **args).startswith("--connect-timeout: ")


def test_the_start_up_line_names_where_each_listener_is_bound() -> None:
    config = GatewayConfig(listen=("tcp:0:interface=127.0.0.1", "tcp6:8001"))
    fields = startup_fields(config, "9.9", ["127.0.0.1:43210", "[::]:8001"])
    assert fields["bound"] == "127.0.0.1:43210 [::]:8001"
    assert startup_line(fields).endswith(
        "listen tcp:0:interface=127.0.0.1 tcp6:8001 on 127.0.0.1:43210 [::]:8001"
    )


def test_the_start_up_line_says_what_runs() -> None:
    """Upstreams, slots, queue, timeouts, limits and switches, in one line."""
    config = GatewayConfig(
        upstream=("http://a:1", "http://b:2"), slots=2, metrics=False, slot_exempt=["GET:/x"]
    )
    line = startup_line(startup_fields(config, "9.9"))
    for part in (
        "aistack-tts 9.9",
        "upstream http://a:1 http://b:2, 2 slots each",
        "queue-timeout 30 s",
        "connect 5 s",
        "idle 60 s",
        "max-body 26214400 bytes",
        "slot-exempt GET:/x",
        "/metrics off",
        "/healthz and /readyz on",
    ):
        assert part in line, line
