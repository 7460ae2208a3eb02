"""The demo upstream's request validation (vLLM-Omni's answers) and its voice registry."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import soundfile

from aistack_tts_demo import VOICES, APIError
from aistack_tts_demo._synth import (
    SAMPLE_RATE,
    wav_header,
)
from aistack_tts_demo._voices import MAX_VOICE_SAMPLE_BYTES, parse_voice_upload
from support.demo import MULTIPART, TEXT, Demo, Wire, advance, check_error, multipart, silent_wav

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
