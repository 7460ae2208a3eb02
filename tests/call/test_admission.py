"""Admission as a table: each pool state and request kind, and the verdict."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from aistack_tts._config import Origin
from aistack_tts.call._admission import Admission, Verdict, admit, refusal
from aistack_tts.call._slot import RetryAfter
from aistack_tts.call._upstreams import Grant, Upstream


class FakeSlots:
    """A pool whose answers the test sets."""

    def __init__(self, *, free: bool, all_down: bool = False, full: bool = False) -> None:
        self.free = free
        self.down = all_down
        self.full = full
        self.taken = 0
        self.upstream = Upstream(Origin.parse("http://gpu"), None)  # type: ignore[arg-type]

    def try_take(self, exclude: Sequence[Upstream] = ()) -> Grant | None:
        # A free slot on an upstream that is up: none when all are down.
        return None if self.down else self._take()

    def try_probe(self) -> Grant | None:
        assert self.down, "a probe only when every upstream is down"
        return self._take()

    def _take(self) -> Grant | None:
        if not self.free:
            return None
        self.taken += 1
        return Grant(self.upstream, None)  # type: ignore[arg-type]

    def all_down(self) -> bool:
        return self.down

    def queue_full(self, queue_timeout: float) -> bool:
        assert queue_timeout > 0
        return self.full

    def pick(self) -> Upstream:
        return self.upstream


@pytest.mark.parametrize(
    ("free", "all_down", "full", "exempt", "queue_timeout", "verdict", "taken"),
    [
        (False, False, False, True, 0.0, Verdict.EXEMPT, 0),
        (True, False, False, True, 0.0, Verdict.EXEMPT, 0),
        (True, False, False, False, 0.0, Verdict.GRANTED, 1),
        # Every upstream down: a free slot is taken all the same, to try one (a probe).
        (True, True, False, False, 0.0, Verdict.GRANTED, 1),
        (True, True, False, False, 30.0, Verdict.GRANTED, 1),
        # ... and with none free, a queue waits for the probe's outcome.
        (False, True, False, False, 5.0, Verdict.QUEUE, 0),
        (False, True, False, False, 0.0, Verdict.UNAVAILABLE, 0),
        (False, False, False, False, 5.0, Verdict.QUEUE, 0),
        (False, False, True, False, 5.0, Verdict.FULL, 0),
        (False, False, True, False, 0.0, Verdict.BUSY, 0),
        (False, False, False, False, 0.0, Verdict.BUSY, 0),
    ],
)
def test_verdicts(
    free: bool,
    all_down: bool,
    full: bool,
    exempt: bool,
    queue_timeout: float,
    verdict: Verdict,
    taken: int,
) -> None:
    """An exempt call never takes a slot; a free slot is taken, even on an upstream marked
    down when all are; a busy pool queues unless there is no queue or the wait would run
    past it; with every upstream down, no free slot and no queue, it is unavailable."""
    slots = FakeSlots(free=free, all_down=all_down, full=full)
    admission = admit(slots, exempt=exempt, queue_timeout=queue_timeout)
    assert admission.verdict is verdict
    assert slots.taken == taken
    assert (admission.grant is not None) == (verdict is Verdict.GRANTED)
    assert (admission.upstream is not None) == (verdict is Verdict.EXEMPT)
    assert isinstance(admission, Admission)


def test_refusals_carry_their_envelopes() -> None:
    busy = refusal(Verdict.BUSY, RetryAfter(2, 1500), queue_wait=2.0)
    assert (busy.status, busy.type, busy.provider) == (503, "gpu_busy", "aistack")
    assert busy.headers == ((b"Retry-After", b"2"), (b"retry-after-ms", b"1500"))
    assert getattr(busy, "queue_wait", None) == 2.0
    full = refusal(Verdict.FULL, RetryAfter(9, 8200))
    assert (full.status, full.type, dict(full.headers)[b"Retry-After"]) == (503, "gpu_busy", b"9")
    unavailable = refusal(Verdict.UNAVAILABLE, RetryAfter(2, 1500))
    assert (unavailable.type, unavailable.provider) == ("upstream_unavailable", "qwen3-tts")
    assert dict(unavailable.headers)[b"Retry-After"] == b"5"
