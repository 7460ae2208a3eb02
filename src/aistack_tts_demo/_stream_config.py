"""The WebSocket stream's ``session.config`` and text splitting, as vLLM-Omni has them.

Mirrors ``StreamingSpeechSessionConfig`` (``protocol/audio.py``) and ``SpeechTextSplitter``
(``speech_text_splitter.py``) of vllm-project/vllm-omni: every field with its default, the
``stream_audio`` constraints, and the three split granularities. No I/O: plain functions and
values, tested without a reactor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from ._encode import RESPONSE_FORMATS

#: ``_DEFAULT_IDLE_TIMEOUT`` and ``_DEFAULT_CONFIG_TIMEOUT`` of ``serving_speech_stream.py``.
IDLE_TIMEOUT = 30.0
CONFIG_TIMEOUT = 10.0
#: ``_MAX_CONFIG_MESSAGE_SIZE`` (a config may carry reference audio) and
#: ``_MAX_INPUT_TEXT_MESSAGE_SIZE``; both count characters of the text message.
MAX_CONFIG_CHARS = 4 * 1024 * 1024
MAX_TEXT_CHARS = 128 * 1024
#: What the WebSocket layer takes at all: uvicorn's default ``ws_max_size`` (16 MiB).
MAX_FRAME_BYTES = 16 * 1024 * 1024

TASK_TYPES = ("CustomVoice", "VoiceDesign", "Base")
GRANULARITIES = ("none", "sentence", "clause")
_INT64 = 2**63


class StreamError(Exception):
    """A client message the session cannot use; sent back as ``{"type": "error"}``."""


@frozen
class StreamConfig:
    """A checked ``session.config``: how every utterance of the session is spoken.

    The voice is a name, checked when an utterance is generated (as vLLM-Omni does).
    """

    voice: str | None = None
    task_type: str | None = None
    language: str | None = None
    instructions: str | None = None
    response_format: str = "wav"
    speed: float = 1.0
    ref_audio: str | None = None
    ref_text: str | None = None
    speaker_embedding: tuple[float, ...] | None = None
    stream_audio: bool = False
    word_timestamps: bool = False
    split_granularity: str = "none"

    def speech_fields(self, text: str) -> dict[str, Any]:
        """The ``/v1/audio/speech`` body vLLM-Omni builds for one utterance of ``text``."""
        body: dict[str, Any] = {
            "input": text,
            "response_format": self.response_format,
            "speed": self.speed,
        }
        for name in ("voice", "task_type", "language", "instructions", "ref_audio", "ref_text"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.speaker_embedding is not None:
            body["speaker_embedding"] = list(self.speaker_embedding)
        return body


_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "str": ("string_type", (str,)),
    "bool": ("bool_type", (bool,)),
    "float": ("float_type", (int, float)),
    "int": ("int_type", (int,)),
}
_KIND_WORDS = {"str": "string", "bool": "boolean", "float": "number", "int": "integer"}


def _invalid(loc: str | None, message: str, kind: str, value: Any) -> StreamError:
    """A refusal in the words pydantic's ``ValidationError`` uses (first error only)."""
    where = f"{loc}\n  " if loc else "  "
    return StreamError(
        "Invalid session config: 1 validation error for StreamingSpeechSessionConfig\n"
        f"{where}{message} [type={kind}, input_value={value!r}, "
        f"input_type={type(value).__name__}]"
    )


def _typed(message: Mapping[str, Any], name: str, kind: str, default: Any) -> Any:
    value = message.get(name)
    if value is None:
        return default
    error_type, types = _KINDS[kind]
    # bool is an int to Python, not to JSON.
    if (isinstance(value, bool) and kind != "bool") or not isinstance(value, types):
        raise _invalid(name, f"Input should be a valid {_KIND_WORDS[kind]}", error_type, value)
    return value


def _literal(message: Mapping[str, Any], name: str, allowed: tuple[str, ...], default: Any) -> Any:
    value = message.get(name, default)
    if value is None and default is None:
        return None
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise _invalid(name, f"Input should be {choices}", "literal_error", value)
    return value


