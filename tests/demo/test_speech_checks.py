"""The demo's speech checks after the schema, its audio budget and rate, and its batch answer.

Each expectation is vLLM-Omni's: ``create_speech`` / ``create_speech_batch`` in
``vllm_omni/entrypoints/openai/serving_speech.py`` @ 1a48fce52460, the Qwen3-TTS adapter's
``validate`` in ``tts_adapters/qwen3_tts.py`` @ 078de2d14c2f, the models in
``protocol/audio.py`` @ 0131cb556045.
"""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import pytest
import soundfile

from aistack_tts_demo import APIError
from aistack_tts_demo._batch import speech_batch
from aistack_tts_demo._speech import MODEL_NAME, parse_speech_request
from aistack_tts_demo._synth import FRAME_BYTES, FRAME_SAMPLES
from aistack_tts_demo._voices import VoiceRegistry
from support.demo import TEXT, Demo, advance, sse_events


def refusal(status: int = 400, **fields: Any) -> dict[str, Any]:
    demo = Demo()
    error: dict[str, Any] = demo.error(demo.speech(**fields), status)
    return error


def message(**fields: Any) -> str:
    error = refusal(**fields)
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", None, 400)
    text: str = error["message"]
    return text


# --- create_speech, then the adapter -----------------------------------------------------


def test_streaming_needs_pcm_or_wav_in_the_models_words() -> None:
    """``validate_streaming_constraints`` (a model validator: a schema error)."""
    error = refusal(input="Hi", stream=True, response_format="mp3")
    assert error["type"] == "Bad Request"
    assert (
        "Value error, Streaming (stream=true, stream_format='audio', or stream_format='sse') "
        "requires response_format='pcm' or 'wav'. Got response_format='mp3'."
    ) in error["message"]


@pytest.mark.parametrize(
    ("fields", "label"),
    [({"stream": True}, "SSE streaming"), ({"stream_format": "audio"}, "Streaming")],
)
def test_streaming_refuses_speed(fields: dict[str, Any], label: str) -> None:
    """``_validate_speech_streaming_request``: each streaming mode names itself."""
    assert message(input="Hi", response_format="pcm", speed=1.5, **fields) == (
        f"{label} is not supported with speed adjustment. "
        "Use a non-streaming request or remove the speed parameter."
    )


def test_sample_rate_is_checked_before_the_model() -> None:
    """``_validate_speech_sample_rate`` runs before ``_check_model``; 8000 and 24000 only."""
    assert message(input="Hi", model="tts-1", sample_rate=44100) == (
        "sample_rate=44100 is not supported by the current TTS model; supported rates: 8000, 24000"
    )


def test_sample_rate_must_be_positive() -> None:
    """``SpeechSampleRate = Annotated[int, Field(gt=0)]``."""
    error = refusal(input="Hi", sample_rate=0)
    assert "'type': 'greater_than', 'loc': ('body', 'sample_rate')" in error["message"]


def test_word_timestamps_need_a_forced_aligner() -> None:
    """The demo is a server launched without ``--forced-aligner``."""
    assert message(input="Hi", word_timestamps=True) == (
        "word_timestamps=true requires the server to be launched with --forced-aligner."
    )


def test_word_timestamps_are_refused_when_streaming_first() -> None:
    assert message(input="Hi", word_timestamps=True, stream=True).startswith(
        "word_timestamps=true is currently supported by the WebSocket /v1/audio/speech/stream"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"task_type": "Base"},
        {"ref_audio": "data:x"},
        {"ref_text": "words"},
        {"references": [{"audio_path": "x"}]},
    ],
)
def test_the_checkpoint_refuses_base(fields: dict[str, Any]) -> None:
    """ref_audio / ref_text (also as ``references``) make a request Base, which the
    CustomVoice checkpoint refuses before any other check (even empty input)."""
    assert message(input=" ", **fields) == (
        "Qwen3-TTS CustomVoice checkpoint does not support task_type='Base'. "
        "Use task_type='CustomVoice' or load the matching Base checkpoint."
    )


