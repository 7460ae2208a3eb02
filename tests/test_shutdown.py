"""The second signal: how FastShutdown wraps the reactor's handlers (no real signal is sent)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from aistack_tts._shutdown import SIGNALS, FastShutdown
from support.logs import LogCapture


def counting(cuts: list[int], result: int) -> Callable[[], int]:
    def cut_now() -> int:
        cuts.append(1)
        return result

    return cut_now


class FakeReactor:
    """The reactor's side of signal handling: its handlers, triggers and thread calls."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.triggers: list[tuple[str, str, Callable[[], None]]] = []
        self.queued: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def sigInt(self, number: int, frame: FrameType | None = None) -> None:
        self.received.append(number)

    sigTerm = sigInt

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], None]) -> None:
        self.triggers.append((phase, event, f))

    def callFromThread(self, f: Callable[..., None], *args: Any) -> None:
        self.queued.append((f, args))

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for f, args in queued:
            f(*args)


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    saved = {number: signal.getsignal(number) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def deliver(number: int) -> None:
    """What the interpreter does when the signal arrives: call the installed handler."""
    handler = signal.getsignal(number)
    assert callable(handler)
    handler(number, None)


@pytest.mark.usefixtures("saved_handlers")
def test_first_signal_is_the_reactors_and_a_second_one_cuts() -> None:
    """The first SIGTERM goes to the reactor's handler (in the reactor thread); a second one,
    or a SIGINT after it, cuts the drain and says so in one line each."""
    reactor = FakeReactor()
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    signal.signal(signal.SIGINT, reactor.sigInt)
    cuts: list[int] = []
    FastShutdown(reactor, counting(cuts, 3)).install()
    deliver(signal.SIGTERM)
    # Inside the signal handler nothing but a hand-over happened.
    assert (reactor.received, cuts) == ([], [])
    reactor.run_queued()
    assert (reactor.received, cuts) == ([signal.SIGTERM], [])
    with LogCapture() as logs:
        deliver(signal.SIGINT)
        reactor.run_queued()
    assert (reactor.received, cuts) == ([signal.SIGTERM], [1])
    lines = [e["log_format"].format(**e) for e in logs.events]
    assert lines == ["second signal (SIGINT): cutting 3 call(s) now"]


@pytest.mark.usefixtures("saved_handlers")
def test_a_signal_once_the_reactor_is_stopping_cuts() -> None:
    """When the reactor was stopped another way, the first signal already cuts."""
    reactor = FakeReactor()
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    cuts: list[int] = []
    FastShutdown(reactor, counting(cuts, 0)).install()
    [(phase, event, shutting_down)] = reactor.triggers
    assert (phase, event) == ("before", "shutdown")
    shutting_down()
    deliver(signal.SIGTERM)
    reactor.run_queued()
    assert (reactor.received, cuts) == ([], [1])


@pytest.mark.usefixtures("saved_handlers")
def test_handlers_that_are_not_the_reactors_are_left_alone() -> None:
    """An ignored SIGINT, or one handled by someone else, is not wrapped."""
    reactor = FakeReactor()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    FastShutdown(reactor, lambda: 0).install()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
