"""End to end with the real ``openai`` SDK: client → gateway → demo upstream, on 127.0.0.1.

Each test starts the demo upstream (``listen_demo`` on an ephemeral port) and an in-process
gateway (``TTSProxy(...).site()`` on a real listening port) on pytest-twisted's global reactor.
The gateway's slot is a ``DeferredSemaphore`` the test holds, so a test can play the in-process
ASR/LLM workload that keeps the GPU busy. The synchronous ``openai.OpenAI`` client runs in a
thread (``deferToThread``), so the reactor keeps serving both the gateway and the upstream
while the SDK blocks. Times are only ever compared with each other, never with a fixed bound.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
import uuid
import wave
from array import array
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
import pytest
from openai import APIResponse, OpenAI
from twisted.internet.defer import Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.logger import formatEvent

from aistack_tts import TTSProxy
from aistack_tts_demo import listen_demo
from support.logs import Captured
from support.reactor import (
    blockon,
    disconnected,
    listen_tracking,
    new_delayed_calls,
    reactor,
    twisted_test,
    until,
)
from support.speech import (
    FRAME_BYTES,
    LONG_TEXT,
    MODEL,
    PATIENCE,
    SAMPLE_RATE,
    SHORT_TEXT,
    error_body,
    read_wav,
)

pytestmark = [pytest.mark.real_sockets]

WAV_HEADER_BYTES = 44
#: Many seconds of audio, for a client that leaves long before the end.
VERY_LONG_TEXT = " ".join([LONG_TEXT] * 6)

# The stack: demo upstream, gateway, and the SDK clients pointed at them.


@dataclass
class Stack:
    """One demo upstream and one gateway in front of it, guarded by ``slot``."""

    demo: IListeningPort
    listening: IListeningPort
    proxy: TTSProxy
    slot: DeferredSemaphore
    channels: list[Any]
    clients: list[OpenAI] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.listening.getHost().port}/v1"  # type: ignore[attr-defined]

    @property
    def demo_url(self) -> str:
        return f"http://127.0.0.1:{self.demo.getHost().port}/v1"  # type: ignore[attr-defined]

    def client(self, *, direct: bool = False, **options: Any) -> OpenAI:
        """An SDK client for the gateway (or, ``direct``, for the demo upstream itself)."""
        client = OpenAI(
            api_key="sk-not-checked",
            base_url=self.demo_url if direct else self.gateway_url,
            timeout=PATIENCE,
            **options,
        )
        self.clients.append(client)
        return client

    @property
    def slot_free(self) -> bool:
        return self.slot.tokens == self.slot.limit

    async def close(self) -> None:
        for client in self.clients:
            await deferToThread(client.close)
        await until(
            lambda: all(disconnected(channel) for channel in self.channels),
            "the gateway's client connections to end",
            timeout=PATIENCE,
        )
        await until(lambda: self.slot_free, "every slot token to come back", timeout=PATIENCE)
        await maybeDeferred(self.listening.stopListening)
        await self.proxy.close()
        await maybeDeferred(self.demo.stopListening)


class Stacks:
    """Starts stacks for one test; ``close`` takes each down and checks nothing is left."""

    def __init__(self) -> None:
        self.started: list[Stack] = []
        self._calls_before = set(reactor.getDelayedCalls())

    async def start(self, *, first_chunk_delay: float, rtf: float, **proxy_kwargs: Any) -> Stack:
        demo = await listen_demo(reactor, first_chunk_delay=first_chunk_delay, rtf=rtf)
        slot = DeferredSemaphore(1)
        base = f"http://127.0.0.1:{demo.getHost().port}"  # type: ignore[attr-defined]
        proxy = TTSProxy(upstream=base, slot=slot, reactor=reactor, **proxy_kwargs)
        site = proxy.site()
        listening, channels = listen_tracking(site)
        stack = Stack(demo, listening, proxy, slot, channels)
        self.started.append(stack)
        return stack

    async def close(self) -> None:
        for stack in self.started:
            await stack.close()
        # The upstream's server side of the pooled connections ends a moment after the pool
        # closes them; its channel timeouts go with it.
        await until(
            lambda: not new_delayed_calls(self._calls_before),
            "every DelayedCall to end",
            timeout=5.0,
        )


@pytest.fixture
def stacks() -> Iterator[Stacks]:
    started = Stacks()
    yield started
    blockon(Deferred.fromCoroutine(started.close()))


@pytest.fixture
def fast(stacks: Stacks) -> Stack:
    """A stack whose upstream generates as fast as the reactor runs (timing does not matter)."""
    return blockon(Deferred.fromCoroutine(stacks.start(first_chunk_delay=0.0, rtf=0.0)))


@pytest.fixture
def fast_no_queue(stacks: Stacks) -> Stack:
    """``fast`` with ``queue_timeout=0``: a busy GPU answers 503 at once."""
    start = stacks.start(first_chunk_delay=0.0, rtf=0.0, queue_timeout=0)
    return blockon(Deferred.fromCoroutine(start))


@pytest.fixture
def paced(stacks: Stacks) -> Stack:
    """A stack whose upstream works like the GPU: 50 ms to the first frame, then rtf 0.5."""
    return blockon(Deferred.fromCoroutine(stacks.start(first_chunk_delay=0.05, rtf=0.5)))


# Log capture.


# Audio helpers.


def peak(pcm: bytes) -> int:
    samples = array("h")
    samples.frombytes(pcm)
    return max((abs(s) for s in samples), default=0)


def sine_wav(seconds: float = 0.25, hz: float = 220.0) -> bytes:
    """A small WAV file to upload as a voice sample."""
    samples = array(
        "h",
        (
            int(8000 * math.sin(2 * math.pi * hz * i / SAMPLE_RATE))
            for i in range(int(seconds * SAMPLE_RATE))
        ),
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


def speak(
    client: OpenAI, text: str, voice: str = "Vivian", fmt: Literal["wav", "pcm"] = "wav"
) -> bytes:
    """A whole (non-streamed) answer from ``/v1/audio/speech``, through the SDK."""
    response = client.audio.speech.create(
        model=MODEL,
        voice=voice,
        input=text,
        response_format=fmt,
    )
    return response.content


def stream_pcm(
    client: OpenAI, text: str, voice: str = "Vivian"
) -> AbstractContextManager[APIResponse[bytes]]:
    """A PCM answer from ``/v1/audio/speech`` streamed raw with vLLM-Omni's ``stream_format:
    "audio"`` (``stream: true`` alone is SSE), to use in ``with``: the response's
    ``iter_bytes()`` yields the audio as it arrives."""
    return client.audio.speech.with_streaming_response.create(
        model=MODEL,
        voice=voice,
        input=text,
        response_format="pcm",
        extra_body={"stream_format": "audio"},
    )


# 1. A whole WAV file.


@twisted_test
async def test_speech_returns_a_wav_file_whose_length_follows_the_text(fast: Stack) -> None:
    """``audio.speech.create(response_format="wav")`` through the gateway gives a WAV file that
    stdlib ``wave`` opens: 24 kHz, mono, 16-bit, not silent, its header sizes exact, and its
    duration follows the text (a text four times as long gives well over twice the audio, and
    each lies in a sane seconds-per-character range for speech)."""
    client = fast.client()
    short_text, long_text = SHORT_TEXT, " ".join([SHORT_TEXT] * 4) + " " + LONG_TEXT
    short = await deferToThread(speak, client, short_text)
    long = await deferToThread(speak, client, long_text)

    durations = []
    for data, text in ((short, short_text), (long, long_text)):
        assert data[:4] == b"RIFF"
        assert data[8:12] == b"WAVE"
        info = read_wav(data)
        assert (info.rate, info.channels, info.width) == (SAMPLE_RATE, 1, 2)
        assert info.frames * 2 == len(data) - WAV_HEADER_BYTES
        assert peak(info.pcm) > 1000, "the audio is silent"
        # Speech runs at roughly 10-25 characters per second.
        assert 0.03 < info.seconds / len(text) < 0.15, (info.seconds, len(text))
        durations.append(info.seconds)
    assert durations[1] > 2 * durations[0], durations
    assert fast.slot_free


# 2. Streamed audio arrives as it is made.


@twisted_test
async def test_streamed_speech_arrives_before_generation_ends(paced: Stack) -> None:
    """With ``with_streaming_response`` and vLLM-Omni's ``stream_format: "audio"``, the SDK's
    ``iter_bytes()`` yields the first audio chunk (one 80 ms codec frame) long before the last
    one: the gateway relays each chunk as the upstream makes it instead of buffering the
    answer. (Only the two times are compared, relative to each other: first chunk in under a
    quarter of the total.)"""
    client = paced.client()

    def stream() -> tuple[list[float], int]:
        start = time.monotonic()
        arrivals: list[float] = []
        size = 0
        with stream_pcm(client, LONG_TEXT, "Vivian") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "audio/pcm"
            for chunk in response.iter_bytes():
                arrivals.append(time.monotonic() - start)
                size += len(chunk)
        return arrivals, size

    arrivals, size = await deferToThread(stream)
    first, last = arrivals[0], arrivals[-1]
    print(
        f"\nstreamed {size} bytes in {len(arrivals)} chunks: first {first:.3f}s, last {last:.3f}s"
    )
    assert size % FRAME_BYTES == 0
    assert size // FRAME_BYTES > 20
    assert len(arrivals) >= 2, "the audio came in one piece"
    assert first * 4 < last, (first, last)
    assert paced.slot_free


# 3. A client that leaves stops the generation.


@twisted_test
async def test_client_closing_a_stream_aborts_generation_and_frees_the_slot(
    paced: Stack, demo_log: Captured
) -> None:
    """A client that stops iterating and closes the streaming response mid-stream makes the
    gateway close its upstream connection: the demo upstream logs "speech generation aborted:
    client disconnected after N frames" with N short of the whole utterance, and the slot's
    token (held while the stream ran) comes back."""
    client = paced.client()
    slot = paced.slot

    def read_a_little() -> tuple[int, int]:
        with stream_pcm(client, VERY_LONG_TEXT, "Ryan") as response:
            got = 0
            tokens_while_streaming = -1
            for chunk in response.iter_bytes():
                got += len(chunk)
                if got >= 3 * FRAME_BYTES:
                    # Asked before leaving: leaving the loop already closes the connection.
                    tokens_while_streaming = blockingCallFromThread(reactor, lambda: slot.tokens)
                    break
        return got, tokens_while_streaming

    got, tokens_while_streaming = await deferToThread(read_a_little)
    assert got >= 3 * FRAME_BYTES
    assert tokens_while_streaming == 0, "the slot was not held during the stream"

    pattern = re.compile(r"^speech generation aborted: client disconnected after (\d+) frames$")
    await until(
        lambda: any(pattern.match(m) for m in demo_log.messages()),
        f"the demo to log an abort (saw {demo_log.messages()})",
        timeout=PATIENCE,
    )
    [event] = [e for e in demo_log.events if pattern.match(formatEvent(e))]
    assert 3 <= event["frames"] < event["total_frames"], event
    assert not any(m.startswith("speech generated") for m in demo_log.messages())
    await until(lambda: paced.slot_free, "the slot token to come back", timeout=PATIENCE)


# 4. A busy GPU: 503 gpu_busy, and the SDK's retry honours Retry-After.


@twisted_test
async def test_busy_slot_gives_503_gpu_busy_and_sdk_retries_succeed(
    fast_no_queue: Stack, access_log: Captured
) -> None:
    """With ``queue_timeout=0``, while an in-process workload holds the injected slot, a
    client with ``max_retries=0`` gets ``openai.APIStatusError`` 503 whose body is the
    gateway's envelope (provider "aistack", type and code "gpu_busy") with ``Retry-After``
    and ``retry-after-ms``. With default retries and the slot freed 0.5 s later, the same
    call succeeds: the SDK waited as told and retried after at least one more 503."""
    fast = fast_no_queue
    slot = fast.slot
    await slot.acquire()  # the in-process ASR/LLM work
    held = True
    release: IDelayedCall | None = None
    try:
        impatient = fast.client(max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await deferToThread(speak, impatient, SHORT_TEXT)
        error = caught.value
        assert error.status_code == 503
        body = error_body(error)
        assert body["provider"] == "aistack"
        assert body["type"] == "gpu_busy"
        assert body["code"] == "gpu_busy"
        assert error.response.json() == {"error": body}
        assert error.response.headers["content-type"].startswith("application/json")
        assert 1 <= int(error.response.headers["retry-after"]) <= 60
        assert int(error.response.headers["retry-after-ms"]) > 0
        assert slot.tokens == 0, "the refused request must not have taken or freed a token"

        def free() -> None:
            nonlocal held
            held = False
            slot.release()

        busy_before = sum(1 for e in access_log.events if e.get("slot") == "busy")
        release = reactor.callLater(0.5, free)
        patient = fast.client()
        audio = await deferToThread(speak, patient, SHORT_TEXT)
        assert not held, "the call succeeded while the workload still held the slot"
        assert read_wav(audio).frames > 0
        busy_after = sum(1 for e in access_log.events if e.get("slot") == "busy")
        assert busy_after > busy_before, "the SDK never got a 503 to retry on"
        statuses = [e.get("status") for e in access_log.events]
        assert statuses[-1] == 200, statuses
    finally:
        if release is not None and release.active():
            release.cancel()
        if held:
            slot.release()
    await until(lambda: fast.slot_free, "the slot token to come back", timeout=PATIENCE)


# 5. Voice upload, listing, use and delete.


@twisted_test
async def test_voice_upload_list_use_and_delete_pass_through(fast: Stack) -> None:
    """``POST /v1/audio/voices`` (multipart ``audio_sample``, ``name``, ``consent``) sent with
    the SDK's low-level ``client.post(files=...)`` reaches the upstream whole; the voice is
    then listed by ``GET /v1/audio/voices``; ``audio.speech.create`` in it is the upstream's
    own 400 (the CustomVoice checkpoint does not speak uploaded, Base, voices), and
    ``DELETE /v1/audio/voices/<name>`` removes it. A second DELETE is the upstream's own 404,
    byte for byte what the upstream answers directly (vLLM-Omni's ``{"success": false,
    "error": ...}``, no ``provider``)."""
    client = fast.client()
    direct = fast.client(direct=True)
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    sample = sine_wav(seconds=2.0)

    def upload() -> Any:
        return client.post(
            "/audio/voices",
            cast_to=object,
            body={"name": name, "consent": "consent-recording-42"},
            files=[("audio_sample", ("sample.wav", sample, "audio/wav"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
        )

    def listing() -> Any:
        return client.get("/audio/voices", cast_to=object)

    def delete(via: OpenAI) -> Any:
        return via.delete(f"/audio/voices/{name}", cast_to=object)

    uploaded = await deferToThread(upload)
    assert uploaded["success"] is True
    assert uploaded["voice"]["name"] == name
    assert uploaded["voice"]["consent"] == "consent-recording-42"
    assert uploaded["voice"]["mime_type"] == "audio/wav"
    assert uploaded["voice"]["file_size"] == len(sample)

    listed = await deferToThread(listing)
    assert name in listed["voices"]
    assert "vivian" in listed["voices"]
    assert [v["name"] for v in listed["uploaded_voices"]] == [name]

    with pytest.raises(openai.BadRequestError) as refused:
        await deferToThread(speak, client, SHORT_TEXT, name)
    assert "CustomVoice checkpoint does not support task_type='Base'" in str(refused.value)

    deleted = await deferToThread(delete, client)
    assert deleted["success"] is True
    listed = await deferToThread(listing)
    assert name not in listed["voices"]
    assert listed["uploaded_voices"] == []

    with pytest.raises(openai.NotFoundError) as through_gateway:
        await deferToThread(delete, client)
    with pytest.raises(openai.NotFoundError) as from_upstream:
        await deferToThread(delete, direct)
    error = through_gateway.value
    assert error.status_code == 404
    assert json.loads(error.response.content) == {
        "success": False,
        "error": f"Voice '{name}' not found",
    }
    assert error.response.content == from_upstream.value.response.content
    assert error.response.headers["content-type"] == "application/json"
    assert fast.slot_free


# 6. Server-sent events, event by event.


@twisted_test
async def test_sse_events_arrive_one_by_one_and_match_the_whole_pcm(paced: Stack) -> None:
    """``stream_format="sse"`` through the gateway: ``speech.audio.delta`` events (base64 PCM)
    arrive one by one, the first long before the final ``speech.audio.done``, and the decoded
    deltas joined are exactly the PCM the same request answers without streaming."""
    client = paced.client()
    text = "Streaming speech, one event at a time."

    def events() -> tuple[str, list[tuple[float, dict[str, Any]]]]:
        start = time.monotonic()
        got: list[tuple[float, dict[str, Any]]] = []
        with client.audio.speech.with_streaming_response.create(
            model=MODEL,
            voice="Serena",
            input=text,
            response_format="pcm",
            stream_format="sse",
        ) as response:
            content_type = response.headers["content-type"]
            for line in response.iter_lines():
                if line.startswith("data:"):
                    got.append((time.monotonic() - start, json.loads(line[5:])))
        return content_type, got

    content_type, received = await deferToThread(events)
    assert content_type.startswith("text/event-stream")
    kinds = [event["type"] for _, event in received]
    assert kinds[-1] == "speech.audio.done", kinds
    assert set(kinds[:-1]) == {"speech.audio.delta"}, kinds
    deltas = [(at, event) for at, event in received if event["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2, kinds
    first_at, done_at = deltas[0][0], received[-1][0]
    assert first_at * 3 < done_at, (first_at, done_at)
    # Incremental: the deltas did not all land together at the end.
    assert deltas[len(deltas) // 2][0] < done_at
    streamed = b"".join(base64.b64decode(event["audio"]) for _, event in deltas)
    whole = await deferToThread(speak, client, text, "Serena", "pcm")
    assert len(whole) % FRAME_BYTES == 0
    assert received[-1][1]["usage"]["output_tokens"] == len(whole) // FRAME_BYTES
    assert streamed == whole
    assert paced.slot_free


# 7. Upstream errors pass through verbatim.


@twisted_test
async def test_upstream_400_reaches_the_sdk_verbatim(fast: Stack) -> None:
    """An unknown voice (``alloy``, an OpenAI voice the Qwen3 model does not have) gets the
    upstream's own 400: the SDK raises ``openai.BadRequestError`` whose body is vLLM-shaped
    (``code`` the integer 400, ``param`` null as the server's own checks send it, no
    ``provider``) and byte for byte what the
    upstream answers directly; the gateway wraps nothing."""
    through_gateway = fast.client()
    direct = fast.client(direct=True)

    with pytest.raises(openai.BadRequestError) as caught:
        await deferToThread(speak, through_gateway, SHORT_TEXT, "alloy")
    with pytest.raises(openai.BadRequestError) as caught_directly:
        await deferToThread(speak, direct, SHORT_TEXT, "alloy")

    error = caught.value
    assert error.status_code == 400
    body = error_body(error)
    assert "provider" not in body
    assert body["type"] == "BadRequestError"
    assert body["param"] is None
    assert body["code"] == 400
    assert isinstance(body["code"], int)
    assert body["message"].startswith("Invalid voice 'alloy'. Supported: ")
    assert error.response.json() == {"error": body}
    assert error.response.content == caught_directly.value.response.content
    assert error.response.headers["content-type"] == "application/json"
    assert fast.slot_free
