"""``/v1/audio/speech/stream``: vLLM-Omni's streaming-text TTS over WebSocket, for the demo.

The client sends text as it has it; the server speaks each sentence as soon as it is complete::

    → {"type": "session.config", "voice": "Vivian", "response_format": "pcm"}
    → {"type": "input.text", "text": "Hello there. How"}   (any number of these)
    → {"type": "input.done"}                              (flush: the rest is the last sentence)
    ← {"type": "audio.start", "sentence_index": 0, "sentence_text": "Hello there.", ...}
    ← binary frames: 24 kHz mono 16-bit PCM, one 80 ms codec frame each, as they are made
    ← {"type": "audio.done", "sentence_index": 0}
    ← {"type": "session.done", "total_sentences": 2}
    → {"type": "session.close"}                           (or another utterance)

The connection outlives an utterance, as in vLLM-Omni; the server closes it on
``session.close``. Autobahn's ``WebSocketResource`` serves the protocol inside the demo's
twisted.web site; frames are paced on the injected clock and pause with the client's socket.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from ._pacing import PacedFrames
from ._synth import CHANNELS, FRAME_SECONDS, SAMPLE_RATE, VoiceProfile, synthesize

log = Logger(namespace="aistack_tts.demo")

STREAM_PATH = b"/v1/audio/speech/stream"
#: What vLLM-Omni allows for one text message (a session.config may carry reference audio).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# A sentence ends at . ! ? followed by white space (so "3.5" or "e.g.x" do not split), or at
# CJK full stops, which need none.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f\uff1b])\s*")


class StreamError(Exception):
    """A client message the session cannot use; sent back as ``{"type": "error"}``."""


@frozen
class StreamConfig:
    """A checked ``session.config``: how every sentence of the session is spoken."""

    voice: VoiceProfile
    speed: float = 1.0
    response_format: str = "pcm"


class SentenceSplitter:
    """Collects text and gives back each sentence once it is complete."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the sentences it completed."""
        self._buffer += text
        sentences = []
        while (match := _BOUNDARY.search(self._buffer)) is not None:
            sentence = self._buffer[: match.start()].strip()
            self._buffer = self._buffer[match.end() :]
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> list[str]:
        """The text left over, as a last sentence (if there is any)."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    @property
    def pending(self) -> bool:
        """Whether text is waiting for the end of its sentence."""
        return bool(self._buffer.strip())


@frozen
class StreamSettings:
    """What every session of one demo upstream shares."""

    clock: IReactorTime
    first_chunk_delay: float
    frame_interval: float
    #: Checks a ``session.config`` message; raises L{StreamError}.
    parse_config: Callable[[Mapping[str, Any]], StreamConfig]


@implementer(IPushProducer)
class _Throttle:
    """The session's producer on its socket: passes pause and resume to the current sentence."""

    def __init__(self) -> None:
        self.sentence: PacedFrames | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self.sentence is not None:
            self.sentence.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.sentence is not None:
            self.sentence.resumeProducing()

    def stopProducing(self) -> None:
        if self.sentence is not None:
            self.sentence.stopProducing()


