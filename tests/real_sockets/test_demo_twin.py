"""The demo as a twin of vLLM-Omni, seen through a real ``twist aistack-tts --demo`` process.

Each test is one row of ``docs/compatibility.rst``: what a client of the real server relies on,
asked of the gateway on 127.0.0.1 with the standard library's HTTP client, the way a client
would ask it. Audio is decoded with ``soundfile`` (libsndfile), a standard decoder.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import soundfile

from testbed.processes import wait_listening

pytestmark = pytest.mark.real_sockets

SAMPLE_RATE = 24_000
TEXT = "Hello from aistack. The quick brown fox jumps over the lazy dog."


def post(port: int, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return connection.getresponse()


def speech(port: int, **fields: Any) -> tuple[http.client.HTTPResponse, bytes]:
    response = post(port, "/v1/audio/speech", {"input": TEXT, **fields})
    return response, response.read()


def vllm_error(response: http.client.HTTPResponse, body: bytes, status: int) -> str:
    """``body`` is vLLM's ErrorResponse for ``status``; its message."""
    assert response.status == status, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    message: str = error["message"]
    return message


def test_stream_true_is_server_sent_events_with_event_lines(demo_gateway_port: int) -> None:
    """``stream: true`` alone answers SSE: an ``event:`` and a ``data:`` line per event, base64
    pcm deltas naming their format, then ``speech.audio.done`` with vLLM-Omni's usage."""
    response, body = speech(demo_gateway_port, stream=True, response_format="pcm")
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        event = json.loads(data_line[len("data: ") :])
        assert event["type"] == event_line[len("event: ") :]
        events.append(event)
    *deltas, done = events
    assert deltas
    assert {d["type"] for d in deltas} == {"speech.audio.delta"}
    assert {d["response_format"] for d in deltas} == {"pcm"}
    pcm = b"".join(base64.b64decode(d["audio"]) for d in deltas)
    assert len(pcm) > SAMPLE_RATE  # more than half a second of 16-bit audio
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    details = usage["input_token_details"]
    assert usage["input_tokens"] == details["text_tokens"] + details["audio_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_format_audio_streams_raw_pcm_as_it_is_made(demo_gateway_port: int) -> None:
    """``stream_format: "audio"`` (no ``stream``) sends raw pcm as it is made: the first bytes
    come long before the last (the real first chunk is one 80 ms codec frame)."""
    started = time.monotonic()
    response = post(
        demo_gateway_port,
        "/v1/audio/speech",
        {"input": TEXT, "stream_format": "audio", "response_format": "pcm"},
    )
    assert response.status == 200
    assert response.getheader("content-type") == "audio/pcm"
    first = response.read1(65536)
    first_at = time.monotonic() - started
    rest = response.read()
    total_at = time.monotonic() - started
    assert first
    assert len(first + rest) > 2 * SAMPLE_RATE  # over a second of audio
    assert first_at < total_at / 2, (first_at, total_at)


@pytest.mark.parametrize(
    ("response_format", "content_type", "container"),
    [
        ("mp3", "audio/mpeg", "MP3"),
        ("flac", "audio/flac", "FLAC"),
        ("opus", "audio/ogg", "OGG"),
        ("wav", "audio/wav", "WAV"),
    ],
)
def test_every_format_decodes_at_24k_and_the_right_length(
    demo_gateway_port: int, response_format: str, content_type: str, container: str
) -> None:
    """wav, flac, mp3 and opus (in ogg) are made and decode in libsndfile at 24 kHz mono, as
    long as the pcm of the same request (an encoder may pad a frame or two)."""
    _, pcm = speech(demo_gateway_port, response_format="pcm")
    response, body = speech(demo_gateway_port, response_format=response_format)
    assert response.status == 200, body
    assert response.getheader("content-type") == content_type
    info = soundfile.info(io.BytesIO(body))
    assert info.format == container
    assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
    samples, rate = soundfile.read(io.BytesIO(body), dtype="int16")
    assert rate == SAMPLE_RATE
    assert abs(len(samples) - len(pcm) // 2) < 0.1 * SAMPLE_RATE


def test_usage_headers_on_a_whole_file(demo_gateway_port: int) -> None:
    """A non-streamed answer carries vLLM-Omni's five usage headers, consistent with each other."""
    response, _ = speech(demo_gateway_port)
    assert response.status == 200
    value = {
        name: int(response.getheader(f"x-vllm-omni-{name}-tokens") or "-1")
        for name in ("input", "output", "total", "input-text", "input-audio")
    }
    assert value["input-text"] > 0
    assert value["output"] > 0
    assert value["input-audio"] == 0
    assert value["input"] == value["input-text"] + value["input-audio"]
    assert value["total"] == value["input"] + value["output"]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"stream": True, "response_format": "pcm", "speed": 1.5}, "speed"),
        ({"stream_format": "audio", "response_format": "pcm", "speed": 2.0}, "speed"),
        ({"stream": True, "response_format": "mp3"}, "response_format='pcm' or 'wav'"),
    ],
)
def test_streaming_refusals(demo_gateway_port: int, fields: dict[str, Any], says: str) -> None:
    """Streaming with a speed other than 1.0, or in a format other than pcm/wav, is a 400."""
    response, body = speech(demo_gateway_port, **fields)
    assert says in vllm_error(response, body, 400)


