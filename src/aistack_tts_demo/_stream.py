"""``/v1/audio/speech/stream``: vLLM-Omni's streaming-text TTS over WebSocket, for the demo.

As ``serving_speech_stream.py`` has it, text is buffered until ``input.done`` and spoken as one
utterance, answered with one binary message (the whole file, wav by default)::

    → {"type": "session.config", "voice": "Vivian"}
    → {"type": "input.text", "text": "Hello there. How"}   (any number of these)
    → {"type": "input.done"}                              (flush: one utterance)
    ← {"type": "audio.start", "utterance_index": 0, "sentence_index": 0,
       "sentence_text": "Hello there. How", "format": "wav"}
    ← one binary message: the utterance's wav
    ← {"type": "audio.done", ..., "total_bytes": 61484, "error": false}
    ← {"type": "session.done", "utterance_index": 0, "total_sentences": 1}
    → {"type": "session.close"}                           (or another utterance)

``split_granularity`` ``"sentence"``/``"clause"`` speaks each unit as soon as it is complete;
``stream_audio: true`` (pcm only) sends the audio in vLLM-Omni's chunks as it is made, with
``audio.start`` naming ``sample_rate``/``channels`` when the first chunk is ready. Messages
are handled one at a time, as the real handler's receive loop does: one that arrives while
audio is being made waits. The session ends after 10 s without a config or 30 s without a
message. Autobahn's ``WebSocketResource`` serves the protocol inside the demo's twisted.web
site; frames are paced on the injected clock and pause with the client's socket.

The session's step: below it ``_stream_config`` (messages, config, text splitting) and
``_stream_unit`` (one unit of work, the throttle); above it ``_app``, whose root mounts it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from attrs import frozen
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from pydantic import ValidationError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource

from ._encode import encode
from ._pacing import PacedFrames
from ._stream_config import (
    CONFIG_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_FRAME_BYTES,
    SpeechTextSplitter,
    StreamConfig,
    StreamError,
    parse_message,
)
from ._stream_unit import Throttle, Unit
from ._synth import FRAME_SECONDS, synthesize

if TYPE_CHECKING:
    from ._speech import SpeechRequest

log = Logger(namespace="aistack_tts_demo")

STREAM_PATH = b"/v1/audio/speech/stream"
#: vLLM-Omni's chunks: the first codec frame alone, then ``chunk_frames`` at a time.
INITIAL_CHUNK_FRAMES = 1


@frozen
class StreamSettings:
    """What every session of one demo upstream shares."""

    clock: IReactorTime
    first_chunk_delay: float
    frame_interval: float
    #: Checks a ``session.config`` message; raises ``StreamError``.
    parse_config: Callable[[Mapping[str, Any]], StreamConfig]
    #: The speech request of one utterance (voice, language, task checked); raises
    #: ``StreamError`` with vLLM-Omni's message, which the session reports as a failed generation.
    prepare: Callable[[StreamConfig, str], SpeechRequest]
    chunk_frames: int = 25
    idle_timeout: float = IDLE_TIMEOUT
    config_timeout: float = CONFIG_TIMEOUT


class SpeechStreamProtocol(WebSocketServerProtocol):
    """One streaming-text session, handling its messages one at a time as vLLM-Omni does."""

    factory: SpeechStreamFactory

    def __init__(self) -> None:
        super().__init__()
        self._config: StreamConfig | None = None
        self._splitter = SpeechTextSplitter()
        self._utterance_open = False
        self._utterance_index = 0
        self._sentence_index = 0
        #: Messages not handled yet, and the work the handled ones still ask for.
        self._inbox: deque[tuple[bytes, bool]] = deque()
        self._jobs: deque[Callable[[], None]] = deque()
        self._unit: Unit | None = None
        self._throttle = Throttle()
        self._timer: IDelayedCall | None = None
        self._pumping = False
        self._ended = False

    @property
    def _settings(self) -> StreamSettings:
        return self.factory.settings

    def onOpen(self) -> None:
        """Handshake done: take the socket's producer place (see ``stream_resource``)."""
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self._throttle, True)
        self._pump()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """A client message: handled once those before it (and their audio) are done."""
        if self._ended:
            return
        self._disarm()
        self._inbox.append((payload, isBinary))
        self._pump()

    # --- the receive loop -------------------------------------------------------------------

    def _pump(self) -> None:
        """Handle queued work and messages until audio is being made or nothing is left."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._ended and self._unit is None:
                if self._jobs:
                    self._jobs.popleft()()
                elif self._inbox:
                    self._receive(*self._inbox.popleft())
                else:
                    self._arm()
                    break
        finally:
            self._pumping = False

    def _arm(self) -> None:
        """Wait for the next message: 10 s for the config, 30 s after it."""
        if self._timer is None:
            wait = (
                self._settings.config_timeout
                if self._config is None
                else self._settings.idle_timeout
            )
            self._timer = self._settings.clock.callLater(wait, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._config is None:
            self._error("Timeout waiting for session.config")
        else:
            self._error("Idle timeout: no message received")
        self._close()

    def _receive(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            # Starlette's receive_text() fails on a bytes message: the handler's catch-all.
            self._error("Internal error: 'text'")
            self._close()
            return
        try:
            message = parse_message(payload.decode("utf-8"))
            self._handle(message)
        except StreamError as e:
            self._error(str(e))
            if self._config is None:
                # No session yet (a bad or missing config): the handler returns, closing.
                self._close()

    def _handle(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "session.config":
            if self._utterance_open:
                self._error(
                    "session.config cannot be applied while an utterance is in progress; "
                    "send input.done first"
                )
                return
            self._config = self._settings.parse_config(message)
            self._splitter = SpeechTextSplitter(self._config.split_granularity)
        elif self._config is None:
            raise StreamError(f"Expected session.config, got: {kind}")
        elif kind == "input.text":
            text = message.get("text", "")
            if not isinstance(text, str):
                self._error("input.text requires a string value")
                return
            if text:
                self._utterance_open = True
            self._queue_units(self._config, self._splitter.feed(text))
        elif kind == "input.done":
            self._queue_units(self._config, self._splitter.flush())
            done = {
                "type": "session.done",
                "utterance_index": self._utterance_index,
                "total_sentences": self._sentence_index,
            }
            self._jobs.append(lambda: self._send_event(done))
            self._utterance_index += 1
            self._sentence_index = 0
            self._utterance_open = False
        elif kind == "session.close":
            self._close()
        else:
            self._error(f"Unknown message type: {kind}")

    def _queue_units(self, config: StreamConfig, texts: list[str]) -> None:
        for text in texts:
            unit = Unit(
                utterance_index=self._utterance_index,
                sentence_index=self._sentence_index,
                text=text,
                response_format=config.response_format,
                describe_pcm=config.stream_audio and config.response_format == "pcm",
                streamed=config.stream_audio,
            )
            self._jobs.append(partial(self._generate, config, unit))
            self._sentence_index += 1

    # --- one unit ---------------------------------------------------------------------------

    def _generate(self, config: StreamConfig, unit: Unit) -> None:
        if config.word_timestamps:
            self._error(
                "word_timestamps=true but the server was launched without --forced-aligner; "
                "either restart the server with that flag or set word_timestamps=false in "
                "session.config."
            )
            return
        try:
            config.check_speech_request(unit.text)
        except ValidationError as e:
            # Built before the real handler's try: its catch-all ends the session.
            self._error(f"Internal error: {e}")
            self._close()
            return
        self._unit = unit
        if not unit.describe_pcm:
            self._send_start(unit)
        try:
            speech = self._settings.prepare(config, unit.text)
        except StreamError as e:
            self._unit_done(unit, failure=str(e))
            return
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        unit.pacer = PacedFrames(
            clock=self._settings.clock,
            first_chunk_delay=self._settings.first_chunk_delay,
            frame_interval=self._settings.frame_interval,
            frames=renderer.frames(),
            total_frames=renderer.total_frames,
            on_frame=lambda frame: self._frame(unit, frame),
            on_finish=lambda: self._finished(unit),
        )
        self._throttle.pacer = unit.pacer
        if self._throttle.paused:
            unit.pacer.pauseProducing()
        unit.pacer.start()

    def _send_start(self, unit: Unit) -> None:
        if not unit.start_sent:
            unit.start_sent = True
            self._send_event(unit.start_event(unit.describe_pcm and unit.total_bytes > 0))

    def _frame(self, unit: Unit, frame: bytes) -> None:
        unit.kept.append(frame)
        assert unit.pacer is not None
        made = unit.pacer.frames_made
        if unit.streamed and (
            made == INITIAL_CHUNK_FRAMES or len(unit.kept) >= self._settings.chunk_frames
        ):
            self._send_chunk(unit)

    def _send_chunk(self, unit: Unit) -> None:
        chunk = b"".join(unit.kept)
        unit.kept.clear()
        unit.total_bytes += len(chunk)
        self._send_start(unit)
        self.sendMessage(chunk, isBinary=True)  # type: ignore[no-untyped-call]

    def _finished(self, unit: Unit) -> None:
        assert unit.pacer is not None
        log.info(
            "speech stream sentence {index} generated: {frames} frames ({seconds:.2f} s)",
            index=unit.sentence_index,
            frames=unit.pacer.frames_made,
            seconds=unit.pacer.frames_made * FRAME_SECONDS,
        )
        if unit.streamed:
            if unit.kept:
                self._send_chunk(unit)
        else:
            body = encode(b"".join(unit.kept), unit.response_format)
            unit.kept.clear()
            unit.total_bytes = len(body)
            self.sendMessage(body, isBinary=True)  # type: ignore[no-untyped-call]
        self._unit_done(unit)
        self._pump()

    def _unit_done(self, unit: Unit, failure: str | None = None) -> None:
        """``audio.done`` (after ``audio.start``, and the error if generation failed)."""
        self._send_start(unit)
        if failure is not None:
            self._error(
                f"Generation failed for utterance {unit.utterance_index}, "
                f"sentence {unit.sentence_index}: {failure}"
            )
        self._send_event(
            {
                "type": "audio.done",
                "utterance_index": unit.utterance_index,
                "sentence_index": unit.sentence_index,
                "total_bytes": unit.total_bytes,
                "error": failure is not None,
            }
        )
        self._unit = self._throttle.pacer = None

    # --- the end ----------------------------------------------------------------------------

    def _error(self, message: str) -> None:
        self._send_event({"type": "error", "message": message})

    def _send_event(self, event: Mapping[str, Any]) -> None:
        # Starlette's send_json: compact separators, non-ASCII text as it is.
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        self.sendMessage(text.encode("utf-8"), isBinary=False)  # type: ignore[no-untyped-call]

    def _close(self) -> None:
        self._stop_work()
        self._ended = True
        self.sendClose(1000)

    def _stop_work(self) -> tuple[int, int] | None:
        """Drop what is queued and stop the unit being made; what was under way, if any."""
        self._disarm()
        unit, self._unit = self._unit, None
        self._throttle.pacer = None
        pending = bool(self._jobs) or bool(self._inbox)
        self._jobs.clear()
        self._inbox.clear()
        if unit is not None:
            # Still the current unit: not finished (the socket may have stopped its pacer).
            if unit.pacer is None:
                return unit.sentence_index, 0
            unit.pacer.stop()
            return unit.sentence_index, unit.pacer.frames_made
        return (self._sentence_index, 0) if pending else None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """The connection ended: stop generating for a client that is gone."""
        self._ended = True
        stopped = self._stop_work()
        if stopped is not None:
            index, frames = stopped
            log.info(
                "speech stream aborted: the client left (close code {code}) "
                "after {frames} frames of sentence {index}",
                code=code,
                frames=frames,
                index=index,
                clean=wasClean,
            )


class SpeechStreamFactory(WebSocketServerFactory):
    """Builds a ``SpeechStreamProtocol`` per connection, sharing one ``StreamSettings``."""

    protocol = SpeechStreamProtocol  # type: ignore[assignment]

    def __init__(self, settings: StreamSettings) -> None:
        super().__init__(reactor=settings.clock)  # type: ignore[no-untyped-call]
        self.settings = settings
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=MAX_FRAME_BYTES, maxFramePayloadSize=MAX_FRAME_BYTES
        )


def stream_resource(settings: StreamSettings) -> IResource:
    """Autobahn's WebSocket resource for ``/v1/audio/speech/stream``.

    Autobahn takes the connection from twisted.web's HTTP channel by swapping the transport's
    protocol, but the channel stays registered as the transport's producer; each session
    frees that place in ``onOpen`` so its own backpressure reaches the socket.
    """
    resource: IResource = WebSocketResource(SpeechStreamFactory(settings))  # type: ignore[no-untyped-call]
    return resource
