"""The call's watchdog."""

from __future__ import annotations

from twisted.internet.task import Clock


def test_watchdog_fires_after_a_quiet_interval_blaming_the_last_kind() -> None:
    """Each touch restarts the interval; the stall names whoever was last waited on."""
    from aistack_tts.call._watchdog import Watchdog

    clock = Clock()
    stalls: list[str] = []
    watchdog = Watchdog(clock, 10, stalls.append)
    watchdog.touch()
    clock.advance(6)
    watchdog.touch("client")
    clock.advance(6)
    assert stalls == []
    clock.advance(4)
    assert stalls == ["client"]
    watchdog.touch()
    watchdog.stop()
    clock.advance(100)
    assert stalls == ["client"]
    assert not clock.getDelayedCalls()
