"""``POST /v1/audio/speech``: the request body checked, in the order vLLM-Omni checks it.

The step between the routes and the audio: ``parse_speech_request`` (and, for one WebSocket
utterance, ``prepare_stream_speech``) turn a body into a ``SpeechRequest`` or raise
``APIError``; ``usage`` and ``usage_headers`` count what an answer cost. Plain functions.

The order mirrors vllm-project/vllm-omni: FastAPI and pydantic first (``_framework`` with
``_speech_models``), then ``create_speech`` (``serving_speech.py`` @ 1a48fce52460), then the
Qwen3-TTS adapter's ``validate`` (``tts_adapters/qwen3_tts.py`` @ 078de2d14c2f).
"""

from __future__ import annotations

import re
from typing import Any

from attrs import frozen

from ._api_error import APIError, not_found
from ._framework import Endpoint, json_request
from ._profiles import VoiceProfile
from ._speech_models import OpenAICreateSpeechRequest
from ._stream_config import StreamConfig, StreamError
from ._synth import SAMPLE_RATE
from ._voices import VoiceRegistry

#: The model the real container serves; requests naming another model get 404, as from vLLM.
MODEL_NAME = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
#: The speaker ``_build_tts_params`` picks when a CustomVoice request names none.
DEFAULT_VOICE = "vivian"
#: ``_TTS_MAX_INSTRUCTIONS_LENGTH`` and the adapter's ``max_new_tokens`` bounds.
MAX_INSTRUCTIONS_CHARS = 500
MAX_NEW_TOKENS = 4096
#: ``_build_tts_params``: the codec-frame budget when the request sets none.
DEFAULT_MAX_NEW_TOKENS = 2048
#: ``Qwen3TTSAdapter.supported_output_sample_rates``.
SAMPLE_RATES = (8000, 24000)
#: The checkpoint's ``talker_config.codec_language_id`` keys, title-cased, and ``Auto``
#: (``_load_supported_languages``): its two Chinese dialects are languages too.
LANGUAGES = (
    "Auto",
    "Beijing_Dialect",
    "Chinese",
    "English",
    "French",
    "German",
    "Italian",
    "Japanese",
    "Korean",
    "Portuguese",
    "Russian",
    "Sichuan_Dialect",
    "Spanish",
)

