"""The clients people use, end to end through a real ``twist aistack-tts --demo`` process.

Each test drives the gateway on 127.0.0.1 the way a popular client does and asserts what that
client really gets: audio decoded with ``soundfile`` (libsndfile) at 24 kHz and the right
length, streams whose first chunk comes well before the last, SSE events that parse, and,
with the one GPU slot, the 503 ``gpu_busy`` envelopes a client sees and the retries that
succeed where the client retries. The ``openai`` SDK (sync and async) and ``httpx-sse``
are installed; Open WebUI, Home Assistant, pipecat and LiveKit are not (each pulls a large
framework, and pipecat and LiveKit native wheels), so their request shape is replayed from
their source, named in each test's docstring. ``--demo`` keeps vLLM-Omni's default pacing
(0.1 s to the first 80 ms frame, then real-time factor 0.5, chunks of 25 frames).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import httpx_sse
import numpy as np
import openai
import pytest
import soundfile
from openai import AsyncOpenAI, OpenAI

from support.logs import log_events
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
from testbed.processes import start_demo_gateway, stop_process

pytestmark = [pytest.mark.real_sockets]

#: Three sentences of one answer, as a voice assistant splits it.
SENTENCES = (
    "The living room lights are off.",
    "The front door is locked.",
    "Good night.",
)
#: About 1.5 s of audio, for whole files (generation is paced: rtf 0.5).
MP3_TEXT = " ".join(SENTENCES[:2])


@dataclass
class DemoGateway:
    """One ``twist aistack-tts --demo`` process; its JSON log lines go to ``log_path``."""

    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log_path)

    def access(self) -> list[dict[str, Any]]:
        """The access log events (one per request), in order."""
        return [e for e in self.events() if e.get("namespace") == "aistack_tts.access"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoGateway]:
    """``twist aistack-tts --demo`` (one slot, its defaults) on an ephemeral loopback port."""
    log_path = tmp_path_factory.mktemp("clients") / "gateway.log"
    process, port = start_demo_gateway(log_path)
    try:
        yield DemoGateway(port, log_path)
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def no_queue_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoGateway]:
    """The same with ``--queue-timeout 0``: a busy GPU answers 503 at once."""
    log_path = tmp_path_factory.mktemp("clients-no-queue") / "gateway.log"
    process, port = start_demo_gateway(log_path, "--queue-timeout", "0")
    try:
        yield DemoGateway(port, log_path)
    finally:
        stop_process(process)


def decode(data: bytes) -> tuple[np.ndarray[Any, Any], int, str]:
    """``data`` decoded by libsndfile: the samples, the rate and the container it found."""
    info = soundfile.info(io.BytesIO(data))
    samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    return samples, rate, info.format


def pcm_samples(gateway: DemoGateway, text: str, voice: str = "vivian") -> int:
    """How many samples the upstream makes for ``text``: its pcm, asked of vLLM-Omni's batch
    endpoint through the gateway (unpaced, so the reference costs no generation time)."""
    item = {"input": text, "voice": voice, "response_format": "pcm"}
    with httpx.Client(timeout=PATIENCE) as client:
        answer = client.post(f"{gateway.base_url}/audio/speech/batch", json={"items": [item]})
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    pcm = base64.b64decode(result["audio_data"])
    assert len(pcm) % FRAME_BYTES == 0
    return len(pcm) // 2


# The openai SDK.


def test_sdk_create_mp3_decodes_at_24khz_with_the_right_length(gateway: DemoGateway) -> None:
    """``OpenAI().audio.speech.create(response_format="mp3")``, as Open WebUI's OpenAI engine,
    SillyTavern and most scripts call it: the body is ``audio/mpeg`` that libsndfile decodes
    as MP3 at 24 kHz mono, lasting what the same text gives as raw pcm (within one MP3
    frame of encoder padding), not silent, and the usage headers count its codec frames."""
    with OpenAI(api_key="sk-x", base_url=gateway.base_url, timeout=PATIENCE) as client:
        response = client.audio.speech.with_raw_response.create(
            model=MODEL, voice="vivian", input=MP3_TEXT, response_format="mp3"
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    samples, rate, container = decode(response.content)
    assert (container, rate, samples.ndim) == ("MP3", SAMPLE_RATE, 1)
    expected = pcm_samples(gateway, MP3_TEXT)
    assert abs(len(samples) - expected) <= 1152, (len(samples), expected)
    assert int(np.abs(samples).max()) > 1000, "the mp3 is silent"
    assert int(response.headers["x-vllm-omni-output-tokens"]) == expected * 2 // FRAME_BYTES


def test_sdk_create_without_response_format_gets_wav(gateway: DemoGateway) -> None:
    """``create`` with no ``response_format`` (the SDK then sends none) gets vLLM-Omni's
    default, WAV, not OpenAI's default MP3: ``audio/wav``, 24 kHz mono 16-bit, exactly the
    samples the same text gives as pcm."""
    with OpenAI(api_key="sk-x", base_url=gateway.base_url, timeout=PATIENCE) as client:
        response = client.audio.speech.with_raw_response.create(
            model=MODEL, voice="ryan", input=SHORT_TEXT
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    info = read_wav(response.content)
    assert (info.rate, info.channels, info.width) == (SAMPLE_RATE, 1, 2)
    assert info.frames == pcm_samples(gateway, SHORT_TEXT, "ryan")
    samples, rate, container = decode(response.content)
    assert (container, rate, len(samples)) == ("WAV", SAMPLE_RATE, info.frames)


def test_async_sdk_streams_raw_pcm_as_it_is_made(gateway: DemoGateway) -> None:
    """``AsyncOpenAI`` ``with_streaming_response`` with ``stream_format: "audio"`` and pcm:
    ``iter_bytes()`` yields the first chunk (one 80 ms codec frame) well before the last
    (under a quarter of the total time), and the chunks joined are the whole utterance."""

    async def stream() -> tuple[list[float], bytes, str]:
        async with AsyncOpenAI(api_key="sk-x", base_url=gateway.base_url) as client:
            start = time.monotonic()
            arrivals: list[float] = []
            body = bytearray()
            async with client.audio.speech.with_streaming_response.create(
                model=MODEL,
                voice="aiden",
                input=LONG_TEXT,
                response_format="pcm",
                extra_body={"stream_format": "audio"},
                timeout=PATIENCE,
            ) as response:
                content_type = response.headers["content-type"]
                async for chunk in response.iter_bytes():
                    arrivals.append(time.monotonic() - start)
                    body.extend(chunk)
            return arrivals, bytes(body), content_type

    arrivals, body, content_type = asyncio.run(stream())
    assert content_type == "audio/pcm"
    assert len(arrivals) >= 2, "the audio came in one piece"
    assert arrivals[0] * 4 < arrivals[-1], (arrivals[0], arrivals[-1])
    assert len(body) // 2 == pcm_samples(gateway, LONG_TEXT, "aiden")


def test_sse_consumer_parses_every_event(gateway: DemoGateway) -> None:
    """``httpx-sse`` on ``{"stream": true}`` (pcm): every event parses, each event name is
    its ``data``'s ``type``, ``speech.audio.delta`` events (base64 pcm) come first, the first
    well before ``speech.audio.done``, whose usage counts the frames of the decoded audio."""
    body = {"model": MODEL, "voice": "serena", "input": LONG_TEXT, "response_format": "pcm"}
    received: list[tuple[float, str, dict[str, Any]]] = []
    with httpx.Client(timeout=PATIENCE) as client:
        start = time.monotonic()
        with httpx_sse.connect_sse(
            client, "POST", f"{gateway.base_url}/audio/speech", json={**body, "stream": True}
        ) as source:
            assert source.response.status_code == 200
            for sse in source.iter_sse():
                received.append((time.monotonic() - start, sse.event, sse.json()))
    names = [name for _, name, _ in received]
    assert [data["type"] for _, _, data in received] == names
    assert names[-1] == "speech.audio.done"
    assert set(names[:-1]) == {"speech.audio.delta"}
    assert len(names) >= 3, names
    assert received[0][0] * 4 < received[-1][0], (received[0][0], received[-1][0])
    audio = b"".join(base64.b64decode(data["audio"]) for _, _, data in received[:-1])
    assert len(audio) // 2 == pcm_samples(gateway, LONG_TEXT, "serena")
    assert received[-1][2]["usage"]["output_tokens"] == len(audio) // FRAME_BYTES


# The request shapes of popular clients.


def test_open_webui_whole_file(gateway: DemoGateway) -> None:
    """Open WebUI's OpenAI TTS engine (replayed from ``backend/open_webui/routers/audio.py``
    and ``src/lib/apis/audio/index.ts``, open-webui commit 01fb3e46): the browser posts
    ``{input, voice}``, the backend adds ``model`` and posts that JSON with a Bearer key via
    aiohttp, reads the whole body and caches it as ``<hash>.mp3``. With no
    ``response_format`` the file is vLLM-Omni's WAV (browsers sniff it and play it), whole:
    a ``Content-Length`` answer, 24 kHz, as long as the text's pcm."""
    payload = {"input": SENTENCES[0], "voice": "vivian", "model": MODEL}
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-webui-user"}
    with httpx.Client(timeout=PATIENCE) as client:
        response = client.post(f"{gateway.base_url}/audio/speech", json=payload, headers=headers)
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    samples, rate, container = decode(response.content)
    assert (container, rate) == ("WAV", SAMPLE_RATE)
    assert len(samples) == pcm_samples(gateway, SENTENCES[0])


