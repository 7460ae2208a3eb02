"""The demo's paced-frame producer, on a fake clock: delays, ticks, pause, resume, stop, finish."""

from __future__ import annotations

import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from aistack_tts_demo._pacing import PacedFrames
from aistack_tts_demo._synth import FRAME_SECONDS

FIRST = 0.25
FRAME = FRAME_SECONDS  # 80 ms, one codec frame
#: 0.08 is not exact in binary: sums of steps may miss a call's time by a rounding error.
EPSILON = 1e-9


class Run:
    """A ``PacedFrames`` over numbered frames, recording what it hands out and when."""

    def __init__(self, total: int = 5, *, pause_on: int | None = None) -> None:
        self.clock = Clock()
        self.made: list[tuple[float, bytes]] = []
        self.finished: list[float] = []
        self.aborts = 0
        #: Pause from inside the write of this frame, as a transport whose buffer fills does.
        self.pause_on = pause_on
        self.pacer = PacedFrames(
            clock=self.clock,
            first_chunk_delay=FIRST,
            frame_interval=FRAME,
            frames=iter([b"frame %d" % i for i in range(total)]),
            total_frames=total,
            on_frame=self._frame,
            on_finish=lambda: self.finished.append(self.clock.seconds()),
            on_abort=self._abort,
        )

    def _frame(self, frame: bytes) -> None:
        self.made.append((self.clock.seconds(), frame))
        if len(self.made) == self.pause_on:
            self.pacer.pauseProducing()

    def _abort(self) -> None:
        self.aborts += 1

    def wait(self, seconds: float) -> None:
        """Move time on, running each call at its own time (and the calls those schedule)."""
        target = self.clock.seconds() + seconds
        while due := [c.getTime() for c in self.clock.getDelayedCalls()]:
            if min(due) > target + EPSILON:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        self.clock.advance(max(0.0, target - self.clock.seconds()))

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.made]

    def pending(self) -> int:
        return len(self.clock.getDelayedCalls())


def test_is_a_push_producer() -> None:
    verifyObject(IPushProducer, Run().pacer)


def test_no_frames_make_no_sense() -> None:
    with pytest.raises(ValueError, match="total_frames"):
        PacedFrames(
            clock=Clock(),
            first_chunk_delay=FIRST,
            frame_interval=FRAME,
            frames=iter([]),
            total_frames=0,
            on_frame=lambda frame: None,
            on_finish=lambda: None,
        )


def test_nothing_before_start() -> None:
    run = Run()
    run.wait(60)
    assert run.made == []
    assert run.pending() == 0


def test_first_frame_waits_the_first_chunk_delay() -> None:
    run = Run()
    run.pacer.start()
    run.wait(FIRST / 2)
    assert run.made == []
    run.wait(FIRST / 2)
    assert run.made == [(FIRST, b"frame 0")]


def test_one_frame_per_tick_in_order() -> None:
    run = Run(total=5)
    run.pacer.start()
    run.wait(FIRST)
    for n in range(2, 5):
        run.wait(FRAME / 2)
        assert len(run.made) == n - 1, "no frame between ticks"
        run.wait(FRAME / 2)
        assert len(run.made) == n
        assert run.pending() == 1, "only ever the next frame is scheduled"
    assert [f for _, f in run.made] == [b"frame 0", b"frame 1", b"frame 2", b"frame 3"]
    assert run.times == pytest.approx([FIRST + k * FRAME for k in range(4)])
    assert run.pacer.frames_made == 4


def test_pause_stops_frames_and_resume_goes_on_without_a_burst() -> None:
    run = Run(total=6)
    run.pacer.start()
    run.wait(FIRST + FRAME)
    assert len(run.made) == 2
    run.pacer.pauseProducing()
    run.pacer.pauseProducing()  # twice is once
    assert run.pending() == 0
    run.wait(60)
    assert len(run.made) == 2

    resumed = run.clock.seconds()
    run.pacer.resumeProducing()
    run.pacer.resumeProducing()  # twice is once: still one frame scheduled
    assert run.pending() == 1
    assert len(run.made) == 2, "no catching up on the time spent paused"
    run.wait(FRAME)
    run.wait(FRAME)
    assert run.times[2:] == pytest.approx([resumed + FRAME, resumed + 2 * FRAME])
    assert [f for _, f in run.made] == [b"frame %d" % i for i in range(4)]


def test_pause_from_inside_a_write_holds_the_next_frame() -> None:
    run = Run(total=4, pause_on=2)
    run.pacer.start()
    run.wait(FIRST + FRAME)
    assert len(run.made) == 2
    assert run.pacer.paused
    assert run.pending() == 0
    run.wait(60)
    run.pacer.resumeProducing()
    run.wait(FRAME)
    assert len(run.made) == 3


def test_pause_in_the_first_chunk_delay_restarts_it_on_resume() -> None:
    run = Run()
    run.pacer.start()
    run.wait(FIRST / 2)
    run.pacer.pauseProducing()
    assert run.pending() == 0
    run.wait(60)
    run.pacer.resumeProducing()
    run.wait(FIRST / 2)
    assert run.made == []
    run.wait(FIRST / 2)
    assert len(run.made) == 1


@pytest.mark.parametrize("how", ["stop", "stopProducing"])
def test_stop_cancels_the_next_frame_and_makes_no_more(how: str) -> None:
    run = Run(total=5)
    run.pacer.start()
    run.wait(FIRST + FRAME)
    getattr(run.pacer, how)()
    assert run.pending() == 0
    assert run.aborts == 1
    run.pacer.stop()  # again: nothing more to abort
    run.pacer.resumeProducing()
    run.pacer.pauseProducing()
    run.pacer.resumeProducing()
    run.wait(60)
    assert len(run.made) == 2
    assert (run.aborts, run.finished) == (1, [])
    assert run.pacer.stopped


def test_stop_in_the_first_chunk_delay() -> None:
    run = Run()
    run.pacer.start()
    run.pacer.stop()
    assert run.pending() == 0
    run.wait(60)
    assert (run.made, run.aborts) == ([], 1)


def test_stop_from_inside_the_last_write_is_no_finish() -> None:
    run = Run(total=1)
    run.pacer.on_frame = lambda frame: run.pacer.stop()  # the client left during the write
    run.pacer.start()
    run.wait(FIRST)
    run.wait(60)
    assert (run.pacer.frames_made, run.aborts, run.finished) == (1, 1, [])
    assert run.pending() == 0


def test_finish_once_right_after_the_last_frame() -> None:
    run = Run(total=3)
    run.pacer.start()
    run.wait(FIRST + FRAME)
    assert run.finished == []
    run.wait(FRAME)
    assert run.finished == [run.times[-1]]
    assert len(run.made) == 3
    assert run.pending() == 0

    # Once finished, nothing revives it and stopping is no abort.
    run.pacer.pauseProducing()
    run.pacer.resumeProducing()
    run.pacer.stopProducing()
    run.wait(60)
    assert (len(run.made), len(run.finished), run.aborts) == (3, 1, 0)


def test_a_single_frame_finishes_at_the_first_chunk_delay() -> None:
    run = Run(total=1)
    run.pacer.start()
    run.wait(FIRST)
    assert run.finished == [FIRST]
    assert run.pending() == 0
