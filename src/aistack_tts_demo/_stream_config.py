"""The WebSocket stream's ``session.config`` and text splitting, as vLLM-Omni has them.

``StreamingSpeechSessionConfig`` is a pydantic v2 model of the one in vllm-project/vllm-omni's
``protocol/audio.py`` (every field, alias, bound and its ``stream_audio`` check), validated in
pydantic's lax mode as the real handler does, so a refusal is pydantic's own text. Below it,
``SpeechTextSplitter`` (``speech_text_splitter.py``) and the three split granularities. No
I/O: plain functions and values, tested without a reactor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: ``_DEFAULT_IDLE_TIMEOUT`` and ``_DEFAULT_CONFIG_TIMEOUT`` of ``serving_speech_stream.py``.
IDLE_TIMEOUT = 30.0
CONFIG_TIMEOUT = 10.0
#: ``_MAX_CONFIG_MESSAGE_SIZE`` (a config may carry reference audio) and
#: ``_MAX_INPUT_TEXT_MESSAGE_SIZE``; both count characters of the text message.
MAX_CONFIG_CHARS = 4 * 1024 * 1024
MAX_TEXT_CHARS = 128 * 1024
#: What the WebSocket layer takes at all: uvicorn's default ``ws_max_size`` (16 MiB).
MAX_FRAME_BYTES = 16 * 1024 * 1024

GRANULARITIES = ("none", "sentence", "clause")
# protocol/audio.py's bounds: int fields fit an int64; an embedding has at most 8192 values.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MAX_EMBEDDING_DIM = 8192


class StreamError(Exception):
    """A client message the session cannot use; sent back as ``{"type": "error"}``."""


class StreamingSpeechSessionConfig(BaseModel):
    """A checked ``session.config``: how every utterance of the session is spoken.

    The fields in the real model's order (pydantic reports errors in that order); unknown
    fields are ignored, as pydantic's default is. The voice is a name, checked when an
    utterance is generated (as vLLM-Omni does).
    """

    model: str | None = None
    voice: str | None = Field(default=None, validation_alias=AliasChoices("voice", "speaker"))
    task_type: Literal["CustomVoice", "VoiceDesign", "Base"] | None = None
    language: str | None = None
    instructions: str | None = None
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus"] = "wav"
    speed: float | None = Field(default=1.0, ge=0.25, le=4.0)
    max_new_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=_INT64_MAX)
    non_streaming_mode: bool | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    speaker_embedding: list[float] | None = Field(default=None, max_length=_MAX_EMBEDDING_DIM)
    stream_audio: bool = False
    word_timestamps: bool = False
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    split_granularity: Literal["none", "sentence", "clause"] = "none"

    @model_validator(mode="after")
    def _streamed_audio_is_pcm_at_normal_speed(self) -> Self:
        if self.stream_audio:
            if self.response_format != "pcm":
                raise ValueError(
                    "WebSocket streaming audio (stream_audio=true) requires "
                    f"response_format='pcm'. Got response_format='{self.response_format}'."
                )
            if self.speed is None:
                self.speed = 1.0
            elif self.speed != 1.0:
                raise ValueError(
                    "WebSocket stream_audio=true currently requires speed=1.0; "
                    "native speed control is only available through HTTP streaming."
                )
        return self

    def speech_kwargs(self, text: str) -> dict[str, Any]:
        """What the real handler builds its ``OpenAICreateSpeechRequest`` of, in its order."""
        return {
            "input": text,
            "model": self.model,
            "voice": self.voice,
            "task_type": self.task_type,
            "language": self.language,
            "instructions": self.instructions,
            "response_format": self.response_format,
            "speed": self.speed,
            "max_new_tokens": self.max_new_tokens,
            "initial_codec_chunk_frames": self.initial_codec_chunk_frames,
            "non_streaming_mode": self.non_streaming_mode,
            "ref_audio": self.ref_audio,
            "ref_text": self.ref_text,
            "x_vector_only_mode": self.x_vector_only_mode,
            "speaker_embedding": self.speaker_embedding,
            "stream": self.stream_audio,
            "word_timestamps": self.word_timestamps,
            "seed": self.seed,
        }

    def speech_fields(self, text: str) -> dict[str, Any]:
        """The ``/v1/audio/speech`` body of one utterance of ``text``.

        ``speech_kwargs`` without its ``None`` values: the speech request's defaults for
        them are ``None`` too, except ``speed``'s (1.0), so ``speed`` stays even when null.
        """
        kwargs = self.speech_kwargs(text)
        return {k: v for k, v in kwargs.items() if v is not None or k == "speed"}

    def check_speech_request(self, text: str) -> None:
        """Raise the ``ValidationError`` the real speech request raises on being built.

        The two checks of ``OpenAICreateSpeechRequest`` a valid session config can still
        fail: a non-finite ``speaker_embedding`` value, and ``speaker_embedding`` with
        ``ref_audio``.
        """
        _SpeechRequestChecks(**self.speech_kwargs(text))


#: What the real code calls ``StreamingSpeechSessionConfig``: the session's config.
StreamConfig = StreamingSpeechSessionConfig


class _SpeechRequestChecks(BaseModel):
    """``OpenAICreateSpeechRequest``'s own checks of what a session config lets through."""

    model_config = ConfigDict(title="OpenAICreateSpeechRequest")

    ref_audio: str | None = None
    speaker_embedding: list[float] | None = None

    @field_validator("speaker_embedding")
    @classmethod
    def _finite(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and not all(math.isfinite(x) for x in values):
            raise ValueError("'speaker_embedding' values must be finite (no NaN or Inf)")
        return values

    @model_validator(mode="after")
    def _embedding_or_reference(self) -> Self:
        if self.speaker_embedding is not None and self.ref_audio is not None:
            raise ValueError("'speaker_embedding' and 'ref_audio' are mutually exclusive")
        return self


class ErrorInfo(BaseModel):
    """vLLM's ``ErrorInfo``: its ``repr`` (by class name) is part of a refusal's message."""

    message: str
    type: str
    param: str | None = None
    code: int


class _ErrorResponse(BaseModel):
    """vLLM's ``ErrorResponse``, whose ``str`` the handler sends for an unknown model."""

    error: ErrorInfo


def parse_stream_config(message: Mapping[str, Any], model_name: str) -> StreamConfig:
    """Check a ``session.config`` as the real handler's ``_build_config`` does.

    The schema (all of pydantic's errors, in its words), then the model name. Raises
    ``StreamError`` with the message the session sends back.
    """
    fields = {k: v for k, v in message.items() if k != "type"}
    try:
        config = StreamingSpeechSessionConfig(**fields)
    except ValidationError as e:
        raise StreamError(f"Invalid session config: {e}") from None
    if config.model and config.model != model_name:
        error = ErrorInfo(
            message=f"The model `{config.model}` does not exist.",
            type="NotFoundError",
            param="model",
            code=404,
        )
        raise StreamError(str(_ErrorResponse(error=error)))
    return config


def parse_message(raw: str) -> Mapping[str, Any]:
    """``_parse_message`` of the real handler: its size limits count characters."""
    if len(raw) > max(MAX_CONFIG_CHARS, MAX_TEXT_CHARS):
        raise StreamError("WebSocket message too large")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError:
        raise StreamError("Invalid JSON message") from None
    if not isinstance(message, dict):
        raise StreamError("WebSocket messages must be JSON objects")
    if message.get("type") == "session.config":
        if len(raw) > MAX_CONFIG_CHARS:
            raise StreamError("session.config message too large")
    elif len(raw) > MAX_TEXT_CHARS:
        raise StreamError("input.text message too large")
    return message


# --- SpeechTextSplitter ----------------------------------------------------------------------

# ASCII .!? are abbreviation-prone: they end a unit only before white space (or on a flush).
_LATIN = frozenset(".!?")
_SCRIPT_SENTENCE = frozenset("\u3002\uff01\uff1f\u2026\u0964\u0965\u061f")
_SCRIPT_CLAUSE = _SCRIPT_SENTENCE | frozenset(",;\uff0c\uff1b\u060c")
_TERMINATORS = {"sentence": _LATIN | _SCRIPT_SENTENCE, "clause": _LATIN | _SCRIPT_CLAUSE}


def _is_decimal_point(buffer: str, index: int) -> bool:
    return (
        buffer[index] == "."
        and index > 0
        and buffer[index - 1].isdigit()
        and index + 1 < len(buffer)
        and buffer[index + 1].isdigit()
    )


def split_units(buffer: str, terminators: frozenset[str], *, flush: bool) -> tuple[list[str], str]:
    """``buffer``'s complete units and what is left (nothing, on a flush)."""
    units: list[str] = []
    last = i = 0
    while i < len(buffer):
        char = buffer[i]
        if char not in terminators or _is_decimal_point(buffer, i):
            i += 1
            continue
        j = i + 1
        while j < len(buffer) and buffer[j].isspace():
            j += 1
        if char in _LATIN and j == i + 1 and not flush:
            i += 1
            continue
        piece = buffer[last:j].strip()
        if piece:
            units.append(piece)
        last = i = j
    rest = buffer[last:]
    if flush:
        if rest.strip():
            units.append(rest.strip())
        rest = ""
    return units, rest


class SpeechTextSplitter:
    """Collects one utterance's text; with ``"none"`` it all waits for ``flush``."""

    def __init__(self, granularity: str = "none") -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"Unsupported split_granularity: {granularity!r}")
        self.granularity = granularity
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """Add ``text``; the units it completed (none unless splitting)."""
        self._buffer += text
        if self.granularity == "none":
            return []
        units, self._buffer = split_units(self._buffer, _TERMINATORS[self.granularity], flush=False)
        return units

    def flush(self) -> list[str]:
        """``input.done``: the rest, as the last unit(s)."""
        if self.granularity == "none":
            piece, self._buffer = self._buffer.strip(), ""
            return [piece] if piece else []
        units, self._buffer = split_units(self._buffer, _TERMINATORS[self.granularity], flush=True)
        return units


__all__ = [
    "CONFIG_TIMEOUT",
    "GRANULARITIES",
    "IDLE_TIMEOUT",
    "MAX_CONFIG_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_TEXT_CHARS",
    "SpeechTextSplitter",
    "StreamConfig",
    "StreamError",
    "StreamingSpeechSessionConfig",
    "parse_message",
    "parse_stream_config",
    "split_units",
]
