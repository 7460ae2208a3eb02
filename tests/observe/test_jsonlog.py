"""``message_of`` is ``formatEvent`` made cheap for one-field formats, and the same text always."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.logger import LogLevel, formatEvent

from aistack_tts.observe._jsonlog import event_as_json_line, message_of


class Text:
    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


class Broken:
    def __format__(self, spec: str) -> str:
        raise ValueError("cannot")


EVENTS: dict[str, dict[str, Any]] = {
    "one_field_object": {"log_format": "{line}", "line": Text("GET / -> 200 ok")},
    "one_field_str": {"log_format": "{a}", "a": "plain"},
    "one_field_int": {"log_format": "{n}", "n": 7},
    "missing_field": {"log_format": "{line}"},
    "unformattable": {"log_format": "{line}", "line": Broken()},
    "two_fields": {"log_format": "{a} and {b}", "a": 1, "b": "two"},
    "call": {"log_format": "{f()}", "f": lambda: "called"},
    "attribute": {"log_format": "{a.text}", "a": Text("x")},
    "spec": {"log_format": "{n:03d}", "n": 7},
    "bytes_format": {"log_format": b"{a}", "a": "from bytes"},
    "no_format": {"a": 1},
    "flattened": {"log_format": "{a}", "a": 1, "log_flattened": {"a!:": "flat"}},
}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_the_same_text_as_format_event(name: str) -> None:
    event = EVENTS[name]
    assert message_of(event) == formatEvent(event)


def test_an_access_like_event_makes_the_line_the_generic_path_makes() -> None:
    event: dict[str, Any] = {
        "log_format": "{line}",
        "line": Text("POST /v1/audio/speech -> 200 ok"),
        "log_level": LogLevel.info,
        "log_namespace": "aistack_tts.access",
        "log_time": 1_796_000_000.25,
        "status": 200,
        "cause": None,
        "duration": 0.012,
        "path": "/v1/audio/speech?voice=ünïcode",
    }
    line = event_as_json_line(event)
    record = json.loads(line)
    assert record["message"] == formatEvent(event)
    assert line == json.dumps(record, default=str, ensure_ascii=False) + "\n"
    assert record["path"] == "/v1/audio/speech?voice=ünïcode"
