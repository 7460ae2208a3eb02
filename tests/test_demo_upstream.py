"""The demo upstream: a stand-in for vLLM-Omni serving Qwen3-TTS, driven on a fake clock.

HTTP-level behaviour goes through treq's in-memory agent; disconnects and backpressure through
the demo's own Site on a StringTransport, where the test plays the TCP transport.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import struct
import wave
from array import array
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import pytest
import soundfile
import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Site
from zope.interface import implementer

import aistack_tts.demo
from aistack_tts.demo import VOICES, APIError, DemoUpstream, listen_demo
from aistack_tts.demo._encode import encode
from aistack_tts.demo._plugin import DemoSettings, Options, make_demo_service
from aistack_tts.demo._profiles import BUILTIN_PROFILES
from aistack_tts.demo._synth import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    STREAMING_SIZE,
    synthesize,
    wav_header,
)
from aistack_tts.demo._voices import MAX_VOICE_SAMPLE_BYTES, parse_voice_upload

T = TypeVar("T")

BASE = "http://demo.invalid"
TEXT = "Hello there, this is a test of the demo upstream."
FIRST = 0.1
RTF = 0.5
FRAME_INTERVAL = RTF * FRAME_SAMPLES / SAMPLE_RATE
ABORTED = "speech generation aborted: client disconnected"
BOUNDARY = "demo-boundary-7d3f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
VIVIAN = BUILTIN_PROFILES[0]


# --- helpers -------------------------------------------------------------------------------


def result_of(d: Deferred[T]) -> T:
    """The result a Deferred already has (its failure is raised)."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, f"{d!r} has no result yet"
    return results[0]


def has_result(d: Deferred[Any]) -> bool:
    """Whether ``d`` has fired (and is not waiting on another Deferred); its result is kept."""
    seen: list[object] = []

    def look(result: object) -> object:
        seen.append(result)
        return result

    d.addBoth(look)
    return bool(seen)


def generation_steps(clock: Clock) -> list[DelayedCall]:
    """The generation steps waiting on the clock."""
    return [
        c
        for c in clock.getDelayedCalls()
        if isinstance(c, DelayedCall) and getattr(c.func, "__name__", "") == "_tick"
    ]


def advance(clock: Clock, seconds: float) -> None:
    """Move time on, running each call falling due on the way (and the calls those schedule).

    ``Clock.advance`` alone runs only what was due when it moved, so a frame scheduled by a
    frame made during a long jump would wait for the next advance.
    """
    target = clock.seconds() + seconds
    while due := [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]:
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, target - clock.seconds()))


def run_generation(clock: Clock) -> None:
    """Run every generation step until none is left."""
    while steps := generation_steps(clock):
        clock.advance(max(0.0, min(c.getTime() for c in steps) - clock.seconds()))


def samples_of(pcm: bytes) -> list[int]:
    values = array("h")
    values.frombytes(pcm)
    return values.tolist()


