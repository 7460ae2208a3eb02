"""The demo upstream on a fake clock: its constants and the helpers its tests share.

HTTP-level behaviour goes through treq's in-memory agent (``Demo``); disconnects and backpressure
through the demo's own Site on a StringTransport (``Wire``), where the test plays the TCP
transport. Audio checks (``rms``, ``periodicity``, ...) tell speech-like audio from silence or
noise.
"""

from __future__ import annotations

import itertools
import json
import math
from array import array
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from aistack_tts_demo import DemoUpstream
from aistack_tts_demo._profiles import BUILTIN_PROFILES
from aistack_tts_demo._synth import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    wav_header,
)
from support.deferreds import result_of
from support.speech import read_wav

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
#: The opening handshake of a ``/v1/audio/speech/stream`` session.
WS_HANDSHAKE = (
    b"GET /v1/audio/speech/stream HTTP/1.1\r\nHost: demo\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


# --- helpers -------------------------------------------------------------------------------


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


def duration(wav: bytes) -> float:
    return len(read_wav(wav).pcm) / 2 / SAMPLE_RATE


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
    """A ``DemoUpstream`` behind treq's in-memory agent; time moves only when the test says."""

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
