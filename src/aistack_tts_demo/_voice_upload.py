"""``POST /v1/audio/voices``: the upload form checked and answered as vLLM-Omni does.

A step above ``_voices`` (whose registry it fills) and ``_form`` (the body as Starlette parses
it), below the route. Two layers, as in the real server:

- FastAPI's, for the form's fields (``api_server.py`` @ 005fd8eae138 ``upload_voice``:
  ``audio_sample: UploadFile | None = File(None)``, ``speaker_embedding``, ``consent``,
  ``name``, ``ref_text``, ``speaker_description`` as ``Form``): a missing or empty required
  field, a file where text is due or text where a file is, is a ``RequestValidationError``
  that vLLM's handler answers with 400 (``_framework.validation_error``).
- the route's and ``serving_speech.py``'s @ 01bc4171df2a (``upload_voice``,
  ``upload_voice_embedding``), whose refusals are ``ValueError``s the route answers with
  ``_create_speech_error_json_response``: HTTP 400 and vLLM's error body (code 400). (The
  older route @ 005fd8eae138 *returned* the ``ErrorResponse``, which FastAPI sent with 200;
  every stored copy with the speech routes' own error helper sends the 400.)
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from attrs import frozen

from ._api_error import render_json
from ._encode import decode
from ._form import FilePart, Form, read_form
from ._framework import Endpoint, RequestInvalid, sanitize_message, validation_error
from ._profiles import profile_for_upload
from ._voices import UploadedVoice, VoiceRegistry, safetensors_size, sanitize_filename

MAX_VOICE_SAMPLE_BYTES = 10 * 1024 * 1024
#: The demo's own guard: a body this big is refused unparsed (the real server reads it all).
MAX_UPLOAD_BODY = 64 * 1024 * 1024
#: An uploaded sample must decode and last this long (``_REF_AUDIO_MIN/MAX_DURATION``).
MIN_SAMPLE_SECONDS, MAX_SAMPLE_SECONDS = 1.0, 30.0
#: The talker's hidden size of Qwen3-TTS-12Hz-0.6B (``_validate_qwen_tts_speaker_embedding_dim``).
EMBEDDING_DIM = 1024
MAX_EMBEDDING_LENGTH = 4096
#: ``_create_speech_error_json_response``'s status for the route's own refusals.
REFUSAL_STATUS = 400
#: Where ``upload_voice`` is in the ``vllm/vllm-omni`` image (installed with ``uv pip install .``
#: into the vLLM image's dist-packages), and its first decorator's line at 005fd8eae138.
OMNI_API_SERVER = (
    "/usr/local/lib/python3.12/dist-packages/vllm_omni/entrypoints/openai/api_server.py"
)
UPLOAD_ENDPOINT = Endpoint(
    function="upload_voice", line=1238, method="POST", path="/v1/audio/voices", file=OMNI_API_SERVER
)
#: ``upload_voice``'s ``allowed_mime_types``, in the order its set literal is written (the
#: real message prints the set, whose order varies from process to process).
ALLOWED_MIME_TYPES: tuple[str, ...] = (
    "audio/mpeg",
    "audio/wav",
    "audio/x-wav",
    "audio/ogg",
    "audio/aac",
    "audio/flac",
    "audio/webm",
    "audio/mp4",
)
#: How ``upload_voice`` names an ``application/octet-stream`` file by its name (else WAV).
_BY_EXTENSION: tuple[tuple[tuple[str, ...], str], ...] = (
    ((".wav",), "audio/wav"),
    ((".mp3", ".mpeg"), "audio/mpeg"),
    ((".flac",), "audio/flac"),
    ((".ogg",), "audio/ogg"),
    ((".aac",), "audio/aac"),
    ((".webm",), "audio/webm"),
    ((".mp4",), "audio/mp4"),
)


@frozen
class Answer:
    """A route's status and JSON body (rendered as Starlette's ``JSONResponse``)."""

    status: int
    payload: Any

    def body(self) -> bytes:
        return render_json(self.payload)


def refusal(message: str) -> Answer:
    """The route's ``create_error_response(message)``, as a JSONResponse: HTTP 400, code 400."""
    error = {"message": sanitize_message(message), "type": "BadRequestError", "param": None}
    return Answer(REFUSAL_STATUS, {"error": {**error, "code": 400}})