#: Where FastAPI says the route is: ``vllm_omni/entrypoints/openai/api_server.py`` @
#: 005fd8eae138, the line of ``create_speech``'s first decorator (``@router.post(``).
SPEECH_ENDPOINT = Endpoint(
    function="create_speech", line=1065, method="POST", path="/v1/audio/speech"
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
    #: The rate the answer is resampled to (24 kHz is the model's own).
    sample_rate: int = SAMPLE_RATE
    #: At most this many codec frames are generated; ``None`` is the server's budget.
    max_new_tokens: int | None = None

    @property
    def stream(self) -> bool:
        """Whether the answer is sent as it is made."""
        return self.streaming != "none"

    @property
    def sse(self) -> bool:
        """Server-sent events (base64 deltas) rather than raw audio bytes."""
        return self.streaming == "sse"

    @property
    def max_frames(self) -> int:
        """The codec-frame budget: where the audio stops if the text is longer."""
        return self.max_new_tokens if self.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS

    @property
    def text_tokens(self) -> int:
        """The input's tokens as usage counts them (``input`` plus ``instructions``)."""
        return text_tokens(self.input) + text_tokens(self.instructions)


_WORD = re.compile(r"\w+|[^\w\s]")


def text_tokens(text: str) -> int:
    """A stable stand-in for the tokenizer: one token per word or punctuation mark."""
    return len(_WORD.findall(text))


def _bad(message: str) -> APIError:
    """The 400 of vLLM's ``create_error_response(message)``: 400 ``BadRequestError``, no param."""
    return APIError(message)


def sample_rate_error(sample_rate: int | None) -> APIError | None:
    """``_validate_speech_sample_rate``: only the adapter's output rates."""
    if sample_rate is None or sample_rate in SAMPLE_RATES:
        return None
    rates = ", ".join(str(rate) for rate in SAMPLE_RATES)
    return _bad(
        f"sample_rate={sample_rate} is not supported by the current TTS model; "
        f"supported rates: {rates}"
    )


def check_qwen3(request: OpenAICreateSpeechRequest, voices: VoiceRegistry) -> VoiceProfile:
    """``Qwen3TTSAdapter.validate`` on the CustomVoice checkpoint; the voice to speak in.

    Normalizes ``request`` as the adapter does (voice lower-cased, language title-cased).
    """
    task_type = request.task_type
    if task_type is None and (request.ref_audio is not None or request.ref_text is not None):
        task_type = "Base"
    if request.voice is not None:
        request.voice = request.voice.lower()
        if voices.is_uploaded(request.voice):
            # A stored voice is spoken as a clone (task Base), whatever the request says.
            task_type = "Base"
    task_type = task_type or "CustomVoice"
    if task_type != "CustomVoice":
        raise _bad(
            f"Qwen3-TTS CustomVoice checkpoint does not support task_type='{task_type}'. "
            f"Use task_type='CustomVoice' or load the matching {task_type} checkpoint."
        )
    if not request.input or not request.input.strip():
        raise _bad("Input text cannot be empty")
    if request.language is not None:
        request.language = request.language.title()
        if request.language not in LANGUAGES:
            raise _bad(
                f"Invalid language '{request.language}'. Supported: {', '.join(sorted(LANGUAGES))}"
            )
    voice = voices.get(request.voice or DEFAULT_VOICE)
    if voice is None:
        raise _bad(f"Invalid voice '{request.voice}'. Supported: {', '.join(voices.names())}")
    if request.speaker_embedding is not None:
        # Only ref_audio / ref_text make a request Base; an embedding alone stays CustomVoice.
        raise _bad("'speaker_embedding' is only valid for Base task")
    if request.x_vector_only_mode is not None:
        raise _bad("'x_vector_only_mode' is only valid for Base task")
    if request.instructions and len(request.instructions) > MAX_INSTRUCTIONS_CHARS:
        raise _bad(f"Instructions too long (max {MAX_INSTRUCTIONS_CHARS} characters)")
    if request.max_new_tokens is not None and request.max_new_tokens > MAX_NEW_TOKENS:
        raise _bad(f"max_new_tokens cannot exceed {MAX_NEW_TOKENS}")
    return voice


def _streaming(request: OpenAICreateSpeechRequest) -> str:
    if request.is_raw_audio_stream():
        return "audio"
    return "sse" if request.is_sse_stream() else "none"


def speech_request(request: OpenAICreateSpeechRequest, voices: VoiceRegistry) -> SpeechRequest:
    """``_prepare_speech_generation``'s checks (sample rate, then the adapter's); the result."""
    error = sample_rate_error(request.sample_rate)
    if error is not None:
        raise error
    voice = check_qwen3(request, voices)
    return SpeechRequest(
        input=request.input,
        voice=voice,
        response_format=request.response_format,
        speed=1.0 if request.speed is None else request.speed,
        language=request.language or "Auto",
        streaming=_streaming(request),
        instructions=request.instructions or "",
        sample_rate=request.sample_rate or SAMPLE_RATE,
        max_new_tokens=request.max_new_tokens,
    )


def _default_voice(request: OpenAICreateSpeechRequest, voices: VoiceRegistry) -> None:
    # ``_is_default_voice``: "default" means no voice, unless a speaker has that name.
    voice = request.voice
    if voice is not None and voice.lower() == "default" and voices.get("default") is None:
        request.voice = None


def check_model(model: str | None, model_name: str) -> None:
    """The 404 of vLLM's ``_check_model``: a named model that is not the served one is a 404."""
    if model and model != model_name:
        raise not_found(f"The model `{model}` does not exist.", param="model")


def parse_speech_request(
    raw: bytes,
    content_type: str | None,
    voices: VoiceRegistry,
    model_name: str = MODEL_NAME,
) -> SpeechRequest:
    """Check a speech request in ``create_speech``'s order; raise ``APIError`` on a fault."""
    request = json_request(OpenAICreateSpeechRequest, raw, content_type, SPEECH_ENDPOINT)
    _default_voice(request, voices)
    error = sample_rate_error(request.sample_rate)
    if error is not None:
        raise error
    check_model(request.model, model_name)
    if request.is_streaming() and request.word_timestamps:
        raise _bad(
            "word_timestamps=true is currently supported by the WebSocket "
            "/v1/audio/speech/stream path. Use session.config with "
            "stream_audio=true and response_format='pcm'."
        )
    if request.word_timestamps:
        # The demo is a server launched without --forced-aligner.
        raise _bad("word_timestamps=true requires the server to be launched with --forced-aligner.")
    if request.is_streaming() and request.speed is not None and request.speed != 1.0:
        label = "Streaming" if request.is_raw_audio_stream() else "SSE streaming"
        raise _bad(
            f"{label} is not supported with speed adjustment. "
            "Use a non-streaming request or remove the speed parameter."
        )
    return speech_request(request, voices)


def prepare_stream_speech(
    config: StreamConfig, text: str, voices: VoiceRegistry, model_name: str = MODEL_NAME
) -> SpeechRequest:
    """One WebSocket utterance as the speech request vLLM-Omni makes of it, checked as one.

    The session's voice, language and task are refused here, at generation time
    (``_prepare_speech_generation``'s checks; the session's model was checked with its config).
    """
    try:
        request = OpenAICreateSpeechRequest.model_validate(config.speech_fields(text))
        _default_voice(request, voices)
        return speech_request(request, voices)
    except APIError as e:
        raise StreamError(e.message) from None
    except ValueError as e:
        raise StreamError(str(e)) from None


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