def test_voice_and_language_matching(demo_gateway_port: int) -> None:
    """Voices match case-insensitively (``"default"`` is no voice); language is title-cased;
    an unknown voice is ``Invalid voice '…'`` with the lowercase sorted list."""
    for fields in ({"voice": "RYAN"}, {"voice": "default"}, {"language": "english"}):
        response, body = speech(demo_gateway_port, **fields)
        assert response.status == 200, (fields, body)
    response, body = speech(demo_gateway_port, voice="alloy")
    message = vllm_error(response, body, 400)
    assert message.startswith("Invalid voice 'alloy'. Supported: aiden, dylan, eric,")


def upload(port: int, name: str, sample: bytes, **fields: str) -> tuple[int, Any]:
    boundary = "twin-boundary-51c0"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in {"name": name, "consent": "consent-1", **fields}.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio_sample"; '
        f'filename="me.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
        + sample
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    connection.request("POST", "/v1/audio/voices", body, headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def wav(seconds: float) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, [0.0] * round(seconds * SAMPLE_RATE), SAMPLE_RATE, format="WAV")
    return out.getvalue()


def test_voices_as_the_customvoice_checkpoint(demo_gateway_port: int) -> None:
    """Upload needs 1-30 s of decodable audio, refused with vLLM's error body at HTTP 400 (the
    route's ``_create_speech_error_json_response``, api_server.py); a same
    name replaces; the CustomVoice checkpoint refuses to speak an uploaded voice; DELETE of an
    unknown voice is vLLM-Omni's ``{"success": false, "error": ...}`` 404."""
    status, body = upload(demo_gateway_port, "twin", b"abc")
    assert (status, body["error"]["code"]) == (400, 400)
    assert body["error"]["message"].startswith("Could not decode audio file")
    status, body = upload(demo_gateway_port, "twin", wav(0.5))
    assert (status, body["error"]["code"]) == (400, 400)
    assert "too short" in body["error"]["message"]
    assert upload(demo_gateway_port, "twin", wav(2))[0] == 200
    status, body = upload(demo_gateway_port, "TWIN", wav(3), ref_text="Hello.")
    assert status == 200, body
    assert body["voice"]["ref_text"] == "Hello."

    response, raw = speech(demo_gateway_port, voice="twin")
    assert "CustomVoice checkpoint does not support task_type='Base'" in vllm_error(
        response, raw, 400
    )

    connection = http.client.HTTPConnection("127.0.0.1", demo_gateway_port, timeout=30)
    connection.request("DELETE", "/v1/audio/voices/twin")
    assert json.loads(connection.getresponse().read())["success"] is True
    connection.request("DELETE", "/v1/audio/voices/twin")
    gone = connection.getresponse()
    assert gone.status == 404
    assert json.loads(gone.read()) == {"success": False, "error": "Voice 'twin' not found"}


def test_batch_through_the_gateway(demo_gateway_port: int) -> None:
    """``POST /v1/audio/speech/batch``: shared defaults, per-item overrides, an item that fails
    its checks is an ``error`` result, successes carry base64 audio that decodes, and usage."""
    items = [{"input": "Hello."}, {"input": "Bye.", "response_format": "mp3"}, {"input": " "}]
    response = post(demo_gateway_port, "/v1/audio/speech/batch", {"items": items, "voice": "ryan"})
    assert response.status == 200
    answer = json.loads(response.read())
    assert (answer["total"], answer["succeeded"], answer["failed"]) == (3, 2, 1)
    first, second, third = answer["results"]
    assert (first["media_type"], second["media_type"]) == ("audio/wav", "audio/mpeg")
    for result in (first, second):
        info = soundfile.info(io.BytesIO(base64.b64decode(result["audio_data"])))
        assert info.samplerate == SAMPLE_RATE
        assert result["usage"]["output_tokens"] > 0
    # SpeechBatchItemResult.model_dump(): every key, the unset ones null
    # (vllm_omni/entrypoints/openai/protocol/audio.py @ 0131cb556045).
    assert third == {
        "index": 2,
        "status": "error",
        "audio_data": None,
        "media_type": None,
        "error": "Input text cannot be empty",
        "usage": None,
    }


def test_health_and_models_on_the_demo_upstream() -> None:
    """``twist aistack-tts-demo-upstream`` answers ``GET /health`` (compose.yaml's check) and
    ``GET /v1/models`` as vLLM does."""
    twist = str(Path(sys.executable).parent / "twist")
    process = subprocess.Popen(
        [twist, "aistack-tts-demo-upstream", "--listen", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = wait_listening(process, "the demo upstream")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        health = connection.getresponse()
        # vLLM's /health (vllm/entrypoints/serve/instrumentator/health.py @ 98b137c61dcf),
        # registered by build_app before vLLM-Omni's router, answers first: an empty 200.
        assert (health.status, health.read()) == (200, b"")
        connection.request("GET", "/v1/models")
        models = connection.getresponse()
        assert models.status == 200
        listing = json.loads(models.read())
        assert listing["object"] == "list"
        assert [m["id"] for m in listing["data"]] == ["Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"]
    finally:
        process.terminate()
        process.wait(timeout=15)