def _too_large(size: int) -> str:
    return f"File size exceeds maximum limit of 10MB. Got {size} bytes."


def too_large(size: int) -> Answer:
    """The answer to a sample over 10 MB (``size`` is the body's when not parsed)."""
    return refusal(_too_large(size))


@frozen
class _Fields:
    audio_sample: FilePart | None
    speaker_embedding: str | None
    consent: str
    name: str
    ref_text: str | None
    speaker_description: str | None


def _fields(form: Form) -> _Fields:
    """The route's parameters as FastAPI fills them, or its ``RequestInvalid``."""
    errors: list[dict[str, Any]] = []

    def text(key: str, *, required: bool = False) -> str | None:
        value = form.get(key)
        if value is None or value == "":  # FastAPI takes an empty form value for none
            if required:
                errors.append(
                    {
                        "type": "missing",
                        "loc": ("body", key),
                        "msg": "Field required",
                        "input": None,
                    }
                )
            return None
        if isinstance(value, FilePart):
            message = "Input should be a valid string"
            errors.append(
                {"type": "string_type", "loc": ("body", key), "msg": message, "input": value}
            )
            return None
        return value

    audio = form.get("audio_sample")
    if isinstance(audio, str):
        if audio:  # fastapi/datastructures.py UploadFile._validate
            problem = ValueError(f"Expected UploadFile, received: {type(audio)}")
            errors.append(
                {
                    "type": "value_error",
                    "loc": ("body", "audio_sample"),
                    "msg": f"Value error, {problem}",
                    "input": audio,
                    "ctx": {"error": problem},
                }
            )
        audio = None
    embedding = text("speaker_embedding")
    consent, name = text("consent", required=True), text("name", required=True)
    ref_text, description = text("ref_text"), text("speaker_description")
    if errors or consent is None or name is None:
        raise RequestInvalid(errors, UPLOAD_ENDPOINT)
    return _Fields(audio, embedding, consent, name, ref_text, description)


def parse_voice_upload(
    content_type: str | None, body: bytes, voices: VoiceRegistry, now: float
) -> Answer:
    """The whole answer to ``POST /v1/audio/voices``: the voice registered, or why not.

    Raises ``APIError`` for what the frameworks refuse (a body Starlette cannot parse, a form
    FastAPI finds invalid); the route's own refusals are answers (``refusal``).
    """
    try:
        fields = _fields(read_form(content_type, body))
    except RequestInvalid as invalid:
        raise validation_error(invalid) from None
    if fields.speaker_embedding is not None and fields.audio_sample is not None:
        return refusal("'audio_sample' and 'speaker_embedding' are mutually exclusive")
    try:
        if fields.speaker_embedding is not None:
            voice = _embedding(voices, fields.speaker_embedding, fields.consent, fields.name, now)
        elif fields.audio_sample is not None:
            voice = _sample(voices, fields, fields.audio_sample, now)
        else:
            return refusal("Either 'audio_sample' or 'speaker_embedding' must be provided")
    except ValueError as e:
        return refusal(str(e))
    except OverflowError as e:  # the route's catch-all ``except Exception``
        return refusal(f"Failed to upload voice: {e}")
    return Answer(200, {"success": True, "voice": voice.uploaded()})


def validate_name(name: str) -> str:
    """``_validate_speaker_name``: trimmed; not empty, ``.`` or ``..``; no slash, backslash, NUL."""
    trimmed = name.strip()
    if not trimmed or trimmed in (".", "..") or any(c in trimmed for c in "/\\\x00"):
        raise ValueError(
            f"Invalid voice name {name!r}: must be non-empty, no path separators or NUL"
        )
    return trimmed


def _mime_type(sample: FilePart) -> str | None:
    mime_type = sample.content_type
    if mime_type != "application/octet-stream":
        return mime_type
    filename = sample.filename.lower()
    return next((m for ends, m in _BY_EXTENSION if filename.endswith(ends)), "audio/wav")


