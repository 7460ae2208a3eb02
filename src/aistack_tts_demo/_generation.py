"""One utterance made on the clock: the answer of ``POST /v1/audio/speech``, frame by frame.

The step after the speech request: a ``Generation`` renders the voice one codec frame at a
time on the injected clock, like the real model does on its GPU, and writes it to the request
whole, streamed as raw audio, or as server-sent events.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from itertools import islice
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from ._encode import CONTENT_TYPES, StreamResampler, encode
from ._pacing import PacedFrames
from ._speech import SpeechRequest, usage, usage_headers
from ._synth import FRAME_SECONDS, synthesize, wav_header

log = Logger(namespace="aistack_tts_demo")

#: vLLM-Omni's deploy config: the first chunk is one codec frame, then 25 (2 s) at a time.
INITIAL_CHUNK_FRAMES = 1
CHUNK_FRAMES = 25


def _sse_event(payload: Mapping[str, Any]) -> bytes:
    """One event as vLLM-Omni sends it: an ``event:`` line and a ``data:`` line.

    The JSON is compact (``json.dumps(..., separators=(",", ":"))`` in
    ``_generate_audio_sse_events``, ``serving_speech.py`` @ 1a48fce52460).
    """
    name = str(payload["type"]).encode()
    data = json.dumps(payload, separators=(",", ":")).encode()
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


class Generation:
    """One utterance being made, a frame at a time by a ``PacedFrames``.

    Streamed, frames go out in vLLM-Omni's chunks: the first codec frame alone (behind the
    WAV header, which is a write, or an SSE delta, of its own), then ``chunk_frames`` at a
    time, the last chunk whatever is left. Otherwise the frames are kept and the whole file,
    encoded, is the result of ``start()``'s Deferred. Generation stops at the request's
    codec-frame budget (``max_new_tokens``), as the model's does, and the audio is resampled
    to the requested ``sample_rate``.
    """

    def __init__(
        self,
        request: Request,
        speech: SpeechRequest,
        *,
        clock: IReactorTime,
        first_chunk_delay: float,
        frame_interval: float,
        chunk_frames: int = CHUNK_FRAMES,
    ) -> None:
        self._request = request
        self._speech = speech
        self._chunk_frames = chunk_frames
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        self.total_frames = min(renderer.total_frames, speech.max_frames)
        self._resampler = StreamResampler(speech.sample_rate)
        self._pacer = PacedFrames(
            clock=clock,
            first_chunk_delay=first_chunk_delay,
            frame_interval=frame_interval,
            frames=islice(renderer.frames(), self.total_frames),
            total_frames=self.total_frames,
            on_frame=self._frame,
            on_finish=self._complete,
            on_abort=self._aborted,
        )
        self._kept: list[bytes] = []
        self._done: Deferred[bytes | None] = Deferred(self._cancelled)

    def start(self) -> Deferred[bytes | None]:
        """Begin after the first-chunk delay; fires when the answer is complete."""
        self._request.notifyFinish().addErrback(self._client_gone)
        if self._speech.stream:
            if self._speech.sse:
                self._request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            else:
                content_type = CONTENT_TYPES[self._speech.response_format]
                self._request.setHeader(b"content-type", content_type)
            self._request.registerProducer(self._pacer, True)
        self._pacer.start()
        return self._done

    def _frame(self, frame: bytes) -> None:
        self._kept.append(frame)
        if not self._speech.stream:
            return
        made = self._pacer.frames_made
        if made == INITIAL_CHUNK_FRAMES or len(self._kept) >= self._chunk_frames:
            self._emit_kept(first=made == len(self._kept))

    def _emit_kept(self, first: bool) -> None:
        data = self._resampler.process(b"".join(self._kept))
        self._kept.clear()
        if first and self._speech.response_format == "wav":
            # _generate_audio_chunks yields the header on its own, before the first audio.
            self._write(wav_header(None, self._speech.sample_rate))
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._speech.sse:
            delta = {
                "type": "speech.audio.delta",
                "audio": base64.b64encode(data).decode("ascii"),
                "response_format": self._speech.response_format,
            }
            data = _sse_event(delta)
        self._request.write(data)

    def _complete(self) -> None:
        frames_made = self._pacer.frames_made
        log.info(
            "speech generated: {frames} frames ({seconds:.2f} s of audio) in voice {voice}",
            frames=frames_made,
            seconds=frames_made * FRAME_SECONDS,
            voice=self._speech.voice.name,
        )
        if not self._speech.stream:
            body = encode(
                b"".join(self._kept), self._speech.response_format, self._speech.sample_rate
            )
            self._kept.clear()
            content_type = CONTENT_TYPES[self._speech.response_format]
            self._request.setHeader(b"content-type", content_type)
            self._request.setHeader(b"content-length", b"%d" % len(body))
            for name, value in usage_headers(self._speech, frames_made).items():
                self._request.setHeader(name, value)
            self._done.callback(body)
            return
        if self._kept:
            self._emit_kept(first=False)
        if self._speech.sse:
            done = {"type": "speech.audio.done", "usage": usage(self._speech, frames_made)}
            self._request.write(_sse_event(done))
        self._request.unregisterProducer()
        self._done.callback(None)

    def _aborted(self) -> None:
        self._kept.clear()
        log.info(
            "speech generation aborted: {why} after {frames} frames",
            why="client disconnected",
            frames=self._pacer.frames_made,
            total_frames=self.total_frames,
            voice=self._speech.voice.name,
        )

    def _client_gone(self, reason: Failure) -> None:
        self._pacer.stop()

    def _cancelled(self, d: Deferred[bytes | None]) -> None:
        # Klein cancels the route's Deferred when the client leaves; nothing more to say then.
        self._pacer.stop()
