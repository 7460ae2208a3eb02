"""``POST /v1/audio/speech``: the request body checked, in the order vLLM-Omni checks it.

The step between the routes and the audio: ``parse_speech_request`` (and, for one WebSocket
utterance, ``prepare_stream_speech``) turn a body into a ``SpeechRequest`` or raise
``APIError``; ``usage`` and ``usage_headers`` count what an answer cost. Plain functions.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from ._api_error import APIError, json_object, not_found
from ._encode import RESPONSE_FORMATS
from ._encode import STREAM_FORMATS as _STREAMABLE
from ._profiles import VoiceProfile
from ._stream_config import StreamConfig, StreamError
from ._voices import VoiceRegistry

#: The model the real container serves; requests naming another model get 404, as from vLLM.
MODEL_NAME = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
DEFAULT_VOICE = "vivian"
MAX_INPUT_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_INSTRUCTIONS_CHARS = 500
STREAM_FORMATS = ("sse", "audio")
TASK_TYPES = ("CustomVoice", "VoiceDesign", "Base")
LANGUAGES = (
    "Auto",
    "Chinese",
    "English",
    "French",
    "German",
    "Italian",
    "Japanese",
    "Korean",
    "Portuguese",
    "Russian",
    "Spanish",
)


@frozen
class SpeechRequest:
    """A checked ``POST /v1/audio/speech`` body."""

    input: str
    voice: VoiceProfile
    response_format: str = "wav"
    speed: float = 1.0
    language: str = "Auto"
    #: ``"none"``, ``"sse"`` (``stream`` or ``stream_format: "sse"``) or ``"audio"``.
    streaming: str = "none"
    instructions: str = ""

    @property
    def stream(self) -> bool:
        """Whether the answer is sent as it is made."""
        return self.streaming != "none"

    @property
    def sse(self) -> bool:
        """Server-sent events (base64 deltas) rather than raw audio bytes."""
        return self.streaming == "sse"

    @property
    def text_tokens(self) -> int:
        """The input's tokens as usage counts them (``input`` plus ``instructions``)."""
        return text_tokens(self.input) + text_tokens(self.instructions)


_KINDS: dict[str, tuple[type, ...]] = {
    "a valid string": (str,),
    "a valid boolean": (bool,),
    "a valid number": (int, float),
}
_WORD = re.compile(r"\w+|[^\w\s]")


def text_tokens(text: str) -> int:
    """A stable stand-in for the tokenizer: one token per word or punctuation mark."""
    return len(_WORD.findall(text))


def _field(body: Mapping[str, Any], name: str, kind: str, default: Any) -> Any:
    """``body[name]`` if it is of ``kind`` (a key of ``_KINDS``), ``default`` if absent."""
    value = body.get(name)
    if value is None:
        return default
    # bool is an int to Python, not to JSON: a speed of ``true`` is as wrong as a stream of 1.
    wrong_bool = isinstance(value, bool) and kind != "a valid boolean"
    if wrong_bool or not isinstance(value, _KINDS[kind]):
        raise APIError(f"{name}: Input should be {kind}", param=name)
    return value


def _literal(body: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: Any) -> Any:
    """A ``Literal[...]`` field, refused in pydantic's words."""
    value = body.get(name)
    if value is None:
        return default
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise APIError(f"{name}: Input should be {choices}", param=name)
    return value


def _check_streaming(streaming: str, response_format: str, speed: float) -> None:
    if streaming == "none":
        return
    if response_format not in _STREAMABLE:
        raise APIError(
            "Value error, Streaming (stream=true, stream_format='audio', or stream_format='sse') "
            f"requires response_format='pcm' or 'wav'. Got response_format='{response_format}'."
        )
    if speed != 1.0:
        raise APIError(
            "Streaming is not supported with speed adjustment. "
            "Use stream=False or remove the speed parameter."
        )


def _checkpoint_refuses(task_type: str) -> APIError:
    return APIError(
        f"Qwen3-TTS CustomVoice checkpoint does not support task_type='{task_type}'. "
        "Use task_type='CustomVoice' or load the matching Base checkpoint."
    )


