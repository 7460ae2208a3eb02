"""Fixtures the suites share (``support`` holds the helpers, ``testbed`` the processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.defer import Deferred

from aistack_tts.call._events import STRICT
from support.inprocess import Gateways, InProcessGateway
from support.logs import Captured, capturing
from support.reactor import blockon
from support.websocket import Stacks
from testbed.processes import UpstreamProcess, refusing_port, start_demo_gateway, stop_process


@pytest.fixture(autouse=True)
def strict_cores() -> Iterator[None]:
    """Both cores raise on an event their phase cannot receive (production ignores it).

    The test fails on one even where the exception went into a Deferred and no further.
    """
    STRICT.on = True
    STRICT.seen.clear()
    try:
        yield
    finally:
        STRICT.on = False
    assert not STRICT.seen, f"a core was told what its phase cannot receive: {STRICT.seen}"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """The scriptable upstream (``testbed.upstream_server``) as a process, for one module."""
    process = UpstreamProcess.start(tmp_path_factory.mktemp("upstream"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def demo_gateway_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``twist aistack-tts --demo`` on an ephemeral loopback port, for one module; its port."""
    process, port = start_demo_gateway(tmp_path_factory.mktemp("demo-gateway") / "gateway.log")
    try:
        yield port
    finally:
        stop_process(process)


@pytest.fixture
def refused_upstream() -> Iterator[str]:
    """An upstream URL on loopback whose port refuses connections while the test runs."""
    with refusing_port() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def demo_log() -> Iterator[Captured]:
    """The demo upstream's log lines (namespace ``aistack_tts_demo``) while the test runs."""
    yield from capturing("aistack_tts_demo")


@pytest.fixture
def access_log() -> Iterator[Captured]:
    """The gateway's access-log lines (namespace ``aistack_tts.access``) while the test runs."""
    yield from capturing("aistack_tts.access")


@pytest.fixture
def inprocess_gateways() -> Iterator[Gateways]:
    """Starts gateways in this process for one test; takes each down after it."""
    started = Gateways()
    yield started
    blockon(Deferred.fromCoroutine(started.close()))


@pytest.fixture
def inprocess_gateway(upstream: UpstreamProcess, inprocess_gateways: Gateways) -> InProcessGateway:
    """A gateway in this process in front of the module's ``upstream``."""
    return inprocess_gateways(upstream.url)


@pytest.fixture
def ws_stacks() -> Iterator[Stacks]:
    """WebSocket stacks (an upstream, a gateway in front) for one test; each taken down after."""
    started = Stacks()
    yield started
    blockon(Deferred.fromCoroutine(started.close()))