def rms(values: list[int]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def voiced_window(values: list[int], size: int = 1200) -> list[int]:
    """A stretch from inside the first syllable, past its attack."""
    onset = next(i for i, v in enumerate(values) if abs(v) > 300)
    start = onset + SAMPLE_RATE // 30
    return values[start : start + size]


def periodicity(window: list[int]) -> tuple[float, float]:
    """Best normalised autocorrelation over speaking pitches, and the pitch (Hz) it is at."""
    energy = sum(v * v for v in window)
    best, best_lag = -1.0, 1
    for lag in range(SAMPLE_RATE // 400, SAMPLE_RATE // 70):
        products = sum(window[i] * window[i + lag] for i in range(len(window) - lag))
        c = products / (energy * (len(window) - lag) / len(window))
        if c > best:
            best, best_lag = c, lag
    return best, SAMPLE_RATE / best_lag


def zero_crossing_rate(window: list[int]) -> float:
    crossings = sum(1 for a, b in itertools.pairwise(window) if (a < 0) != (b < 0))
    return crossings / (len(window) - 1)


def read_wav(data: bytes) -> tuple[tuple[int, int, int, int], bytes]:
    """(rate, channels, sample width, frames in the header) and the samples, via stdlib wave."""
    with wave.open(io.BytesIO(data), "rb") as reader:
        params = (
            reader.getframerate(),
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getnframes(),
        )
        return params, reader.readframes(1 << 30)


def duration(wav: bytes) -> float:
    return len(read_wav(wav)[1]) / 2 / SAMPLE_RATE


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body; each is an ``event:`` line naming it and a ``data:`` line."""
    events = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            event_line, data_line = block.split("\n")
            assert data_line.startswith("data: "), block
            event = json.loads(data_line[len("data: ") :])
            assert event_line == f"event: {event['type']}"
            events.append(event)
    return events


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP body, as much of it as has arrived."""
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def multipart(
    fields: Mapping[str, str],
    sample: bytes | None,
    filename: str = "me.wav",
    content_type: str = "audio/wav",
) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    if sample is not None:
        parts.append(
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; "
            f'name="audio_sample"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + sample
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def silent_wav(seconds: float) -> bytes:
    """A WAV file of ``seconds`` of silence (24 kHz mono 16-bit)."""
    data = bytes(2 * round(seconds * SAMPLE_RATE))
    return wav_header(len(data)) + data


def check_error(response: IResponse, body: bytes, status: int) -> dict[str, Any]:
    """``body`` is vLLM's error shape for ``status``, with an integer code."""
    assert response.code == status
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert type(error["code"]) is int
    assert error["code"] == status
    return error


@contextmanager
def captured_logs() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def messages(events: list[LogEvent], prefix: str) -> list[LogEvent]:
    return [e for e in events if (formatEvent(e) or "").startswith(prefix)]


@implementer(IBodyProducer)
class _Body:
    """A request body written at once (the in-memory agent needs no pacing)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Demo:
    """A L{DemoUpstream} behind treq's in-memory agent; time moves only when the test says."""

    def __init__(
        self, first_chunk_delay: float = FIRST, rtf: float = RTF, chunk_frames: int = 25
    ) -> None:
        self.clock = Clock()
        self.upstream = DemoUpstream(
            reactor=self.clock,
            first_chunk_delay=first_chunk_delay,
            rtf=rtf,
            chunk_frames=chunk_frames,
        )
        self.agent = RequestTraversalAgent(self.upstream.resource())
        self.client = HTTPClient(self.agent, data_to_body_producer=_Body)

    def flush(self) -> None:
        """Move the bytes written so far between client and server."""
        self.agent.flush()

    def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> Deferred[IResponse]:
        headers: dict[bytes | str, bytes | str] = {"Content-Type": content_type}
        d = self.client.post(BASE + path, data=body, headers=headers, unbuffered=True)
        self.flush()
        return cast("Deferred[IResponse]", d)

    def speech(self, **fields: Any) -> Deferred[IResponse]:
        return self.post("/v1/audio/speech", json.dumps(fields).encode())

    def get(self, path: str) -> Deferred[IResponse]:
        d = self.client.get(BASE + path, unbuffered=True)
        self.flush()
        return cast("Deferred[IResponse]", d)

    def delete(self, path: str) -> Deferred[IResponse]:
        d = self.client.delete(BASE + path, unbuffered=True)
        self.flush()
        return cast("Deferred[IResponse]", d)

    def finish(self, d: Deferred[IResponse]) -> tuple[IResponse, bytes]:
        """Let generation run to its end: the response and its whole body."""
        run_generation(self.clock)
        self.flush()
        response = result_of(d)
        body = treq.content(response)
        self.flush()
        return response, result_of(body)

    def audio(self, **fields: Any) -> bytes:
        """The body of a successful speech request."""
        response, body = self.finish(self.speech(**fields))
        assert response.code == 200, body
        return body

    def error(self, d: Deferred[IResponse], status: int) -> dict[str, Any]:
        response, body = self.finish(d)
        return check_error(response, body, status)


class Wire:
    """The demo's Site on a StringTransport; the test plays the client's TCP connection.

    Streamed chunks are one codec frame each here (``chunk_frames=1``), so each tick shows.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.upstream = DemoUpstream(
            reactor=self.clock, first_chunk_delay=FIRST, rtf=RTF, chunk_frames=1
        )
        protocol = self.upstream.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        assert protocol is not None
        self.protocol = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        # The HTTP channel registers with its transport, as on a real TCP connection.
        network = self.transport.producer
        assert network is not None
        self.network: IPushProducer = network

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def speech(self, **fields: Any) -> None:
        body = json.dumps(fields).encode()
        self.send(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: demo\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )

    def received(self) -> bytes:
        data: bytes = self.transport.value()
        return data

    def audio_received(self) -> bytes:
        head, _, body = self.received().partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        return dechunk(body)

    def lose(self) -> None:
        """The client's connection drops, reported the way a TCP transport reports it."""
        producer = self.transport.producer
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(Failure(ConnectionDone()))


# --- the audio -----------------------------------------------------------------------------


def test_wav_is_24k_mono_16bit_with_a_complete_header() -> None:
    """Not streamed, the answer is a whole WAV: exact sizes, Content-Length, 24 kHz mono s16."""
    demo = Demo()
    response, body = demo.finish(demo.speech(input=TEXT, voice="Vivian"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert response.length == len(body)
    (rate, channels, width, frames), pcm = read_wav(body)
    assert (rate, channels, width) == (24000, 1, 2)
    assert frames * 2 == len(pcm)
    assert len(body) == 44 + len(pcm)
    riff_size, data_size = struct.unpack("<I", body[4:8])[0], struct.unpack("<I", body[40:44])[0]
    assert (riff_size, data_size) == (len(body) - 8, len(pcm))
    # Whole 80 ms codec frames, about a fifth of a second per syllable.
    assert len(pcm) % FRAME_BYTES == 0
    assert 1.5 < frames / 24000 < 6.0


def test_duration_follows_text_length_and_speed() -> None:
    """Twice the text is about twice as long; speed 2 is half as long, 0.5 twice as long."""
    demo = Demo()
    once = duration(demo.audio(input=TEXT))
    twice = duration(demo.audio(input=f"{TEXT} {TEXT}"))
    assert twice / once == pytest.approx(2.0, abs=0.15)
    # Each length is padded up to whole 80 ms frames: allow that on both sides.
    padding = 2 * FRAME_SAMPLES / SAMPLE_RATE
    assert duration(demo.audio(input=TEXT, speed=2.0)) == pytest.approx(once / 2, abs=padding)
    assert duration(demo.audio(input=TEXT, speed=0.5)) == pytest.approx(once * 2, abs=padding)
    assert duration(demo.audio(input="Hi.")) < once / 3


def test_voice_is_neither_silence_nor_noise() -> None:
    """Loud enough, and periodic like a voice: strong pitch autocorrelation, few crossings."""
    values = samples_of(read_wav(Demo().audio(input=TEXT, voice="ryan"))[1])
    assert rms(values) > 1000
    window = voiced_window(values)
    correlation, pitch = periodicity(window)
    assert correlation > 0.6
    assert 70 < pitch < 400
    # White noise crosses zero about every other sample.
    assert zero_crossing_rate(window) < 0.2


def test_voices_differ() -> None:
    """Each of the nine speakers sounds different; a deep voice has a lower pitch."""
    demo = Demo()
    bodies = {voice: demo.audio(input="Good morning.", voice=voice) for voice in VOICES}
    assert len(set(bodies.values())) == 9
    vivian, uncle_fu = (
        periodicity(voiced_window(samples_of(read_wav(bodies[voice])[1])))[1]
        for voice in ("Vivian", "Uncle_Fu")
    )
    assert vivian > 1.5 * uncle_fu


def test_same_request_same_audio_whatever_the_voice_spelling() -> None:
    """Deterministic: the same text and voice give the same bytes; names ignore case."""
    demo = Demo()
    assert demo.audio(input=TEXT, voice="Ono_Anna") == demo.audio(input=TEXT, voice="ONO_ANNA")


def test_default_voice_is_vivian() -> None:
    """Without ``voice`` the model speaks as Vivian, as vLLM-Omni does."""
    demo = Demo()
    assert demo.audio(input=TEXT) == demo.audio(input=TEXT, voice="vivian")


def test_pcm_is_the_wav_data_without_a_header() -> None:
    """``pcm`` is raw 24 kHz s16le: exactly the samples of the WAV answer."""
    demo = Demo()
    response, pcm = demo.finish(demo.speech(input=TEXT, response_format="pcm"))
    assert response.headers.getRawHeaders("content-type") == ["audio/pcm"]
    assert pcm[:4] != b"RIFF"
    assert pcm == read_wav(demo.audio(input=TEXT, response_format="wav"))[1]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("\u4f60\u597d\uff0c\u4e16\u754c\u3002", "Chinese"),
        ("\uc548\ub155\ud558\uc138\uc694", "Korean"),
    ],
)
def test_other_scripts_are_spoken(text: str, language: str) -> None:
    """Chinese and Korean text are spoken syllable by syllable."""
    assert rms(samples_of(read_wav(Demo().audio(input=text, language=language))[1])) > 1000


def test_wav_header_builder() -> None:
    """The complete header counts the data; the streaming one says 0xFFFFFFFF for both sizes."""
    header = wav_header(4800)
    assert len(header) == 44
    assert struct.unpack("<4sI4s", header[:12]) == (b"RIFF", 36 + 4800, b"WAVE")
    assert struct.unpack("<4sI", header[36:]) == (b"data", 4800)
    streaming = wav_header(None)
    assert struct.unpack("<I", streaming[4:8])[0] == STREAMING_SIZE
    assert struct.unpack("<I", streaming[40:44])[0] == STREAMING_SIZE
    assert streaming[8:36] == header[8:36]


# --- pacing and streaming ------------------------------------------------------------------


def test_whole_file_only_after_generation_at_the_configured_pace() -> None:
    """stream=false: nothing until the last frame is made, then the whole WAV at once."""
    demo = Demo()
    frames = synthesize(TEXT, VIVIAN).total_frames
    d = demo.speech(input=TEXT)
    done_at = FIRST + (frames - 1) * FRAME_INTERVAL
    advance(demo.clock, done_at - 0.001)
    demo.flush()
    assert not has_result(d)
    advance(demo.clock, 0.002)
    demo.flush()
    response = result_of(d)
    assert response.code == 200
    assert response.length == 44 + frames * FRAME_BYTES


def test_stream_sends_the_first_chunk_before_generation_ends() -> None:
    """stream_format=audio, one-frame chunks: headers and a frame after the first-chunk delay,
    then a frame per tick."""
    demo = Demo(chunk_frames=1)
    d = demo.speech(input=TEXT, stream_format="audio")
    advance(demo.clock, FIRST - 0.001)
    demo.flush()
    assert not has_result(d)
    advance(demo.clock, 0.002)
    demo.flush()
    response = result_of(d)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["audio/wav"]
    assert response.length is UNKNOWN_LENGTH
    received: list[bytes] = []
    done = treq.collect(response, received.append)
    demo.flush()
    assert len(b"".join(received)) == 44 + FRAME_BYTES
    assert not has_result(done)

    advance(demo.clock, FRAME_INTERVAL)
    demo.flush()
    assert len(b"".join(received)) == 44 + 2 * FRAME_BYTES
    assert not has_result(done)

    run_generation(demo.clock)
    demo.flush()
    result_of(done)
    body = b"".join(received)
    assert body[:44] == wav_header(None)
    (rate, channels, width, _frames), pcm = read_wav(body)
    assert (rate, channels, width) == (24000, 1, 2)
    # Streamed or not, the audio is the same.
    assert pcm == demo.audio(input=TEXT)[44:]


def test_stream_chunks_are_one_frame_then_25() -> None:
    """The default cadence is vLLM-Omni's: the first chunk one codec frame (after the WAV
    header), then 25 frames (2 s) at a time, the last one what is left."""
    demo = Demo(rtf=0)
    text = TEXT * 2
    frames = synthesize(text, VIVIAN).total_frames
    assert frames > 26
    d = demo.speech(input=text, stream_format="audio", response_format="pcm")
    advance(demo.clock, FIRST)
    demo.flush()
    chunks: list[bytes] = []
    done = treq.collect(result_of(d), chunks.append)
    run_generation(demo.clock)
    demo.flush()
    result_of(done)
    sizes = [len(c) // FRAME_BYTES for c in chunks]
    rest = (frames - 1) % 25
    assert sizes == [1] + [25] * ((frames - 1) // 25) + ([rest] if rest else [])


def test_stream_true_alone_is_sse() -> None:
    """``stream: true`` without ``stream_format`` answers Server-Sent Events, as vLLM-Omni."""
    demo = Demo()
    response, body = demo.finish(demo.speech(input=TEXT, stream=True, response_format="pcm"))
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    *deltas, done = sse_events(body)
    assert {(e["type"], e["response_format"]) for e in deltas} == {("speech.audio.delta", "pcm")}
    assert done["type"] == "speech.audio.done"


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_sse_events_carry_the_same_audio_as_the_raw_stream(response_format: str) -> None:
    """stream_format=sse: base64 ``speech.audio.delta`` events, then ``speech.audio.done``."""
    demo = Demo()
    raw = demo.audio(input=TEXT, stream_format="audio", response_format=response_format)
    response, body = demo.finish(
        demo.speech(input=TEXT, stream=True, stream_format="sse", response_format=response_format)
    )
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    *deltas, done = sse_events(body)
    assert {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    frames = synthesize(TEXT, VIVIAN).total_frames
    assert done["usage"]["output_tokens"] == frames
    assert done["usage"]["input_token_details"]["audio_tokens"] == 0
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == raw


def test_sse_streams_even_without_stream_true() -> None:
    """An event stream is streamed: the first delta arrives after the first-chunk delay."""
    demo = Demo()
    d = demo.speech(input=TEXT, stream_format="sse")
    advance(demo.clock, FIRST)
    demo.flush()
    received: list[bytes] = []
    treq.collect(result_of(d), received.append)
    demo.flush()
    assert [e["type"] for e in sse_events(b"".join(received))] == ["speech.audio.delta"]


def test_rtf_zero_generates_as_fast_as_the_reactor_runs() -> None:
    """rtf=0 and no first-chunk delay: the whole answer without time passing."""
    demo = Demo(first_chunk_delay=0, rtf=0)
    d = demo.speech(input=TEXT)
    advance(demo.clock, 0)
    demo.flush()
    assert result_of(d).code == 200
    assert demo.clock.seconds() == 0


# --- validation ----------------------------------------------------------------------------


def test_unknown_voice() -> None:
    """An OpenAI voice such as ``alloy`` is a 400 listing the model's speakers."""
    demo = Demo()
    error = demo.error(demo.speech(input="Hi", voice="alloy"), 400)
    assert (error["type"], error["param"]) == ("BadRequestError", None)
    assert error["message"].startswith("Invalid voice 'alloy'. Supported: aiden, dylan,")
    assert all(voice.lower() in error["message"] for voice in VOICES)


@pytest.mark.parametrize("response_format", ["aac", "ogg", "MP3"])
def test_unsupported_format_names_the_supported_ones(response_format: str) -> None:
    """aac (which OpenAI has and vLLM-Omni not) and other names are pydantic's 400."""
    demo = Demo()
    error = demo.error(demo.speech(input="Hi", response_format=response_format), 400)
    assert error["param"] == "response_format"
    assert error["message"] == (
        "response_format: Input should be 'wav', 'pcm', 'flac', 'mp3' or 'opus'"
    )


@pytest.mark.parametrize(
    ("response_format", "container"),
    [("wav", "WAV"), ("flac", "FLAC"), ("mp3", "MP3"), ("opus", "OGG")],
)
def test_every_format_is_encoded_by_libsndfile(response_format: str, container: str) -> None:
    """Each file format decodes in libsndfile at 24 kHz mono, as long as the pcm."""
    demo = Demo(rtf=0)
    pcm = demo.audio(input=TEXT, response_format="pcm")
    data = demo.audio(input=TEXT, response_format=response_format)
    info = soundfile.info(io.BytesIO(data))
    assert (info.format, info.samplerate, info.channels) == (container, SAMPLE_RATE, 1)
    assert abs(info.frames - len(pcm) // 2) < SAMPLE_RATE // 10


@pytest.mark.parametrize("speed", [0.2, 4.5, 0, -1, "fast", True])
def test_speed_out_of_range(speed: object) -> None:
    """Speed must be a number in 0.25..4.0."""
    demo = Demo()
    assert demo.error(demo.speech(input="Hi", speed=speed), 400)["param"] == "speed"


def test_speed_limits_are_inclusive() -> None:
    """0.25 and 4.0 themselves are fine."""
    demo = Demo()
    demo.audio(input="Hi", speed=0.25)
    demo.audio(input="Hi", speed=4.0)


@pytest.mark.parametrize(
    "fields",
    [{}, {"input": None}, {"input": 42}, {"input": "a" * 4097}],
    ids=["missing", "null", "number", "too-long"],
)
def test_bad_input(fields: dict[str, Any]) -> None:
    """``input`` is required, a string of at most 4096 characters (a schema error)."""
    demo = Demo()
    assert demo.error(demo.speech(**fields), 400)["param"] == "input"


def test_blank_input() -> None:
    """Blank input is refused by the server's own check, in its words."""
    demo = Demo()
    assert demo.error(demo.speech(input="   "), 400)["message"] == "Input text cannot be empty"


def test_longest_input_is_accepted() -> None:
    """4096 characters are allowed."""
    Demo(rtf=0).audio(input="a " * 2048, speed=4.0)


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"language": "Klingon"}, 400, None),
        ({"stream": "yes"}, 400, "stream"),
        ({"stream_format": "websocket"}, 400, "stream_format"),
        ({"voice": 7}, 400, "voice"),
        ({"model": "tts-1"}, 404, "model"),
    ],
)
def test_other_bad_fields(extra: dict[str, Any], status: int, param: str | None) -> None:
    """Bad language, stream flags, voice types and model names are refused as vLLM does."""
    demo = Demo()
    assert demo.error(demo.speech(input="Hi", **extra), status)["param"] == param


def test_served_model_and_language_are_accepted() -> None:
    """Naming the served model and a supported language is fine."""
    Demo().audio(input="Hi", model="Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", language="English")


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]", b"\xff\xfe"])
def test_body_that_is_not_a_json_object(raw: bytes) -> None:
    """Broken JSON or a JSON array is a 400 in the same shape."""
    demo = Demo()
    demo.error(demo.post("/v1/audio/speech", raw), 400)


def test_unknown_route_is_json_404() -> None:
    """Klein's HTML 404 page is never sent: the upstream's error shape instead."""
    demo = Demo()
    assert demo.error(demo.get("/v1/audio/nothing-here"), 404)["type"] == "NotFoundError"
    demo.error(demo.get("/"), 404)


def test_wrong_method_is_json_405_with_allow() -> None:
    """A method a route does not take is 405 in the error shape, with Allow."""
    demo = Demo()
    response, body = demo.finish(demo.get("/v1/audio/speech"))
    assert response.headers.getRawHeaders("allow") == ["POST"]
    check_error(response, body, 405)


# --- voices --------------------------------------------------------------------------------


def voices(demo: Demo) -> dict[str, Any]:
    response, body = demo.finish(demo.get("/v1/audio/voices"))
    assert response.code == 200
    listing: dict[str, Any] = json.loads(body)
    return listing


def test_lists_the_nine_speakers() -> None:
    """GET lists the CustomVoice speakers (lower-case, as vLLM does) and no uploads."""
    assert voices(Demo()) == {
        "voices": sorted(v.lower() for v in VOICES),
        "uploaded_voices": [],
    }


def test_upload_use_delete() -> None:
    """An uploaded voice is listed, is refused by the CustomVoice checkpoint, and is gone after
    DELETE (then vLLM-Omni's own 404 body)."""
    demo = Demo()
    advance(demo.clock, 1_700_000_000)
    sample = silent_wav(1.2)
    form = multipart({"name": "My_Voice", "consent": "consent-1"}, sample)
    response, body = demo.finish(demo.post("/v1/audio/voices", form, MULTIPART))
    assert response.code == 200
    assert json.loads(body) == {
        "success": True,
        "voice": {
            "name": "My_Voice",
            "consent": "consent-1",
            "created_at": 1_700_000_000,
            "mime_type": "audio/wav",
            "file_size": len(sample),
        },
    }
    listing = voices(demo)
    assert "my_voice" in listing["voices"]
    assert [v["name"] for v in listing["uploaded_voices"]] == ["My_Voice"]

    # The CustomVoice checkpoint cannot speak an uploaded (Base, voice clone) voice.
    refusal = demo.error(demo.speech(input=TEXT, voice="MY_VOICE"), 400)["message"]
    assert refusal.startswith("Qwen3-TTS CustomVoice checkpoint does not support task_type='Base'.")

    response, body = demo.finish(demo.delete("/v1/audio/voices/My_Voice"))
    assert response.code == 200
    assert json.loads(body)["success"] is True
    assert voices(demo)["uploaded_voices"] == []
    assert demo.error(demo.speech(input=TEXT, voice="my_voice"), 400)["message"].startswith(
        "Invalid voice 'my_voice'."
    )
    response, body = demo.finish(demo.delete("/v1/audio/voices/My_Voice"))
    assert response.code == 404
    assert json.loads(body) == {"success": False, "error": "Voice 'My_Voice' not found"}


@pytest.mark.parametrize(
    "form",
    [
        multipart({"consent": "c"}, b"RIFF"),
        multipart({"name": "x"}, b"RIFF"),
        multipart({"name": "x", "consent": "c"}, None),
        multipart({"name": "x", "consent": "c"}, b""),
        multipart({"name": "vivian", "consent": "c"}, b"RIFF"),
        multipart({"name": "no/slash", "consent": "c"}, b"RIFF"),
        multipart({"name": "x", "consent": "c"}, b"RIFF", "notes.txt", "text/plain"),
        multipart({"name": "x", "consent": "c"}, b"RIFF", "x.bin", "application/octet-stream"),
    ],
    ids=[
        "no-name",
        "no-consent",
        "no-sample",
        "empty-sample",
        "builtin-name",
        "bad-name",
        "text-file",
        "unknown-binary",
    ],
)
def test_bad_uploads(form: bytes) -> None:
    """Missing fields, a taken or odd name, an empty or non-audio file: 400."""
    demo = Demo()
    demo.error(demo.post("/v1/audio/voices", form, MULTIPART), 400)


def test_upload_must_be_multipart_and_a_same_name_replaces() -> None:
    """A JSON body is refused; a second voice of the same name (any case) replaces the first,
    as vLLM-Omni's upload does."""
    demo = Demo()
    demo.error(demo.post("/v1/audio/voices", b'{"name": "x"}'), 400)
    form = multipart({"name": "twice", "consent": "c"}, silent_wav(1.5))
    assert demo.finish(demo.post("/v1/audio/voices", form, MULTIPART))[0].code == 200
    again = multipart({"name": "TWICE", "consent": "c2", "ref_text": "Hi."}, silent_wav(2))
    response, body = demo.finish(demo.post("/v1/audio/voices", again, MULTIPART))
    assert response.code == 200, body
    [voice] = voices(demo)["uploaded_voices"]
    assert (voice["name"], voice["consent"], voice["ref_text"]) == ("TWICE", "c2", "Hi.")


@pytest.mark.parametrize(
    ("sample", "says"),
    [
        ("text", "Could not decode audio file"),
        ("header", "Reference audio too short (0.0s)"),
        ("short", "Reference audio too short (0.5s)"),
        ("long", "Reference audio too long (31.0s)"),
    ],
)
def test_upload_needs_1_to_30_seconds_of_decodable_audio(sample: str, says: str) -> None:
    """Text, a header, half a second, 31 seconds: refused in vLLM-Omni's words."""
    data = {
        "text": b"abc",
        "header": wav_header(4) + b"\x01\x02\r\n",
        "short": silent_wav(0.5),
        "long": silent_wav(31),
    }[sample]
    demo = Demo()
    form = multipart({"name": "v", "consent": "c"}, data)
    assert says in demo.error(demo.post("/v1/audio/voices", form, MULTIPART), 400)["message"]


def test_sample_size_limit() -> None:
    """A 10 MB sample is accepted; one byte more is refused with vLLM's message."""
    # 20 s of audio, then padding after the data chunk (which decoders skip) up to 10 MB.
    exact = silent_wav(20)
    exact += bytes(MAX_VOICE_SAMPLE_BYTES - len(exact))
    voice = parse_voice_upload(MULTIPART, multipart({"name": "big", "consent": "c"}, exact), 0)
    assert voice.file_size == MAX_VOICE_SAMPLE_BYTES
    too_big = multipart({"name": "bigger", "consent": "c"}, exact + b"x")
    with pytest.raises(APIError) as caught:
        parse_voice_upload(MULTIPART, too_big, 0)
    assert caught.value.status == 400
    assert "10MB" in caught.value.message


def test_huge_upload_refused_without_parsing() -> None:
    """A body far over the sample limit gets 400 in vLLM's shape before it is parsed."""
    wire = Wire()
    body = b"x" * (MAX_VOICE_SAMPLE_BYTES + 200_000)
    wire.send(
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: demo\r\n"
        b"Content-Type: " + MULTIPART.encode() + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    head, _, payload = wire.received().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    error = json.loads(payload)["error"]
    assert (error["code"], error["param"]) == (400, "audio_sample")
    assert "10MB" in error["message"]


# --- disconnects and backpressure ----------------------------------------------------------


def test_client_leaving_stops_generation_and_is_logged() -> None:
    """When the client goes, no further frame is made and one event says how far it got."""
    wire = Wire()
    wire.speech(input=TEXT * 3, stream_format="audio")
    advance(wire.clock, FIRST + 3.5 * FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 4 * FRAME_BYTES
    with captured_logs() as events:
        wire.lose()
        assert generation_steps(wire.clock) == []
        written = wire.received()
        run_generation(wire.clock)
        advance(wire.clock, 60)
    assert wire.received() == written
    [abort] = messages(events, ABORTED)
    assert formatEvent(abort) == f"{ABORTED} after 4 frames"
    assert abort["frames"] == 4
    assert abort["log_namespace"] == "aistack_tts.demo"
    assert [e for e in events if e.get("isError") or "log_failure" in e] == []


def test_client_leaving_a_non_streamed_request() -> None:
    """Also while a whole file is being made: generation stops, nothing is sent."""
    wire = Wire()
    wire.speech(input=TEXT)
    advance(wire.clock, FIRST + 1.5 * FRAME_INTERVAL)
    with captured_logs() as events:
        wire.lose()
    assert generation_steps(wire.clock) == []
    assert wire.received() == b""
    [abort] = messages(events, ABORTED)
    assert abort["frames"] == 2


def test_client_leaving_before_the_first_frame() -> None:
    """Leaving during the first-chunk delay cancels the pending first frame."""
    wire = Wire()
    wire.speech(input=TEXT, stream_format="audio")
    assert len(generation_steps(wire.clock)) == 1
    with captured_logs() as events:
        wire.lose()
    assert generation_steps(wire.clock) == []
    [abort] = messages(events, ABORTED)
    assert abort["frames"] == 0


def test_finished_request_logs_no_abort() -> None:
    """A request that completed is not reported as aborted when its connection closes."""
    wire = Wire()
    with captured_logs() as events:
        wire.speech(input="Hi.", stream_format="audio")
        run_generation(wire.clock)
        assert wire.received().endswith(b"\r\n0\r\n\r\n")
        wire.lose()
    assert messages(events, ABORTED) == []
    assert len(messages(events, "speech generated: ")) == 1


def test_full_socket_buffer_pauses_generation() -> None:
    """While the transport is paused no frame is made; resuming carries on where it stopped."""
    wire = Wire()
    wire.speech(input=TEXT * 3, stream_format="audio")
    advance(wire.clock, FIRST + 1.5 * FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 2 * FRAME_BYTES

    # What a TCP transport does when its send buffer fills.
    wire.network.pauseProducing()
    assert generation_steps(wire.clock) == []
    advance(wire.clock, 60)
    assert len(wire.audio_received()) == 44 + 2 * FRAME_BYTES

    wire.network.resumeProducing()
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 3 * FRAME_BYTES
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio_received()) == 44 + 4 * FRAME_BYTES

    run_generation(wire.clock)
    expected = b"".join(synthesize(TEXT * 3, VIVIAN).frames())
    assert wire.audio_received() == wav_header(None) + expected


def test_pause_during_the_first_chunk_delay() -> None:
    """A pause before the first frame holds it back until resumed."""
    wire = Wire()
    wire.speech(input=TEXT, stream_format="audio")
    wire.network.pauseProducing()
    advance(wire.clock, 10)
    assert wire.received() == b""
    wire.network.resumeProducing()
    advance(wire.clock, FIRST)
    assert len(wire.audio_received()) == 44 + FRAME_BYTES


# --- embedding and the twist plugin --------------------------------------------------------


def test_public_names() -> None:
    """The package re-exports what it lists in ``__all__``; VOICES are the model's speakers."""
    for name in aistack_tts.demo.__all__:
        assert hasattr(aistack_tts.demo, name), name
    assert VOICES == (
        "Vivian",
        "Serena",
        "Uncle_Fu",
        "Dylan",
        "Eric",
        "Ryan",
        "Aiden",
        "Ono_Anna",
        "Sohee",
    )


def test_site_uses_the_given_reactor() -> None:
    """``site()`` is a twisted.web Site on the injected reactor."""
    clock = MemoryReactorClock()
    site = DemoUpstream(reactor=clock).site()
    assert isinstance(site, Site)
    assert site.reactor is clock


@pytest.mark.parametrize(
    ("first_chunk_delay", "rtf"), [(0.1, -1.0), (math.inf, 0.5), (0.1, math.nan)]
)
def test_bad_settings_fail_at_construction(first_chunk_delay: float, rtf: float) -> None:
    """Negative or non-finite delays are refused when the upstream is built."""
    with pytest.raises(ValueError, match="must be a finite number"):
        DemoUpstream(reactor=Clock(), first_chunk_delay=first_chunk_delay, rtf=rtf)


def test_listen_demo_uses_an_ephemeral_loopback_port() -> None:
    """listen_demo listens on 127.0.0.1, port 0, with the demo's Site."""
    reactor = MemoryReactorClock()
    port = result_of(listen_demo(reactor, first_chunk_delay=0, rtf=0))
    [(number, factory, _backlog, interface)] = reactor.tcpServers
    assert (number, interface) == (0, "127.0.0.1")
    assert isinstance(factory, Site)
    assert port is not None


def parse(argv: list[str], environ: dict[str, str] | None = None) -> DemoSettings:
    options = Options(environ=environ or {})
    options.parseOptions(argv)  # type: ignore[no-untyped-call]
    return options.settings


def test_plugin_defaults() -> None:
    """Port 8091 on loopback, 100 ms to the first chunk, twice real time."""
    assert parse([]) == DemoSettings(
        listen=("tcp:8091:interface=127.0.0.1",), first_chunk_delay=0.1, rtf=0.5
    )


def test_plugin_command_line_over_environment() -> None:
    """Each option also comes from AISTACK_TTS_DEMO_*; the command line wins."""
    environ = {
        "AISTACK_TTS_DEMO_LISTEN": "tcp:9000 tcp:9001",
        "AISTACK_TTS_DEMO_FIRST_CHUNK_DELAY": "0.25",
        "AISTACK_TTS_DEMO_RTF": "1",
    }
    settings = parse([], environ)
    assert settings.listen == ("tcp:9000", "tcp:9001")
    assert (settings.first_chunk_delay, settings.rtf) == (0.25, 1.0)
    settings = parse(["--listen", "tcp:1234", "--rtf", "0.1"], environ)
    assert (settings.listen, settings.rtf, settings.first_chunk_delay) == (
        ("tcp:1234",),
        0.1,
        0.25,
    )


def test_plugin_websocket_timeouts() -> None:
    """vLLM-Omni's 30 s idle and 10 s config timeouts by default; both can be set, and reach
    the sessions of the upstream the service serves."""
    assert (parse([]).ws_idle_timeout, parse([]).ws_config_timeout) == (30.0, 10.0)
    environ = {"AISTACK_TTS_DEMO_WS_IDLE_TIMEOUT": "5"}
    settings = parse(["--ws-config-timeout", "0.5"], environ)
    assert (settings.ws_idle_timeout, settings.ws_config_timeout) == (5.0, 0.5)
    reactor = MemoryReactorClock()
    service = make_demo_service(settings, reactor)
    service.startService()
    [(_port, site, _backlog, _interface)] = reactor.tcpServers
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert protocol is not None
    transport = StringTransport()
    transport.protocol = protocol  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    protocol.dataReceived(WS_HANDSHAKE)
    [timer] = reactor.getDelayedCalls()
    assert timer.getTime() == 0.5
    service.stopService()


@pytest.mark.parametrize(
    "argv",
    [
        ["--rtf", "fast"],
        ["--first-chunk-delay", "-1"],
        ["--rtf", "inf"],
        ["--ws-idle-timeout", "soon"],
    ],
)
def test_plugin_bad_values_exit_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad number ends the program (status 64) with one line, not a traceback."""
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 64
    err = capsys.readouterr().err
    assert err.startswith("aistack-tts-demo-upstream: error: ")
    assert err.count("\n") == 1


def test_plugin_service_listens_where_told() -> None:
    """makeService's service binds every --listen endpoint when started."""
    reactor = MemoryReactorClock()
    settings = DemoSettings(listen=("tcp:18091:interface=127.0.0.1", "tcp:18092"))
    service = make_demo_service(settings, reactor)
    service.startService()
    assert [(port, interface) for port, _f, _b, interface in reactor.tcpServers] == [
        (18091, "127.0.0.1"),
        (18092, ""),
    ]
    service.stopService()


def test_plugin_is_lazy() -> None:
    """The twist plugin names the module rather than importing it."""
    from twisted.plugins import aistack_tts_demo_plugin

    maker = aistack_tts_demo_plugin.aistack_tts_demo_upstream
    assert maker.tapname == "aistack-tts-demo-upstream"
    assert maker.module == "aistack_tts.demo._plugin"


# --- /v1/audio/speech/stream (WebSocket) ---------------------------------------------------

STREAM_ABORTED = "speech stream aborted: "
WS_HANDSHAKE = (
    b"GET /v1/audio/speech/stream HTTP/1.1\r\nHost: demo\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    mask = b"\x11\x22\x33\x44"
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (unmasked) frames the server wrote: opcode and payload each."""
    frames = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class StreamWire(Wire):
    """A WebSocket session with the demo on a StringTransport, past the handshake."""

    def __init__(self) -> None:
        super().__init__()
        transport: Any = self.transport
        transport.protocol = self.protocol  # as a TCP transport has it
        self.send(WS_HANDSHAKE)
        head = self.received()
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        # autobahn took the connection over from twisted.web: the transport's protocol is its.
        self.ws = transport.protocol
        self.transport.clear()

    def event(self, **event: Any) -> None:
        self.ws.dataReceived(client_frame(json.dumps(event).encode()))

    def frames(self) -> list[tuple[int, bytes]]:
        return server_frames(self.received())

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for opcode, payload in self.frames() if opcode == 0x1]

    def audio(self) -> list[bytes]:
        return [payload for opcode, payload in self.frames() if opcode == 0x2]

    def lose(self) -> None:
        producer = self.transport.producer
        if producer is not None:
            producer.stopProducing()
        self.ws.connectionLost(Failure(ConnectionDone()))


#: A session.config asking for what vLLM-Omni does on request only: each sentence spoken as
#: soon as it is complete, its pcm streamed in chunks as it is made.
STREAMING = {"response_format": "pcm", "stream_audio": True, "split_granularity": "sentence"}


def test_stream_default_is_one_wav_per_utterance() -> None:
    """By default text waits for input.done and the utterance is one binary message, a wav;
    audio.start has no sample_rate; audio.done says how many bytes were sent."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Ryan")
    wire.event(type="input.text", text="Hello there. How")
    wire.event(type="input.text", text=" are you?")
    run_generation(wire.clock)
    assert wire.frames() == []
    wire.event(type="input.done")
    run_generation(wire.clock)
    frames = wire.frames()
    [audio] = [payload for opcode, payload in frames if opcode == 0x2]
    ryan = aistack_tts.demo.VoiceRegistry().get("ryan")
    assert ryan is not None
    pcm = b"".join(synthesize("Hello there. How are you?", ryan).frames())
    assert audio == encode(pcm, "wav")
    assert [json.loads(p) if op == 0x1 else "audio" for op, p in frames] == [
        {
            "type": "audio.start",
            "utterance_index": 0,
            "sentence_index": 0,
            "sentence_text": "Hello there. How are you?",
            "format": "wav",
        },
        "audio",
        {
            "type": "audio.done",
            "utterance_index": 0,
            "sentence_index": 0,
            "total_bytes": len(audio),
            "error": False,
        },
        {"type": "session.done", "utterance_index": 0, "total_sentences": 1},
    ]


def test_stream_speaks_each_sentence_as_soon_as_it_is_complete() -> None:
    """Split by sentence and streamed: a sentence is spoken once its end has arrived; per
    sentence audio.start (with the rate, at the first chunk), chunks of 1 then 25 frames."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Ryan", **STREAMING)
    wire.event(type="input.text", text="Hello")
    wire.event(type="input.text", text=" there.")
    run_generation(wire.clock)
    assert wire.frames() == [], "'there.' may still go on ('there.5'): a sentence ends at '. '"
    wire.event(type="input.text", text=" How are")
    run_generation(wire.clock)
    assert [e["sentence_text"] for e in wire.events() if e["type"] == "audio.start"] == [
        "Hello there."
    ]
    wire.event(type="input.text", text=" you? Fine")
    run_generation(wire.clock)
    wire.event(type="input.done")
    run_generation(wire.clock)
    ryan = aistack_tts.demo.VoiceRegistry().get("ryan")
    assert ryan is not None
    sentences = ["Hello there.", "How are you?", "Fine"]
    starts = [e for e in wire.events() if e["type"] == "audio.start"]
    assert [e["sentence_text"] for e in starts] == sentences
    assert starts[0] == {
        "type": "audio.start",
        "utterance_index": 0,
        "sentence_index": 0,
        "sentence_text": "Hello there.",
        "format": "pcm",
        "sample_rate": 24000,
        "channels": 1,
    }
    assert wire.events()[-1] == {"type": "session.done", "utterance_index": 0, "total_sentences": 3}
    frames = wire.frames()
    audio = b"".join(payload for opcode, payload in frames if opcode == 0x2)
    assert audio == b"".join(b"".join(synthesize(s, ryan).frames()) for s in sentences)
    kinds = [json.loads(p)["type"] if op == 0x1 else len(p) for op, p in frames]
    first_done = kinds.index("audio.done")
    assert kinds[0] == "audio.start"
    assert kinds[1] == FRAME_BYTES
    assert all(isinstance(k, int) and k <= 25 * FRAME_BYTES for k in kinds[2:first_done])


def test_stream_chunks_are_paced_on_the_clock() -> None:
    """Streamed pcm is paced on the clock (chunks of one frame here, ``chunk_frames=1``)."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian", **STREAMING)
    wire.event(type="input.text", text=TEXT + " ")
    advance(wire.clock, FIRST - 0.01)
    assert len(wire.audio()) == 0
    advance(wire.clock, 0.01 + 0.5 * FRAME_INTERVAL)
    assert len(wire.audio()) == 1
    advance(wire.clock, 2 * FRAME_INTERVAL)
    assert len(wire.audio()) == 3


def test_stream_pauses_with_the_socket() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian", **STREAMING)
    wire.event(type="input.text", text=TEXT + " ")
    advance(wire.clock, FIRST + FRAME_INTERVAL)
    assert len(wire.audio()) == 2
    producer = wire.transport.producer
    assert producer is not None, "the session is its socket's producer"
    producer.pauseProducing()  # what a TCP transport does when its send buffer fills
    assert generation_steps(wire.clock) == []
    advance(wire.clock, 60)
    assert len(wire.audio()) == 2
    assert all(opcode != 0x8 for opcode, _ in wire.frames()), "no idle close while speaking"
    producer.resumeProducing()
    advance(wire.clock, FRAME_INTERVAL)
    assert len(wire.audio()) == 3


def test_stream_client_leaving_stops_generation_and_is_logged() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text=TEXT + " More to say")
    wire.event(type="input.done")
    advance(wire.clock, FIRST + 2.5 * FRAME_INTERVAL)
    with captured_logs() as events:
        wire.lose()
        assert generation_steps(wire.clock) == []
        run_generation(wire.clock)
    [abort] = messages(events, STREAM_ABORTED)
    assert abort["log_namespace"] == "aistack_tts.demo"
    assert (abort["frames"], abort["index"]) == (3, 0)
    assert [e for e in events if e.get("isError") or "log_failure" in e] == []


def test_stream_idle_client_leaving_logs_no_abort() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Hi. ")
    wire.event(type="input.done")
    run_generation(wire.clock)
    with captured_logs() as events:
        wire.lose()
    assert messages(events, STREAM_ABORTED) == []


def test_stream_session_close_closes_the_connection() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Not finished")
    wire.event(type="session.close")
    [(opcode, payload)] = wire.frames()
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1000))


