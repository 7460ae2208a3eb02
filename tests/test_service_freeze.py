"""``twist aistack-tts`` freezes what start-up made once the reactor runs (``gc.freeze``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.testing import MemoryReactor

from aistack_tts._service import freeze_when_running


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def collected(target: object) -> bool:
    """Whether the collector's generations (not the frozen one) hold ``target``."""
    return any(o is target for o in gc.get_objects())


def test_start_up_objects_leave_the_collections_once_the_reactor_runs(unfrozen: None) -> None:
    reactor = MemoryReactor()
    made_at_start: list[object] = [object()]
    freeze_when_running(reactor)
    assert gc.get_freeze_count() == 0, "nothing is frozen before the reactor runs"
    assert collected(made_at_start)
    reactor.run()
    assert gc.get_freeze_count() > 0
    assert not collected(made_at_start)
    made_later: list[object] = []
    assert collected(made_later), "what the gateway makes while serving is collected as ever"
