"""Fixtures the suites share (``support`` holds the helpers, ``testbed`` the processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.logs import Captured, capturing
from testbed.processes import UpstreamProcess


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """The scriptable upstream (``testbed.upstream_server``) as a process, for one module."""
    process = UpstreamProcess.start(tmp_path_factory.mktemp("upstream"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def demo_log() -> Iterator[Captured]:
    """The demo upstream's log lines (namespace ``aistack_tts.demo``) while the test runs."""
    yield from capturing("aistack_tts.demo")


@pytest.fixture
def access_log() -> Iterator[Captured]:
    """The gateway's access-log lines (namespace ``aistack_tts.access``) while the test runs."""
    yield from capturing("aistack_tts.access")