def test_stream_messages_wait_for_the_audio_before_them() -> None:
    """Handled one at a time, as the real receive loop does: a config sent right after
    input.done applies after that utterance (no 'utterance in progress' error), to the next."""
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Hi.")
    wire.event(type="input.done")
    wire.event(type="session.config", voice="Vivian", response_format="flac")
    wire.event(type="input.text", text="Again.")
    wire.event(type="input.done")
    run_generation(wire.clock)
    events = wire.events()
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"] * 2
    assert [e["format"] for e in events if e["type"] == "audio.start"] == ["wav", "flac"]
    assert [soundfile.info(io.BytesIO(a)).format for a in wire.audio()] == ["WAV", "FLAC"]


def test_stream_config_mid_utterance_is_refused_and_the_session_goes_on() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.event(type="input.text", text="Half")
    wire.event(type="session.config", voice="Ryan")
    assert wire.events() == [
        {
            "type": "error",
            "message": "session.config cannot be applied while an utterance is in progress; "
            "send input.done first",
        }
    ]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "input.text", "text": "Hi."}, "Expected session.config, got: input.text"),
        (
            {"type": "session.config", "response_format": "wav", "stream_audio": True},
            "requires response_format='pcm'. Got response_format='wav'.",
        ),
        ({"type": "session.config", "split_granularity": "word"}, "split_granularity\n  Input"),
        ({"type": "session.config", "model": "tts-1"}, "The model `tts-1` does not exist."),
    ],
)
def test_stream_bad_start_is_an_error_then_the_close(event: dict[str, Any], message: str) -> None:
    wire = StreamWire()
    wire.event(**event)
    [(op1, error), (op2, close)] = wire.frames()
    assert (op1, op2, close[:2]) == (0x1, 0x8, struct.pack("!H", 1000))
    assert json.loads(error)["type"] == "error"
    assert message in json.loads(error)["message"]


