"""Access events carry levels an operator can filter on: info, warn, error by outcome."""

from __future__ import annotations

import json

import pytest
from twisted.logger import LogLevel

import aistack_tts._errors as errors
from aistack_tts.observe._jsonlog import event_as_json_line
from aistack_tts.observe._outcome import LEVELS, Outcome, cut_outcome, level_of
from support.harness import Harness
from support.logs import LogCapture

GET_VOICES = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"


def test_every_outcome_and_envelope_type_has_a_level() -> None:
    """Each ``Outcome`` and each envelope type the gateway answers is named in ``LEVELS``."""
    types = {
        cls.type
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError)
    }
    missing = ({str(o) for o in Outcome} | types) - LEVELS.keys()
    assert not missing


@pytest.mark.parametrize(
    ("outcome", "level"),
    [
        ("ok", LogLevel.info),
        ("client_abort", LogLevel.info),
        ("client_abort_queued", LogLevel.info),
        ("client_left", LogLevel.info),
        ("ws_closed_by_client", LogLevel.info),
        ("not_found", LogLevel.info),
        ("request_too_large", LogLevel.info),
        ("gpu_busy", LogLevel.warn),
        ("client_stalled", LogLevel.warn),
        ("draining", LogLevel.warn),
        (cut_outcome("draining"), LogLevel.warn),
        ("upstream_unavailable", LogLevel.error),
        ("upstream_timeout", LogLevel.error),
        ("upstream_error", LogLevel.error),
        ("upstream_error_mid_body", LogLevel.error),
        ("upstream_stalled", LogLevel.error),
        ("internal_error", LogLevel.error),
        ("local_resource_exhausted", LogLevel.error),
        ("something_new_cut", LogLevel.warn),
    ],
)
def test_the_level_of_each_outcome(outcome: str, level: LogLevel) -> None:
    assert level_of(outcome) is level


def levels(logs: LogCapture) -> list[tuple[str, str, str]]:
    """(outcome, in-memory level, JSON line level) of each access event."""
    return [
        (
            e["outcome"],
            e["log_level"].name,
            json.loads(event_as_json_line(e))["level"],
        )
        for e in logs.access()
    ]


def test_access_events_are_logged_at_their_outcomes_level() -> None:
    """ok is info, a client leaving is info, a busy GPU warn, a dead upstream error; the JSON
    line's ``level`` is the event's."""
    h = Harness()
    with LogCapture() as logs:
        h.request(GET_VOICES)
        h.upstream().send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        h.slot.acquire()
        h.request(GET_VOICES)
        h.slot.release()
        client = h.request(GET_VOICES)
        h.upstream()
        client.lose()
        h.request(GET_VOICES)
        h.refuse()
        h.reactor.advance(1)
    assert levels(logs) == [
        ("ok", "info", "info"),
        ("gpu_busy", "warn", "warn"),
        ("client_abort", "info", "info"),
        ("upstream_unavailable", "error", "error"),
    ]