def _sample(voices: VoiceRegistry, fields: _Fields, sample: FilePart, now: float) -> UploadedVoice:
    name = validate_name(fields.name)
    ref_text = (fields.ref_text or "").strip() or None
    description = (fields.speaker_description or "").strip() or None
    size = len(sample.data)
    if size > MAX_VOICE_SAMPLE_BYTES:
        raise ValueError(_too_large(size))
    mime_type = _mime_type(sample)
    if mime_type not in ALLOWED_MIME_TYPES:
        allowed = "{" + ", ".join(repr(m) for m in ALLOWED_MIME_TYPES) + "}"
        raise ValueError(f"Unsupported MIME type: {mime_type}. Allowed: {allowed}")
    # Under the upload lock: the old voice goes first, then the cap, then a timestamp, all
    # before the sample is decoded (a re-upload that fails leaves no voice of that name).
    voices.evict(name)
    voices.check_cap()
    created_at = voices.next_timestamp(now)
    try:
        _rate, seconds = decode(sample.data)
    except ValueError as e:
        raise ValueError(f"Could not decode audio file: {e}") from None
    if seconds < MIN_SAMPLE_SECONDS:
        raise ValueError(
            f"Reference audio too short ({seconds:.1f}s). "
            f"At least {MIN_SAMPLE_SECONDS:.0f}s of clear speech is required."
        )
    if seconds > MAX_SAMPLE_SECONDS:
        raise ValueError(
            f"Reference audio too long ({seconds:.1f}s). "
            f"Maximum {MAX_SAMPLE_SECONDS:.0f}s supported \u2014 use a shorter clip."
        )
    voice = UploadedVoice(
        name=name,
        consent=fields.consent,
        created_at=created_at,
        mime_type=mime_type,
        file_size=size,
        profile=profile_for_upload(name, hashlib.sha256(sample.data).digest()),
        ref_text=ref_text,
        speaker_description=description,
    )
    voices.add(voice)
    return voice


def _embedding(
    voices: VoiceRegistry, text: str, consent: str, name: str, now: float
) -> UploadedVoice:
    name = validate_name(name)
    try:
        embedding = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"'speaker_embedding' must be valid JSON: {exc}") from exc
    if not isinstance(embedding, list) or not embedding:
        raise ValueError("'speaker_embedding' must be a non-empty list of numbers")
    if len(embedding) > MAX_EMBEDDING_LENGTH:
        raise ValueError(
            f"'speaker_embedding' exceeds maximum length ({MAX_EMBEDDING_LENGTH} elements)"
        )
    # Python's isinstance, as the real check: true and false pass for numbers.
    if not all(isinstance(x, (int, float)) for x in embedding):
        raise ValueError("'speaker_embedding' must contain only numeric values")
    if not all(math.isfinite(x) for x in embedding):  # a huge integer: OverflowError
        raise ValueError("'speaker_embedding' values must be finite (no NaN or Inf)")
    dim = len(embedding)
    if dim != EMBEDDING_DIM:
        raise ValueError(
            f"speaker_embedding has {dim} dimensions; "
            f"expected {EMBEDDING_DIM} for the loaded Qwen3-TTS model"
        )
    voices.evict(name)
    voices.check_cap()
    created_at = voices.next_timestamp(now)
    filename = f"{sanitize_filename(name)}_{sanitize_filename(consent)}_{created_at}.safetensors"
    mime_type = "application/x-safetensors"
    # The safetensors header holds the stored fields but the file's path (``str`` of each).
    metadata = {
        "name": name,
        "voice_name_lower": name.lower(),
        "consent": consent,
        "created_at": str(created_at),
        "mime_type": mime_type,
        "original_filename": filename,
        "embedding_source": "direct",
        "embedding_dim": str(dim),
    }
    digest = hashlib.sha256(repr([float(x) for x in embedding]).encode()).digest()
    voice = UploadedVoice(
        name=name,
        consent=consent,
        created_at=created_at,
        mime_type=mime_type,
        file_size=safetensors_size(4 * dim, [dim], metadata),
        profile=profile_for_upload(name, digest),
        embedding_source="direct",
        embedding_dim=dim,
    )
    voices.add(voice)
    return voice
