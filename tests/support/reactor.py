"""Typed helpers for tests that run on pytest-twisted's global reactor with real sockets.

pytest-twisted runs the reactor in the test process; these wrap what the real-socket test
modules need from it with types mypy can check: the reactor itself (as the
``PosixReactorBase`` it is), a decorator that runs a coroutine test on it, ``blockon`` for
fixtures, and ``until``, which waits for a condition without blocking the reactor (so the
gateway and upstreams it serves keep running while a test waits). A site listens on an
ephemeral 127.0.0.1 port through ``listen_tracking``, which keeps the channels it builds so a
test can wait for each connection to end (``disconnected``); ``new_delayed_calls`` finds the
timers a test left on the reactor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.task import deferLater
from twisted.web.server import Site

reactor = cast(PosixReactorBase, _global_reactor)

_T = TypeVar("_T")
_Test = TypeVar("_Test", bound=Callable[..., Coroutine[Any, Any, None]])


def twisted_test(test: _Test) -> _Test:
    """pytest-twisted's ``ensureDeferred``, typed: run a coroutine test on the reactor."""
    return cast(_Test, pytest_twisted.ensureDeferred(test))


def blockon(waiting: Deferred[_T]) -> _T:
    """pytest-twisted's ``blockon``, typed: run the reactor until ``waiting`` fires."""
    result: _T = pytest_twisted.blockon(waiting)
    return result


async def until(predicate: Callable[[], bool], what: str, *, timeout: float) -> None:
    """Poll ``predicate`` on the reactor (every 5 ms) until it holds; fail after ``timeout``.

    There is no default ``timeout``: each test module bounds its waits with its own patience.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


def listen_tracking(site: Site) -> tuple[IListeningPort, list[Any]]:
    """Listen with ``site`` on an ephemeral 127.0.0.1 port; also return the list that collects
    each channel the site builds, as connections arrive."""
    channels: list[Any] = []

    def tracking(addr: Any) -> Any:
        channel = Site.buildProtocol(site, addr)
        channels.append(channel)
        return channel

    site.buildProtocol = tracking  # type: ignore[method-assign]
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    return listening, channels


def disconnected(channel: Any) -> bool:
    """Whether the connection of a channel ``listen_tracking`` collected has ended."""
    # twisted.web wraps each HTTPChannel in a _GenericHTTPChannelProtocol.
    transport = getattr(getattr(channel, "_channel", channel), "transport", None)
    return transport is None or bool(transport.disconnected)


def new_delayed_calls(before: Collection[IDelayedCall]) -> list[IDelayedCall]:
    """The reactor's active DelayedCalls that are not in ``before``."""
    return [call for call in reactor.getDelayedCalls() if call.active() and call not in before]
