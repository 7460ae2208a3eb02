"""Fixtures the real-socket suites share; its presence also puts ``tests/`` on ``sys.path``.

pytest imports this file first (rootdir conftest insertion, "prepend" mode), which is what
makes the ``support`` package importable from every test module and from the scripts
``tests/upstream_server.py`` and ``tests/gateway_process.py`` (run from ``tests/``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.logs import Captured, capturing
from support.processes import UpstreamProcess


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """The scriptable upstream (``tests/upstream_server.py``) as a process, for one module."""
    process = UpstreamProcess.start(tmp_path_factory.mktemp("upstream"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def demo_log() -> Iterator[Captured]:
    """The demo upstream's log lines (namespace ``aistack_tts_demo``) while the test runs."""
    yield from capturing("aistack_tts_demo")


@pytest.fixture
def access_log() -> Iterator[Captured]:
    """The gateway's access-log lines (namespace ``aistack_tts.access``) while the test runs."""
    yield from capturing("aistack_tts.access")