def _bounded(
    message: Mapping[str, Any], name: str, kind: str, low: float, high: float, default: Any
) -> Any:
    value = _typed(message, name, kind, default)
    if value is None:
        return None
    if kind == "float" and not math.isfinite(value):
        raise _invalid(name, "Input should be a finite number", "finite_number", value)
    if value < low:
        words = f"Input should be greater than or equal to {low:g}"
        raise _invalid(name, words, "greater_than_equal", value)
    if value > high:
        raise _invalid(
            name, f"Input should be less than or equal to {high:g}", "less_than_equal", value
        )
    return value


def parse_stream_config(message: Mapping[str, Any], model_name: str) -> StreamConfig:
    """Check a ``session.config`` as ``StreamingSpeechSessionConfig`` and ``_check_model`` do.

    Unknown fields are ignored (pydantic's default); the voice, language and task are left to
    generation time. Raises ``StreamError`` with the message the session sends back.
    """
    fields = {k: v for k, v in message.items() if k != "type"}
    model = _typed(fields, "model", "str", None)
    voice = _typed({"voice": fields.get("voice", fields.get("speaker"))}, "voice", "str", None)
    task_type = _literal(fields, "task_type", TASK_TYPES, None)
    language = _typed(fields, "language", "str", None)
    instructions = _typed(fields, "instructions", "str", None)
    response_format = _literal(fields, "response_format", RESPONSE_FORMATS, "wav")
    speed = _bounded(fields, "speed", "float", 0.25, 4.0, 1.0)
    _bounded(fields, "max_new_tokens", "int", 1, _INT64 - 1, None)
    _bounded(fields, "initial_codec_chunk_frames", "int", 0, _INT64 - 1, None)
    _typed(fields, "non_streaming_mode", "bool", None)
    ref_audio = _typed(fields, "ref_audio", "str", None)
    ref_text = _typed(fields, "ref_text", "str", None)
    _typed(fields, "x_vector_only_mode", "bool", None)
    embedding = fields.get("speaker_embedding")
    if embedding is not None and not (
        isinstance(embedding, list)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding)
    ):
        raise _invalid("speaker_embedding", "Input should be a valid list", "list_type", embedding)
    stream_audio = _typed(fields, "stream_audio", "bool", False)
    word_timestamps = _typed(fields, "word_timestamps", "bool", False)
    _bounded(fields, "seed", "int", -_INT64, _INT64 - 1, None)
    granularity = _literal(fields, "split_granularity", GRANULARITIES, "none")
    if stream_audio:
        if response_format != "pcm":
            raise _invalid(
                None,
                "Value error, WebSocket streaming audio (stream_audio=true) requires "
                f"response_format='pcm'. Got response_format='{response_format}'.",
                "value_error",
                fields,
            )
        if speed != 1.0:
            raise _invalid(
                None,
                "Value error, WebSocket stream_audio=true currently requires speed=1.0; "
                "native speed control is only available through HTTP streaming.",
                "value_error",
                fields,
            )
    if model and model != model_name:
        # str() of vLLM's ErrorResponse, as the handler sends it.
        raise StreamError(
            f"error=ErrorInfo(message='The model `{model}` does not exist.', "
            "type='NotFoundError', param='model', code=404)"
        )
    return StreamConfig(
        voice=voice,
        task_type=task_type,
        language=language,
        instructions=instructions,
        response_format=response_format,
        speed=float(speed),
        ref_audio=ref_audio,
        ref_text=ref_text,
        speaker_embedding=None if embedding is None else tuple(float(x) for x in embedding),
        stream_audio=stream_audio,
        word_timestamps=word_timestamps,
        split_granularity=granularity,
    )


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
    "IDLE_TIMEOUT",
    "MAX_CONFIG_CHARS",
    "MAX_FRAME_BYTES",
    "MAX_TEXT_CHARS",
    "SpeechTextSplitter",
    "StreamConfig",
    "StreamError",
    "parse_message",
    "parse_stream_config",
    "split_units",
]
