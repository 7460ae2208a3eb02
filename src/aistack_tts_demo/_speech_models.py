"""The speech request bodies as pydantic models: what FastAPI validates before any check of ours.

Our own models for the fields, types, bounds, aliases and validators of vLLM-Omni's
``OpenAICreateSpeechRequest``, ``SpeechBatchItem`` and ``BatchSpeechRequest``
(``vllm_omni/entrypoints/openai/protocol/audio.py`` @ 0131cb556045). Lax mode, as there:
``"2"`` is a speed, ``"false"`` a stream flag. Field order is the real one, so a body with
several faults lists them in the same order. The floor below ``_speech`` and ``_batch``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator, model_validator

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_EMBEDDING_DIM = 8192

Format = Literal["wav", "pcm", "flac", "mp3", "opus"]
TaskType = Literal["CustomVoice", "VoiceDesign", "Base"]
SpeechSampleRate = Annotated[int, Field(gt=0)]
_HIGGS_V2_KEYS = ("messages", "reference_audio", "voice_prompt", "speaker_audio", "speakers")


def _voice_alias() -> Any:
    return Field(default=None, validation_alias=AliasChoices("voice", "speaker"))


def _ref_audio(value: Any) -> Any:
    # TypeError, as the real normalizer raises: pydantic does not turn it into a
    # validation error, so the real server answers such a body with a 500.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not all(isinstance(item, str) for item in value):
            raise TypeError("'ref_audio' list entries must be strings")
        if not value:
            raise ValueError("'ref_audio' list cannot be empty")
        return list(value)
    raise TypeError("'ref_audio' must be a string or list of strings")


def _finite(values: list[float]) -> None:
    if not all(math.isfinite(x) for x in values):
        raise ValueError("'speaker_embedding' values must be finite (no NaN or Inf)")


def _references(data: dict[str, Any]) -> dict[str, Any]:
    """The Higgs Audio ``references`` array as ``ref_audio`` / ``ref_text``, or why not."""
    refs = data.get("references")
    if refs is None:
        return data
    if not isinstance(refs, list) or not refs:
        raise ValueError("'references' must be a non-empty array of {audio_path, text} objects")
    if len(refs) > 1:
        raise ValueError(
            "'references' only supports a single reference; multi-shot voice clone is not supported"
        )
    first = refs[0]
    if not isinstance(first, dict):
        raise ValueError("'references[0]' must be an object with 'audio_path' and optional 'text'")
    audio_path = first.get("audio_path")
    if not isinstance(audio_path, str) or not audio_path:
        raise ValueError(
            "'references[0].audio_path' is required and must be a string "
            "(URL, data: URI, or file path)"
        )
    existing = data.get("ref_audio")
    if existing and existing != audio_path:
        raise ValueError("'references' and 'ref_audio' are mutually exclusive")
    data = {**data, "ref_audio": audio_path}
    text = first.get("text")
    if isinstance(text, str) and text.strip():
        if data.get("ref_text") and data["ref_text"] != text:
            raise ValueError("'references[0].text' and 'ref_text' conflict; supply only one")
        data["ref_text"] = text
    data.pop("references", None)
    return data


class OpenAICreateSpeechRequest(BaseModel):
    """``POST /v1/audio/speech``'s body."""

    input: str
    model: str | None = None
    voice: str | None = _voice_alias()
    instructions: str | None = None
    response_format: Format = "wav"
    sample_rate: SpeechSampleRate | None = None
    speed: float | None = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    stream: bool = False
    task_type: TaskType | None = None
    language: str | None = None
    ref_audio: str | list[str] | None = None
    ref_text: str | None = None
    ref_audio_2: str | None = None
    ambient_sound: str | None = None
    duration_seconds: float | None = Field(default=None, ge=0.0)
    x_vector_only_mode: bool | None = None
    speaker_embedding: list[float] | list[list[float]] | None = Field(
        default=None, max_length=_MAX_EMBEDDING_DIM
    )
    max_new_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    seed: int | None = Field(default=None, ge=_INT64_MIN, le=_INT64_MAX)
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=_INT64_MAX)
    non_streaming_mode: bool | None = None
    extra_params: dict[str, Any] | None = None
    word_timestamps: bool = False

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, voice: Any) -> Any:
        if isinstance(voice, dict):
            if "id" not in voice:
                raise ValueError("voice dict must contain 'id'")
            return voice["id"]
        return voice

    @field_validator("ref_audio", mode="before")
    @classmethod
    def _ref_audio_value(cls, value: Any) -> Any:
        return _ref_audio(value)

    @field_validator("speaker_embedding")
    @classmethod
    def _embedding(cls, value: Any) -> Any:
        if not value:
            return value
        if isinstance(value[0], list):
            for item in value:
                if not item:
                    raise ValueError("'speaker_embedding' nested vectors must be non-empty")
                _finite(item)
            return value
        _finite(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _references_alias(cls, data: Any) -> Any:
        return _references(data) if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _higgs_audio_v2_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return data
        if "higgsaudiov2" not in data["model"].lower().replace("-", "").replace("_", ""):
            return data
        offending = sorted(k for k in _HIGGS_V2_KEYS if k in data)
        if offending:
            raise ValueError(
                "higgs_audio_v2 v1 does not support these rich-input fields: "
                f"{offending}. Supply plain text via the 'input' field instead."
            )
        return data

    @model_validator(mode="after")
    def _embedding_or_ref_audio(self) -> OpenAICreateSpeechRequest:
        if self.speaker_embedding is not None and isinstance(self.ref_audio, str):
            raise ValueError("'speaker_embedding' and 'ref_audio' are mutually exclusive")
        return self

    def is_raw_audio_stream(self) -> bool:
        return self.stream_format == "audio"

    def is_sse_stream(self) -> bool:
        return (self.stream or self.stream_format == "sse") and not self.is_raw_audio_stream()

    def is_streaming(self) -> bool:
        return self.is_raw_audio_stream() or self.is_sse_stream()

    @model_validator(mode="after")
    def _streaming_constraints(self) -> OpenAICreateSpeechRequest:
        if self.is_streaming():
            if self.response_format not in ("pcm", "wav"):
                raise ValueError(
                    "Streaming (stream=true, stream_format='audio', or stream_format='sse') "
                    "requires response_format='pcm' or 'wav'. "
                    f"Got response_format='{self.response_format}'."
                )
            if self.speed is None:
                self.speed = 1.0
        return self


class SpeechBatchItem(BaseModel):
    """One item of a batch: only ``input`` is required; set fields override the batch's."""

    input: str
    voice: str | None = _voice_alias()
    instructions: str | None = None
    response_format: Format | None = None
    sample_rate: SpeechSampleRate | None = None
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    task_type: TaskType | None = None
    language: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    max_new_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=_INT64_MAX)
    non_streaming_mode: bool | None = None