def test_voice_design_is_refused_too() -> None:
    assert "task_type='VoiceDesign'" in message(input="Hi", task_type="VoiceDesign")


def test_dialects_are_languages() -> None:
    """``_load_supported_languages``: the checkpoint's ``codec_language_id``, title-cased."""
    Demo(rtf=0).audio(input="Hi", language="sichuan_dialect")
    assert message(input="Hi", language="klingon") == (
        "Invalid language 'Klingon'. Supported: Auto, Beijing_Dialect, Chinese, English, "
        "French, German, Italian, Japanese, Korean, Portuguese, Russian, Sichuan_Dialect, Spanish"
    )


def test_voice_as_object_or_speaker_and_default() -> None:
    """``voice`` also as ``speaker`` or ``{"id": ...}``; ``"default"`` is no voice."""
    demo = Demo(rtf=0)
    assert demo.audio(input="Hi", voice={"id": "Ryan"}) == demo.audio(input="Hi", speaker="ryan")
    assert demo.audio(input="Hi", voice="default") == demo.audio(input="Hi")
    assert "voice dict must contain 'id'" in refusal(input="Hi", voice={"name": "x"})["message"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"speaker_embedding": [0.1, 0.2]}, "'speaker_embedding' is only valid for Base task"),
        ({"x_vector_only_mode": False}, "'x_vector_only_mode' is only valid for Base task"),
        ({"instructions": "x" * 501}, "Instructions too long (max 500 characters)"),
        ({"max_new_tokens": 4097}, "max_new_tokens cannot exceed 4096"),
    ],
)
def test_adapter_checks(fields: dict[str, Any], expected: str) -> None:
    assert message(input="Hi", **fields) == expected


def test_speaker_embedding_schema_checks() -> None:
    assert (
        "'speaker_embedding' values must be finite"
        in refusal(input="Hi", speaker_embedding=[1e400])["message"]
    )
    assert (
        "mutually exclusive"
        in refusal(input="Hi", speaker_embedding=[0.1], ref_audio="data:x")["message"]
    )


def test_accepted_knobs() -> None:
    """seed, extra_params, initial_codec_chunk_frames and non_streaming_mode are accepted."""
    Demo(rtf=0).audio(
        input="Hi",
        seed=7,
        extra_params={"temperature": 0.5},
        initial_codec_chunk_frames=0,
        non_streaming_mode=False,
    )


def test_content_type_must_be_json() -> None:
    """vLLM's ``validate_json_request``."""
    with pytest.raises(APIError) as caught:
        parse_speech_request(b'{"input": "Hi"}', "text/plain", VoiceRegistry())
    assert "Unsupported Media Type: Only 'application/json' is allowed" in caught.value.message


# --- the audio ---------------------------------------------------------------------------


def test_max_new_tokens_stops_the_audio() -> None:
    """The codec-frame budget caps the audio (CustomVoice returns the truncated audio)."""
    demo = Demo(rtf=0)
    pcm = demo.audio(input=TEXT, response_format="pcm", max_new_tokens=3)
    assert len(pcm) == 3 * FRAME_BYTES
    response, _ = demo.finish(demo.speech(input=TEXT, response_format="pcm", max_new_tokens=3))
    assert response.headers.getRawHeaders("x-vllm-omni-output-tokens") == ["3"]


@pytest.mark.parametrize("response_format", ["wav", "flac"])
def test_sample_rate_resamples_the_file(response_format: str) -> None:
    """``CreateAudio(output_sample_rate=...)``: the whole file at the asked rate."""
    demo = Demo(rtf=0)
    full = soundfile.info(io.BytesIO(demo.audio(input=TEXT, response_format=response_format)))
    data = demo.audio(input=TEXT, response_format=response_format, sample_rate=8000)
    info = soundfile.info(io.BytesIO(data))
    assert info.samplerate == 8000
    assert info.frames == full.frames // 3