async def home_assistant_tts(client: AsyncOpenAI, message: str) -> bytes:
    """Home Assistant's ``OpenAITTSEntity.async_get_tts_audio``, replayed from
    ``homeassistant/components/openai_conversation/tts.py`` (home-assistant/core commit
    057855a9): default format mp3, speed 1.0, ``instructions=str(prompt)`` ("None" with no
    prompt), the whole streamed body gathered."""
    async with client.audio.speech.with_streaming_response.create(
        model=MODEL,
        voice="vivian",
        input=message,
        instructions="None",
        speed=1.0,
        response_format="mp3",
    ) as response:
        data = bytearray()
        async for chunk in response.iter_bytes():
            data.extend(chunk)
    return bytes(data)


def home_assistant_at_once(gateway: DemoGateway, max_retries: int) -> list[bytes | BaseException]:
    """The three sentences through ``home_assistant_tts``, all three sent at once."""

    async def run() -> list[bytes | BaseException]:
        async with AsyncOpenAI(
            api_key="sk-x", base_url=gateway.base_url, max_retries=max_retries, timeout=PATIENCE
        ) as client:
            return await asyncio.gather(
                *(home_assistant_tts(client, s) for s in SENTENCES), return_exceptions=True
            )

    return asyncio.run(run())


def test_home_assistant_three_sentences_at_once_queue_by_default(gateway: DemoGateway) -> None:
    """Three Home Assistant requests at once with ``max_retries=0`` on the one GPU slot and
    the gateway's defaults: all three get their mp3, no 503 — two waited in the queue, each
    taking the slot as the one before freed it."""
    busy_before = sum(1 for e in gateway.access() if e.get("slot") == "busy")
    results = home_assistant_at_once(gateway, max_retries=0)
    assert all(isinstance(r, bytes) for r in results), results
    for data in results:
        assert isinstance(data, bytes)
        assert decode(data)[1:] == (SAMPLE_RATE, "MP3")
    assert sum(1 for e in gateway.access() if e.get("slot") == "busy") == busy_before
    waits = sorted(
        e["queue_wait"] for e in gateway.access()[-3:] if e["path"] == "/v1/audio/speech"
    )
    assert len(waits) == 3
    assert waits[0] < 0.1 < waits[1] < waits[2], waits