class SpeechStreamProtocol(WebSocketServerProtocol):
    """One streaming-text session: text in, a sentence of audio out as soon as it is complete."""

    factory: SpeechStreamFactory

    def __init__(self) -> None:
        super().__init__()
        self._config: StreamConfig | None = None
        self._splitter = SentenceSplitter()
        # Sentences to speak, and None where an input.done ends an utterance.
        self._queue: deque[str | None] = deque()
        #: The sentence being spoken (its index is ``_sentence_index``).
        self._sentence: PacedFrames | None = None
        self._throttle = _Throttle()
        self._utterance_index = 0
        self._sentence_index = 0
        self._ended = False

    @property
    def _settings(self) -> StreamSettings:
        return self.factory.settings

    def onOpen(self) -> None:
        """Handshake done: take the socket's producer place (see L{stream_resource})."""
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self._throttle, True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """One client message: JSON text only."""
        if self._ended:
            return
        try:
            if isBinary:
                raise StreamError("binary messages are not accepted; send JSON text messages")
            self._handle(_parse_message(payload))
        except StreamError as e:
            self._send_event({"type": "error", "message": str(e)})
            if self._config is None:
                # Without a config there is no session to keep.
                self._close()

    def _handle(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "session.config":
            if self._splitter.pending or self._queue or self._sentence is not None:
                raise StreamError(
                    "session.config cannot be applied while an utterance is in progress; "
                    "send input.done first"
                )
            self._config = self._settings.parse_config(message)
        elif self._config is None:
            raise StreamError(f"Expected session.config, got: {kind}")
        elif kind == "input.text":
            text = message.get("text", "")
            if not isinstance(text, str):
                raise StreamError("input.text requires a string value")
            self._queue.extend(self._splitter.feed(text))
            self._next()
        elif kind == "input.done":
            self._queue.extend(self._splitter.flush())
            self._queue.append(None)
            self._next()
        elif kind == "session.close":
            self._close()
        else:
            raise StreamError(f"Unknown message type: {kind}")

    def _next(self) -> None:
        """Start on the next sentence (or end the utterance) unless one is being spoken."""
        while self._sentence is None and self._queue and not self._ended:
            text = self._queue.popleft()
            if text is None:
                self._send_event(
                    {
                        "type": "session.done",
                        "utterance_index": self._utterance_index,
                        "total_sentences": self._sentence_index,
                    }
                )
                self._utterance_index += 1
                self._sentence_index = 0
                continue
            assert self._config is not None
            renderer = synthesize(text, self._config.voice, self._config.speed)
            sentence = PacedFrames(
                clock=self._settings.clock,
                first_chunk_delay=self._settings.first_chunk_delay,
                frame_interval=self._settings.frame_interval,
                frames=renderer.frames(),
                total_frames=renderer.total_frames,
                on_frame=self._send_audio,
                on_finish=self._sentence_done,
            )
            self._send_event(
                {
                    "type": "audio.start",
                    "utterance_index": self._utterance_index,
                    "sentence_index": self._sentence_index,
                    "sentence_text": text,
                    "format": self._config.response_format,
                    "sample_rate": SAMPLE_RATE,
                    "channels": CHANNELS,
                }
            )
            self._sentence = self._throttle.sentence = sentence
            if self._throttle.paused:
                sentence.pauseProducing()
            sentence.start()

    def _sentence_done(self) -> None:
        sentence, self._sentence = self._sentence, None
        assert sentence is not None
        self._throttle.sentence = None
        self._send_event(
            {
                "type": "audio.done",
                "utterance_index": self._utterance_index,
                "sentence_index": self._sentence_index,
            }
        )
        log.info(
            "speech stream sentence {index} generated: {frames} frames ({seconds:.2f} s)",
            index=self._sentence_index,
            frames=sentence.frames_made,
            seconds=sentence.frames_made * FRAME_SECONDS,
        )
        self._sentence_index += 1
        self._next()

    def _send_audio(self, frame: bytes) -> None:
        self.sendMessage(frame, isBinary=True)  # type: ignore[no-untyped-call]

    def _send_event(self, event: Mapping[str, Any]) -> None:
        self.sendMessage(json.dumps(event).encode("utf-8"), isBinary=False)  # type: ignore[no-untyped-call]

    def _close(self) -> None:
        self._stop_work()
        self._ended = True
        self.sendClose(1000)

    def _stop_work(self) -> tuple[int, int] | None:
        """Drop what is queued and stop the sentence being spoken; what was under way, if any."""
        sentence, self._sentence = self._sentence, None
        self._throttle.sentence = None
        pending = bool(self._queue) or self._splitter.pending
        self._queue.clear()
        self._splitter.flush()
        if sentence is not None:
            sentence.stop()
            return self._sentence_index, sentence.frames_made
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


def _parse_message(payload: bytes) -> Mapping[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise StreamError("WebSocket message too large")
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StreamError("Invalid JSON message") from None
    if not isinstance(message, dict):
        raise StreamError("WebSocket messages must be JSON objects")
    return message


class SpeechStreamFactory(WebSocketServerFactory):
    """Builds a L{SpeechStreamProtocol} per connection, sharing one L{StreamSettings}."""

    protocol = SpeechStreamProtocol  # type: ignore[assignment]

    def __init__(self, settings: StreamSettings) -> None:
        super().__init__(reactor=settings.clock)  # type: ignore[no-untyped-call]
        self.settings = settings
        self.setProtocolOptions(  # type: ignore[no-untyped-call]
            maxMessagePayloadSize=MAX_MESSAGE_BYTES, maxFramePayloadSize=MAX_MESSAGE_BYTES
        )


def stream_resource(settings: StreamSettings) -> IResource:
    """Autobahn's WebSocket resource for ``/v1/audio/speech/stream``.

    Autobahn takes the connection from twisted.web's HTTP channel by swapping the transport's
    protocol, but the channel stays registered as the transport's producer; each session
    frees that place in ``onOpen`` so its own backpressure reaches the socket.
    """
    resource: IResource = WebSocketResource(SpeechStreamFactory(settings))  # type: ignore[no-untyped-call]
    return resource


class DemoRoot(Resource):
    """The demo's root: WebSocket upgrades of the stream path to autobahn, the rest to Klein."""

    isLeaf = True

    def __init__(self, routes: IResource, stream: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes
        self._stream = stream

    def render(self, request: IRequest) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.path == STREAM_PATH and b"websocket" in upgrade:
            return self._stream.render(request)
        return self._routes.render(request)