def test_stream_errors_after_the_config_keep_the_session_but_bytes_end_it() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="Vivian")
    wire.ws.dataReceived(client_frame(b"not json"))
    wire.ws.dataReceived(client_frame(b"[1]"))
    wire.event(type="input.text", text=5)
    wire.event(type="nonsense")
    wire.event(type="input.done", pad="x" * (128 * 1024))
    wire.ws.dataReceived(client_frame(b"\x00\x01", opcode=0x2))
    frames = wire.frames()
    assert [json.loads(p)["message"] for op, p in frames if op == 0x1] == [
        "Invalid JSON message",
        "WebSocket messages must be JSON objects",
        "input.text requires a string value",
        "Unknown message type: nonsense",
        "input.text message too large",
        # Starlette's receive_text() on a bytes message, caught by the handler's catch-all.
        "Internal error: 'text'",
    ]
    assert frames[-1][0] == 0x8


def test_stream_voice_language_and_task_are_checked_at_generation_time() -> None:
    wire = StreamWire()
    wire.event(type="session.config", voice="alloy", language="klingon")
    wire.event(type="input.text", text="Hi.")
    wire.event(type="input.done")
    run_generation(wire.clock)
    start, error, done, session_done = wire.events()
    assert start["type"] == "audio.start"
    assert error["message"].startswith("Generation failed for utterance 0, sentence 0: Invalid ")
    assert (done["total_bytes"], done["error"]) == (0, True)
    assert session_done["type"] == "session.done"


