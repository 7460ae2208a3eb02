"""One unit of a streaming session's work, and the producer that paces it.

A step below ``aistack_tts_demo._stream``: a ``Unit`` is one TTS request of a session (an
utterance, or a sentence or clause of one) with its indexes, its pacer and its
``audio.start`` event; the session's ``Throttle`` passes its socket's pause and resume on to
the unit being made.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ._pacing import PacedFrames
from ._synth import CHANNELS, SAMPLE_RATE


@implementer(IPushProducer)
class Throttle:
    """The session's producer on its socket: passes pause and resume to the current unit."""

    def __init__(self) -> None:
        self.pacer: PacedFrames | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self.pacer is not None:
            self.pacer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.pacer is not None:
            self.pacer.resumeProducing()

    def stopProducing(self) -> None:
        if self.pacer is not None:
            self.pacer.stopProducing()


@define(eq=False)
class Unit:
    """One TTS request of the session (an utterance, or a sentence/clause of one)."""

    utterance_index: int
    sentence_index: int
    text: str
    response_format: str
    #: Streamed pcm: ``audio.start`` waits for the first chunk and names its rate.
    describe_pcm: bool
    streamed: bool
    pacer: PacedFrames | None = None
    start_sent: bool = False
    total_bytes: int = 0
    kept: list[bytes] = field(factory=list)

    def start_event(self, described: bool) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "audio.start",
            "utterance_index": self.utterance_index,
            "sentence_index": self.sentence_index,
            "sentence_text": self.text,
            "format": self.response_format,
        }
        if described:
            event.update(sample_rate=SAMPLE_RATE, channels=CHANNELS)
        return event
