"""The demo upstream's request validation (vLLM-Omni's answers); voices are in test_voices."""

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


# FastAPI validates the body with OpenAICreateSpeechRequest
# (vllm_omni/entrypoints/openai/protocol/audio.py @ 0131cb556045); vLLM's validation handler
# answers 400 "Bad Request" with the error list (vllm/entrypoints/openai/server_utils.py).


def schema_error(demo: Demo, **fields: Any) -> str:
    error = demo.error(demo.speech(**fields), 400)
    assert (error["type"], error["param"]) == ("Bad Request", None)
    message: str = error["message"]
    return message


@pytest.mark.parametrize("response_format", ["aac", "ogg", "MP3"])
def test_unsupported_format_is_a_literal_error(response_format: str) -> None:
    """aac (which OpenAI has and vLLM-Omni not) and other names fail the Literal."""
    message = schema_error(Demo(), input="Hi", response_format=response_format)
    assert "'type': 'literal_error', 'loc': ('body', 'response_format')" in message
    assert "'msg': \"Input should be 'wav', 'pcm', 'flac', 'mp3' or 'opus'\"" in message


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


@pytest.mark.parametrize(
    ("speed", "kind"),
    [
        (0.2, "greater_than_equal"),
        (4.5, "less_than_equal"),
        (0, "greater_than_equal"),
        ("fast", "float_parsing"),
    ],
)
def test_speed_out_of_range(speed: object, kind: str) -> None:
    """Speed is a float in 0.25..4.0 (``Field(ge=0.25, le=4.0)``)."""
    message = schema_error(Demo(), input="Hi", speed=speed)
    assert f"'type': '{kind}', 'loc': ('body', 'speed')" in message


def test_lax_mode_takes_strings() -> None:
    """Lax pydantic: ``"2"`` is a speed and ``"false"`` a stream flag, as in FastAPI."""
    Demo(rtf=0).audio(input="Hi", speed="2", stream="false")


def test_speed_limits_are_inclusive() -> None:
    """0.25 and 4.0 themselves are fine."""
    demo = Demo()
    demo.audio(input="Hi", speed=0.25)
    demo.audio(input="Hi", speed=4.0)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [({}, "missing"), ({"input": None}, "string_type"), ({"input": 42}, "string_type")],
    ids=["missing", "null", "number"],
)
def test_bad_input(fields: dict[str, Any], kind: str) -> None:
    """``input`` is a required string (``input: str``)."""
    message = schema_error(Demo(), **fields)
    assert f"'type': '{kind}', 'loc': ('body', 'input')" in message


def test_blank_input() -> None:
    """Blank input is refused by the server's own check, in its words."""
    demo = Demo()
    assert demo.error(demo.speech(input="   "), 400)["message"] == "Input text cannot be empty"


def test_long_input_is_accepted() -> None:
    """``input`` has no length limit in the schema: 5000 characters are spoken."""
    Demo(rtf=0).audio(input="a " * 2500, speed=4.0)


@pytest.mark.parametrize(
    ("extra", "entry"),
    [
        ({"stream": "maybe"}, "'type': 'bool_parsing', 'loc': ('body', 'stream')"),
        (
            {"stream_format": "websocket"},
            "'type': 'literal_error', 'loc': ('body', 'stream_format')",
        ),
        ({"voice": 7}, "'type': 'string_type', 'loc': ('body', 'voice')"),
    ],
)
def test_other_schema_errors(extra: dict[str, Any], entry: str) -> None:
    """Bad stream flags and voice types are schema errors."""
    assert entry in schema_error(Demo(), input="Hi", **extra)


def test_unknown_model_is_404() -> None:
    """vLLM's ``_check_model``: NotFoundError, param ``model``."""
    demo = Demo()
    error = demo.error(demo.speech(input="Hi", model="tts-1"), 404)
    assert error == {
        "message": "The model `tts-1` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


def test_served_model_and_language_are_accepted() -> None:
    """Naming the served model and a supported language is fine."""
    Demo().audio(input="Hi", model="Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", language="English")


@pytest.mark.parametrize("raw", [b"{nope", b"[1, 2]", b"\xff\xfe"])
def test_body_that_is_not_a_json_object(raw: bytes) -> None:
    """Broken JSON or a JSON array is a 400 in the same shape."""
    demo = Demo()
    demo.error(demo.post("/v1/audio/speech", raw), 400)


# Routing answers (404, 405, redirects, HEAD, CORS) are in tests/demo/test_routing.py;
# the voices API is in tests/demo/test_voices.py.
