"""The contract both cores keep with their shells: one event at a time, never re-entered.

``EffectLoop`` is what both shells feed their core through: an event raised while effects are
applied (a cancel runs its errback at once) is fed once the batch is applied, not inside it.
The cores speak in values only: when the router's Deferred fires is each shell's business.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost

from aistack_tts.call._events import EffectLoop
from aistack_tts.call._exchange import _Exchange
from aistack_tts.call._exchange_core import ExchangeMachine
from aistack_tts.tunnel._session import WebSocketTunnel
from aistack_tts.tunnel._session_core import TunnelMachine
from support.harness import Harness
from support.logs import LogCapture
from support.tunnel import CLIENT_FRAME, HANDSHAKE, SWITCHING, harness, opened

GET = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"


def test_an_event_raised_during_an_effect_is_delivered_after_the_batch() -> None:
    """The second event waits for the first one's effects, all of them, in order."""
    said: list[str] = []
    loop: EffectLoop[str, str]

    def handle(event: str) -> list[str]:
        said.append(f"handle {event}")
        return [f"{event}.1", f"{event}.2"] if event == "first" else [f"{event}.1"]

    def apply(effect: str) -> None:
        said.append(f"apply {effect}")
        if effect == "first.1":
            loop.feed("second")  # what a cancelled Deferred's errback does

    loop = EffectLoop(handle, apply)
    loop.feed("first")
    assert said == [
        "handle first",
        "apply first.1",
        "apply first.2",
        "handle second",
        "apply second.1",
    ]


def test_a_failed_effect_leaves_the_queue_for_the_next_feed() -> None:
    said: list[str] = []
    loop: EffectLoop[str, str]

    def apply(effect: str) -> None:
        if effect == "first":
            loop.feed("second")
            raise RuntimeError("boom")
        said.append(effect)

    loop = EffectLoop(lambda event: [event], apply)
    with pytest.raises(RuntimeError):
        loop.feed("first")
    loop.feed("third")
    assert said == ["second", "third"]


@pytest.fixture
def nested(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The events either core was told while its shell was still applying an effect."""
    applying = [0]
    told: list[object] = []
    for core in (ExchangeMachine, TunnelMachine):

        def handle(self: Any, event: object, real: Any = core.handle) -> Any:
            if applying[0]:
                told.append(event)
            return real(self, event)

        monkeypatch.setattr(core, "handle", handle)
    for shell in (_Exchange, WebSocketTunnel):

        def apply(self: Any, effect: object, real: Any = shell._apply) -> None:
            applying[0] += 1
            try:
                real(self, effect)
            finally:
                applying[0] -= 1

        monkeypatch.setattr(shell, "_apply", apply)
    return told


def test_a_cancelled_calls_failure_is_fed_after_the_cancel(nested: list[object]) -> None:
    """The client leaves while the request is out: the cancel's errback waits its turn."""
    h = Harness()
    with LogCapture() as logs:
        client = h.request(GET)
        up = h.upstream()
        client.lose()
    assert up.aborted
    assert h.tokens == 1
    assert [e["outcome"] for e in logs.access()] == ["client_abort"]
    assert nested == []


def test_the_early_client_bytes_are_fed_after_the_101(nested: list[object]) -> None:
    """Bytes the client sent behind its handshake are fed once the tunnel is open."""
    h, slot = harness()
    opened(h, early=CLIENT_FRAME)
    h.proxy.drain(0.0)
    h.reactor.advance(5)
    assert slot.releases == 1
    assert nested == []


# What the router waits on: the shell's, not the core's.


def in_flight(h: Harness) -> Any:
    [call] = list(h.proxy.calls)
    return call


@pytest.mark.parametrize(
    ("how", "fires"),
    [
        ("whole", True),
        ("left_before_the_head", True),
        ("truncated", False),
    ],
)
def test_the_routers_deferred_fires_once_the_answer_is_ended_here(how: str, fires: bool) -> None:
    """A response ended here (or a client gone before the head) lets the router go at once;
    one cut short is let go when the connection drops (the router cancels it then)."""
    h = Harness()
    client = h.request(GET)
    call = in_flight(h)
    up = h.upstream()
    if how == "left_before_the_head":
        client.lose()
    else:
        up.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        if how == "whole":
            up.send(b"lo")
        else:
            up.lose(ConnectionLost)  # the client is aborted
    assert h.tokens == 1
    assert call.done.called is fires
    if not fires:
        client.lose()  # the router cancels it
        assert call.done.called


@pytest.mark.parametrize(("answer", "fires"), [(b"refused", True), (b"switched", False)])
def test_a_sessions_router_deferred_fires_only_for_an_http_answer(
    answer: bytes, fires: bool
) -> None:
    h, slot = harness()
    client = h.request(HANDSHAKE)
    session = in_flight(h)
    up = h.upstream()
    if answer == b"refused":
        up.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    else:
        up.send(SWITCHING)
        up.lose(ConnectionDone)
    assert slot.releases == 1
    assert session.done.called is fires
    if not fires:
        client.lose()
        assert session.done.called