def parse_speech_request(
    raw: bytes, voices: VoiceRegistry, model_name: str = MODEL_NAME
) -> SpeechRequest:
    """Check a speech request body in the order vLLM-Omni does; raise ``APIError`` on a fault.

    The schema first (pydantic's ``OpenAICreateSpeechRequest``), then the model name, then the
    Qwen3-TTS checks of ``serving_speech.py`` (input, language, voice, task, instructions).
    """
    body = json_object(raw)

    if "input" not in body or body["input"] is None:
        raise APIError("input: Field required", param="input")
    text = _field(body, "input", "a valid string", "")
    if len(text) > MAX_INPUT_CHARS:
        raise APIError(
            f"input: String should have at most {MAX_INPUT_CHARS} characters, got {len(text)}",
            param="input",
        )
    response_format = _literal(body, "response_format", RESPONSE_FORMATS, "wav")
    speed = _field(body, "speed", "a valid number", 1.0)
    if not (math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED):
        raise APIError(
            f"speed: Input should be between {MIN_SPEED} and {MAX_SPEED}, got {speed}",
            param="speed",
        )
    stream = _field(body, "stream", "a valid boolean", False)
    stream_format = _literal(body, "stream_format", STREAM_FORMATS, None)
    task_type = _literal(body, "task_type", TASK_TYPES, None)
    instructions = _field(body, "instructions", "a valid string", "")
    # ``voice`` is also accepted as ``speaker``, or as an object with an ``id``.
    voice_value = body.get("voice", body.get("speaker"))
    if isinstance(voice_value, dict) and isinstance(voice_value.get("id"), str):
        voice_value = voice_value["id"]
    voice_name = _field({"voice": voice_value}, "voice", "a valid string", None)
    # The streaming switch (is_raw_audio_stream / is_sse_stream).
    if stream_format == "audio":
        streaming = "audio"
    elif stream or stream_format == "sse":
        streaming = "sse"
    else:
        streaming = "none"
    _check_streaming(streaming, response_format, float(speed))

    model = _field(body, "model", "a valid string", None)
    if model and model != model_name:
        raise not_found(f"The model `{model}` does not exist.", param="model")
    if "ref_audio" in body or "ref_text" in body or "speaker_embedding" in body:
        task_type = task_type or "Base"
    if voice_name is not None and voices.is_uploaded(voice_name):
        # An uploaded voice is a Base (voice clone) input, whatever the request says.
        task_type = "Base"
    if not text.strip():
        raise APIError("Input text cannot be empty")
    language = _field(body, "language", "a valid string", "Auto").title()
    if language not in LANGUAGES:
        raise APIError(f"Invalid language '{language}'. Supported: {', '.join(sorted(LANGUAGES))}")
    if task_type not in (None, "CustomVoice"):
        raise _checkpoint_refuses(task_type)
    voice = voices.get(DEFAULT_VOICE if voice_name in (None, "default") else voice_name)
    if voice is None:
        assert voice_name is not None
        raise APIError(
            f"Invalid voice '{voice_name.lower()}'. Supported: {', '.join(voices.names())}"
        )
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise APIError(f"Instructions too long (max {MAX_INSTRUCTIONS_CHARS} characters)")
    return SpeechRequest(
        input=text,
        voice=voice,
        response_format=response_format,
        speed=float(speed),
        language=language,
        streaming=streaming,
        instructions=instructions,
    )


def prepare_stream_speech(
    config: StreamConfig, text: str, voices: VoiceRegistry, model_name: str = MODEL_NAME
) -> SpeechRequest:
    """One WebSocket utterance as the speech request vLLM-Omni makes of it, checked as one.

    The session's voice, language and task are refused here, at generation time.
    """
    try:
        return parse_speech_request(
            json.dumps(config.speech_fields(text)).encode(), voices, model_name
        )
    except APIError as e:
        raise StreamError(e.message) from None


def usage(speech: SpeechRequest, frames: int) -> dict[str, Any]:
    """The ``usage`` of vLLM-Omni's ``speech.audio.done`` (and of each batch item)."""
    text = speech.text_tokens
    return {
        "input_tokens": text,
        "output_tokens": frames,
        "total_tokens": text + frames,
        "input_token_details": {"text_tokens": text, "audio_tokens": 0},
    }


def usage_headers(speech: SpeechRequest, frames: int) -> dict[bytes, bytes]:
    """The ``x-vllm-omni-*-tokens`` headers of a whole-file answer."""
    counts = usage(speech, frames)
    values = {
        b"input": counts["input_tokens"],
        b"output": frames,
        b"total": counts["total_tokens"],
        b"input-text": counts["input_token_details"]["text_tokens"],
        b"input-audio": 0,
    }
    return {b"x-vllm-omni-%s-tokens" % name: b"%d" % v for name, v in values.items()}
