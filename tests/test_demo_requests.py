"""The demo upstream's request validation (vLLM-Omni's answers); voices are in test_demo_voices."""

from __future__ import annotations

import io
from typing import Any

import pytest
import soundfile

from aistack_tts_demo import VOICES
from aistack_tts_demo._synth import (
    SAMPLE_RATE,
)
from support.demo import TEXT, Demo

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


# Routing answers (404, 405, redirects, HEAD, CORS) are in tests/test_demo_routing.py;
# the voices API is in tests/test_demo_voices.py.
