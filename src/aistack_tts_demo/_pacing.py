"""Audio made one codec frame at a time on the injected clock, as the real model makes it.

Both the HTTP speech route and the WebSocket stream hand their frames out through a
``PacedFrames``, which is also the push producer their socket pauses and resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from attrs import define, field
from attrs.validators import ge
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


@implementer(IPushProducer)
@define(eq=False)
class PacedFrames:
    """Passes ``frames`` to ``on_frame`` one per tick: none while paused, none once stopped.

    The first frame comes ``first_chunk_delay`` after ``start``, each next one ``frame_interval``
    after the one before; ``on_finish`` is called once after the last frame. ``stop`` (or
    ``stopProducing``) before then calls ``on_abort``, once, instead.
    """

    clock: IReactorTime
    first_chunk_delay: float
    frame_interval: float
    frames: Iterator[bytes]
    total_frames: int = field(validator=ge(1))
    on_frame: Callable[[bytes], object]
    on_finish: Callable[[], object]
    on_abort: Callable[[], object] | None = None
    frames_made: int = field(default=0, init=False)
    paused: bool = field(default=False, init=False)
    #: Finished or stopped: no frame will be made any more.
    stopped: bool = field(default=False, init=False)
    _call: IDelayedCall | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Make the first frame ``first_chunk_delay`` from now."""
        # Scheduled even if already paused: the model is busy meanwhile; _tick checks the pause.
        self._schedule(self.first_chunk_delay)

    def stop(self) -> None:
        """Make no more frames; ``on_abort`` if some were still to come."""
        if self.stopped:
            return
        self.stopped = True
        self._cancel()
        if self.on_abort is not None:
            self.on_abort()

    def _schedule(self, delay: float) -> None:
        self._call = self.clock.callLater(delay, self._tick)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        self._call = None
        if self.stopped or self.paused:
            return
        frame = next(self.frames)
        self.frames_made += 1
        self.on_frame(frame)
        if self.stopped:
            return
        if self.frames_made >= self.total_frames:
            self.stopped = True
            self.on_finish()
        elif not self.paused:
            # on_frame's write may have paused us; resumeProducing schedules the next frame then.
            self._schedule(self.frame_interval)

    # IPushProducer, for the client's socket.

    def pauseProducing(self) -> None:
        """The client is not reading: make no more frames until it does."""
        self.paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        """The client drained its buffer: go on with the next frame, without catching up."""
        if not self.paused:
            return
        self.paused = False
        if not self.stopped and self._call is None:
            self._schedule(self.frame_interval if self.frames_made else self.first_chunk_delay)

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.stop()