def test_stream_config_timeout_is_10_s_and_idle_timeout_30_s() -> None:
    wire = StreamWire()
    advance(wire.clock, 9.9)
    assert wire.frames() == []
    advance(wire.clock, 0.2)
    [(op1, error), (op2, _close)] = wire.frames()
    assert (op1, op2) == (0x1, 0x8)
    assert json.loads(error) == {"type": "error", "message": "Timeout waiting for session.config"}

    wire = StreamWire()
    advance(wire.clock, 5)
    wire.event(type="session.config")
    advance(wire.clock, 29.9)
    wire.event(type="input.text", text="Hi.")  # a message starts the wait anew
    advance(wire.clock, 29.9)
    assert wire.frames() == []
    advance(wire.clock, 0.2)
    [(op1, error), (op2, _close)] = wire.frames()
    assert json.loads(error) == {"type": "error", "message": "Idle timeout: no message received"}


def test_stream_path_without_upgrade_is_plain_http() -> None:
    """A plain GET of the stream path is routed like any other: a JSON 404 in vLLM's shape."""
    wire = Wire()
    wire.send(b"GET /v1/audio/speech/stream HTTP/1.1\r\nHost: demo\r\n\r\n")
    head, _, body = wire.received().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body)["error"]["type"] == "NotFoundError"


@pytest.mark.parametrize(
    ("granularity", "pieces", "units", "rest"),
    [
        ("sentence", ["Hello there. How"], ["Hello there."], "How"),
        ("sentence", ["Hello there.", " How are you?", " "], ["Hello there.", "How are you?"], ""),
        ("sentence", ["Pi is 3.14 or so. "], ["Pi is 3.14 or so."], ""),
        ("sentence", ["Wait... what?! Yes. "], ["Wait...", "what?!", "Yes."], ""),
        ("sentence", ["你好。今天好吗\uff1f好"], ["你好。", "今天好吗\uff1f"], "好"),
        ("sentence", ["  ", "\n"], [], ""),
        ("clause", ["One, two; three. Four"], ["One,", "two;", "three."], "Four"),
        ("none", ["One. Two. ", "Three"], [], "One. Two. Three"),
    ],
)
def test_speech_text_splitter(
    granularity: str, pieces: list[str], units: list[str], rest: str
) -> None:
    splitter = aistack_tts.demo.SpeechTextSplitter(granularity)
    got = [s for piece in pieces for s in splitter.feed(piece)]
    assert got == units
    assert splitter.flush() == ([rest] if rest else [])
    assert splitter.flush() == []
