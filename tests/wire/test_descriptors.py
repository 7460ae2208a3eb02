"""Running out of descriptors, said sparingly."""

from __future__ import annotations

from twisted.internet.task import Clock


def test_rate_limited_warning_logs_once_per_interval_with_a_count() -> None:
    """A flood of the same trouble: one line per interval, counting what it did not log."""
    from aistack_tts.wire._descriptors import RateLimitedWarning
    from support.logs import LogCapture

    clock = Clock()
    warning = RateLimitedWarning(clock, "out of file descriptors", interval=10)
    with LogCapture() as logs:
        for _ in range(5):
            warning.occurred("EMFILE")
            clock.advance(1)
        clock.advance(10)
        warning.occurred("EMFILE")
    lines = [e for e in logs.events if e.get("log_namespace") == "aistack_tts.resources"]
    assert [e["count"] for e in lines] == [1, 5]