def test_home_assistant_three_sentences_at_once_without_retries(
    no_queue_gateway: DemoGateway,
) -> None:
    """Three Home Assistant requests at once with ``max_retries=0`` on the one GPU slot and
    ``--queue-timeout 0``: one gets its mp3 (decodes at 24 kHz), the other two
    ``openai.APIStatusError`` 503 whose body is the gateway's ``gpu_busy`` envelope with
    ``Retry-After`` — what HA raises as ``HomeAssistantError``. Nothing lost silently."""
    gateway = no_queue_gateway
    results = home_assistant_at_once(gateway, max_retries=0)
    audio = [r for r in results if isinstance(r, bytes)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert (len(audio), len(refused)) == (1, 2), results
    samples, rate, container = decode(audio[0])
    assert (container, rate) == ("MP3", SAMPLE_RATE)
    assert len(samples) > SAMPLE_RATE // 2
    for error in refused:
        assert error.status_code == 503
        body = error_body(error)
        assert (body["type"], body["code"], body["provider"]) == ("gpu_busy",) * 2 + ("aistack",)
        assert 1 <= int(error.response.headers["retry-after"]) <= 60


def test_home_assistant_three_sentences_at_once_with_sdk_retries(
    no_queue_gateway: DemoGateway,
) -> None:
    """The same three requests with the SDK's default two retries (HA's client) and
    ``--queue-timeout 0``: all three get their sentence as mp3, each as long as that
    sentence's pcm, after the gateway refused at least two attempts with 503 and the SDK
    waited as ``retry-after-ms`` told it. The gateway has seen each sentence once first, as
    a gateway that has been serving has: its estimate comes from recent calls."""
    gateway = no_queue_gateway
    with OpenAI(api_key="sk-x", base_url=gateway.base_url, timeout=PATIENCE) as client:
        for sentence in SENTENCES:
            client.audio.speech.create(model=MODEL, voice="vivian", input=sentence)
    busy_before = sum(1 for e in gateway.access() if e.get("slot") == "busy")
    results = home_assistant_at_once(gateway, max_retries=2)
    assert all(isinstance(r, bytes) for r in results), results
    for data, sentence in zip(results, SENTENCES, strict=True):
        assert isinstance(data, bytes)
        samples, rate, container = decode(data)
        assert (container, rate) == ("MP3", SAMPLE_RATE)
        assert abs(len(samples) - pcm_samples(gateway, sentence)) <= 1152
    busy = sum(1 for e in gateway.access() if e.get("slot") == "busy") - busy_before
    assert busy >= 2, busy


def test_pipecat_openai_tts_service(gateway: DemoGateway) -> None:
    """pipecat's ``OpenAITTSService.run_tts`` (replayed from pipecat-ai 1.14.0,
    ``pipecat/services/openai/tts.py``): ``AsyncOpenAI`` ``with_streaming_response.create(
    input, model, voice, response_format="pcm")`` read with ``iter_bytes(chunk_size)``. It
    sends no ``stream_format``, so vLLM-Omni answers the whole pcm file at once (a
    ``Content-Length`` answer) that pipecat cuts into 24 kHz frames. pipecat only lets
    through OpenAI voice names: its default ``alloy`` gets the upstream's own 400 verbatim
    (``Invalid voice``), which pipecat turns into an ``ErrorFrame``; a Qwen3 voice
    (``uncle_fu``) needs a subclass that skips that check, and then gets its audio."""

    async def run(voice: str) -> tuple[Any, bytes]:
        async with (
            AsyncOpenAI(api_key="sk-x", base_url=gateway.base_url) as client,
            client.audio.speech.with_streaming_response.create(
                input=MP3_TEXT, model=MODEL, voice=voice, response_format="pcm"
            ) as r,
        ):
            assert r.status_code == 200
            chunks = [c async for c in r.iter_bytes(FRAME_BYTES)]
            return r.headers, b"".join(chunks)

    headers, pcm = asyncio.run(run("uncle_fu"))
    assert headers["content-type"] == "audio/pcm"
    assert int(headers["content-length"]) == len(pcm)
    assert len(pcm) // 2 == pcm_samples(gateway, MP3_TEXT, "uncle_fu")

    with pytest.raises(openai.BadRequestError) as caught:
        asyncio.run(run("alloy"))
    body = error_body(caught.value)
    assert "provider" not in body
    assert body["message"].startswith("Invalid voice 'alloy'")


async def livekit_synthesize(base_url: str, response_format: str) -> tuple[str, bytes]:
    """LiveKit Agents' OpenAI ``TTS`` + ``ChunkedStream._run``, replayed from
    livekit-plugins-openai 1.8.9 (``livekit/plugins/openai/tts.py``): ``AsyncClient`` with
    ``max_retries=0`` and its own timeouts, speed 1.0, ``stream_format="sse"`` for every model
    but tts-1, the body read as SSE (``data: `` lines, ``delta`` or ``audio``) when the answer
    is ``text/event-stream``, else as audio bytes. The content type and the audio."""
    http_client = httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
        follow_redirects=True,
        limits=httpx2.Limits(
            max_connections=50, max_keepalive_connections=50, keepalive_expiry=120
        ),
    )
    async with (
        AsyncOpenAI(
            api_key="sk-x", base_url=base_url, max_retries=0, http_client=http_client
        ) as client,
        client.audio.speech.with_streaming_response.create(
            input=SENTENCES[1],
            model=MODEL,
            voice="dylan",
            response_format=response_format,  # type: ignore[arg-type]
            speed=1.0,
            instructions=openai.omit,
            stream_format="sse",
            timeout=httpx2.Timeout(30, connect=10.0),
        ) as stream,
    ):
        media_type = stream.headers.get("content-type", "").split(";")[0].strip().lower()
        audio = bytearray()
        if media_type != "text/event-stream":
            async for chunk in stream.iter_bytes():
                audio.extend(chunk)
            return media_type, bytes(audio)
        async for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("type") == "speech.audio.delta":
                audio.extend(base64.b64decode(event.get("delta", "") or event["audio"]))
        return media_type, bytes(audio)


def test_livekit_mp3_is_refused_and_pcm_streams_as_sse(gateway: DemoGateway) -> None:
    """LiveKit's OpenAI TTS with its default mp3 asks for SSE (``stream_format="sse"``), which
    vLLM-Omni streams only as pcm or wav: the upstream's own 400 reaches LiveKit verbatim as
    ``APIStatusError`` (``max_retries=0``: one attempt). With ``response_format="pcm"`` the
    same client gets ``text/event-stream`` whose deltas are the sentence's whole pcm."""
    with pytest.raises(openai.BadRequestError) as caught:
        asyncio.run(livekit_synthesize(gateway.base_url, "mp3"))
    body = error_body(caught.value)
    assert "provider" not in body
    assert body["code"] == 400
    refused = [e for e in gateway.access() if e.get("status") == 400]
    assert refused, "the refusal did not come from one request through the gateway"

    media_type, pcm = asyncio.run(livekit_synthesize(gateway.base_url, "pcm"))
    assert media_type == "text/event-stream"
    assert len(pcm) // 2 == pcm_samples(gateway, SENTENCES[1], "dylan")