class BatchSpeechRequest(BaseModel):
    """``POST /v1/audio/speech/batch``'s body: shared defaults and the items."""

    model: str | None = None
    items: list[SpeechBatchItem] = Field(..., min_length=1)
    voice: str | None = _voice_alias()
    instructions: str | None = None
    response_format: Format = "wav"
    sample_rate: SpeechSampleRate | None = None
    speed: float | None = Field(default=1.0, ge=0.25, le=4.0)
    task_type: TaskType | None = None
    language: str | None = None
    ref_audio: str | None = None
    ref_text: str | None = None
    x_vector_only_mode: bool | None = None
    max_new_tokens: int | None = Field(default=None, ge=1, le=_INT64_MAX)
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=_INT64_MAX)
    non_streaming_mode: bool | None = None

    #: The per-item fields that fall back to the batch's (``_merge_batch_item``'s ``_pick``).
    MERGED: ClassVar[tuple[str, ...]] = (
        "voice",
        "instructions",
        "response_format",
        "sample_rate",
        "speed",
        "task_type",
        "language",
        "ref_audio",
        "ref_text",
        "x_vector_only_mode",
        "max_new_tokens",
        "initial_codec_chunk_frames",
        "non_streaming_mode",
    )

    def merged(self, item: SpeechBatchItem) -> OpenAICreateSpeechRequest:
        """``item`` as a whole speech request: its set fields, else the batch's; never streamed."""
        picked = {
            name: getattr(item, name) if getattr(item, name) is not None else getattr(self, name)
            for name in self.MERGED
        }
        picked["response_format"] = picked["response_format"] or "wav"
        picked["speed"] = 1.0 if picked["speed"] is None else picked["speed"]
        return OpenAICreateSpeechRequest(input=item.input, model=self.model, stream=False, **picked)