def test_sample_rate_resamples_the_stream_and_its_header() -> None:
    """Streamed wav at 8 kHz: the header says 8000, each frame is 640 samples."""
    demo = Demo(first_chunk_delay=0, rtf=0)
    body = demo.audio(input=TEXT, response_format="wav", stream_format="audio", sample_rate=8000)
    assert int.from_bytes(body[24:28], "little") == 8000
    assert (len(body) - 44) % (FRAME_SAMPLES // 3 * 2) == 0


def test_sse_json_is_compact_and_wav_header_is_its_own_delta() -> None:
    """``json.dumps(payload, separators=(",", ":"))``; the header a delta of its own."""
    demo = Demo(first_chunk_delay=0, rtf=0)
    body = demo.audio(input="Hi", response_format="wav", stream=True)
    data_lines = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert all(b'": ' not in line and b", " not in line for line in data_lines)
    events = sse_events(body)
    assert len(base64.b64decode(events[0]["audio"])) == 44
    assert len(base64.b64decode(events[1]["audio"])) == FRAME_BYTES
    assert events[-1]["type"] == "speech.audio.done"


# --- batch -------------------------------------------------------------------------------


def batch(body: dict[str, Any], content_type: str = "application/json") -> dict[str, Any]:
    return speech_batch(json.dumps(body).encode(), content_type, VoiceRegistry(), MODEL_NAME)


def test_batch_item_schema_error_fails_the_request() -> None:
    """Items are validated by FastAPI with the body: one bad item is a 400, not a result."""
    with pytest.raises(APIError) as caught:
        batch({"items": [{"input": "Hi"}, {"input": 5}]})
    assert caught.value.type == "Bad Request"
    assert "'loc': ('body', 'items', 1, 'input')" in caught.value.message


def test_batch_item_limit_is_a_bad_request() -> None:
    """``create_speech_batch``'s ValueError, answered as HTTPException(400) by the route."""
    with pytest.raises(APIError) as caught:
        batch({"items": [{"input": "Hi"}] * 33})
    assert (caught.value.type, caught.value.message) == (
        "Bad Request",
        "Batch contains 33 items, exceeding the maximum of 32.",
    )


def test_batch_results_merge_and_keys() -> None:
    """Items override the batch's defaults; "default" is not special in a batch; every
    result has every key; the id is ``speech-batch-`` and 32 hex digits."""
    answer = batch(
        {
            "voice": "ryan",
            "sample_rate": 8000,
            "items": [{"input": "Hi"}, {"input": "Hi", "voice": "default"}],
        }
    )
    assert re.fullmatch(r"speech-batch-[0-9a-f]{32}", answer["id"])
    ok, bad = answer["results"]
    assert set(ok) == set(bad) == {"index", "status", "audio_data", "media_type", "error", "usage"}
    info = soundfile.info(io.BytesIO(base64.b64decode(ok["audio_data"])))
    assert (ok["status"], ok["media_type"], info.samplerate) == ("success", "audio/wav", 8000)
    assert bad["error"].startswith("Invalid voice 'default'. Supported: aiden,")
    assert (answer["total"], answer["succeeded"], answer["failed"]) == (2, 1, 1)


def test_batch_route_answers_compact_json() -> None:
    """``JSONResponse(content=result.model_dump())``: Starlette's compact rendering."""
    demo = Demo(rtf=0)
    d = demo.post("/v1/audio/speech/batch", json.dumps({"items": [{"input": "Hi"}]}).encode())
    advance(demo.clock, 0)
    response, body = demo.finish(d)
    assert response.code == 200
    assert body.startswith(b'{"id":"speech-batch-')


def test_validation_errors_name_the_route_as_fastapi_does() -> None:
    """FastAPI's endpoint context: vLLM's ``utils.py`` (``with_cancellation`` wraps the
    route) and the line of the route's first decorator in
    ``vllm_omni/entrypoints/openai/api_server.py`` @ 005fd8eae138 (1065 and 1115)."""
    where = '/vllm/entrypoints/utils.py", line {}, in {}\n    POST {}'
    assert where.format(1065, "create_speech", "/v1/audio/speech") in refusal()["message"]
    with pytest.raises(APIError) as caught:
        batch({})
    assert where.format(1115, "create_speech_batch", "/v1/audio/speech/batch") in (
        caught.value.message
    )
