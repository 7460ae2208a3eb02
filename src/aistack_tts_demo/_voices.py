"""``/v1/audio/voices``: the voices the demo knows, and the checks of an uploaded sample.

A step below the speech request (which looks voices up here) and the routes (which add and
remove them): the model's own speakers and uploaded voices in one registry, and
``parse_voice_upload``, a plain function over the multipart form that raises ``APIError``.
"""

from __future__ import annotations

import hashlib
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from attrs import field, frozen

from ._api_error import APIError
from ._encode import decode
from ._profiles import BUILTIN_PROFILES, VoiceProfile, profile_for_upload

#: The speaker names of the CustomVoice model, spelled as in its config.
VOICES: tuple[str, ...] = tuple(p.name for p in BUILTIN_PROFILES)
MAX_VOICE_SAMPLE_BYTES = 10 * 1024 * 1024
#: An uploaded sample must decode and last this long (seconds), as vLLM-Omni's upload checks.
MIN_SAMPLE_SECONDS, MAX_SAMPLE_SECONDS = 1.0, 30.0
#: vLLM-Omni's ``SPEAKER_MAX_UPLOADED`` default.
MAX_UPLOADED_VOICES = 1000
#: Room for the multipart framing and the small text fields around the sample.
MULTIPART_SLACK = 64 * 1024
_SAMPLE_MIME_TYPES = {
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/mpeg",
    "audio/ogg",
    "audio/aac",
    "audio/flac",
    "audio/webm",
    "audio/mp4",
}
_EXTENSION_MIME_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "mpeg": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "webm": "audio/webm",
    "mp4": "audio/mp4",
}


@frozen
class UploadedVoice:
    """A voice added with ``POST /v1/audio/voices``; only the sample's digest is kept."""

    name: str
    consent: str
    created_at: int
    mime_type: str
    file_size: int
    profile: VoiceProfile = field(eq=False)
    ref_text: str | None = None
    speaker_description: str | None = None

    def describe(self) -> dict[str, Any]:
        """What the voices endpoints show about this voice (optional fields only when set)."""
        shown: dict[str, Any] = {
            "name": self.name,
            "consent": self.consent,
            "created_at": self.created_at,
            "mime_type": self.mime_type,
            "file_size": self.file_size,
        }
        if self.ref_text:
            shown["ref_text"] = self.ref_text
        if self.speaker_description:
            shown["speaker_description"] = self.speaker_description
        return shown


class VoiceRegistry:
    """The model's own speakers and uploaded voices, looked up case-insensitively."""

    def __init__(self) -> None:
        self._builtin = {p.name.lower(): p for p in BUILTIN_PROFILES}
        self.uploaded: dict[str, UploadedVoice] = {}

    def get(self, name: str) -> VoiceProfile | None:
        """The profile for ``name``, or ``None``."""
        key = name.lower()
        if key in self._builtin:
            return self._builtin[key]
        upload = self.uploaded.get(key)
        return None if upload is None else upload.profile

    def is_uploaded(self, name: str) -> bool:
        """Whether ``name`` is an uploaded voice (not one of the model's own)."""
        return name.lower() in self.uploaded

    def names(self) -> list[str]:
        """Every usable voice name, lower-case and sorted, as vLLM lists them."""
        return sorted({*self._builtin, *self.uploaded})

    def add(self, voice: UploadedVoice) -> None:
        """Add an uploaded voice, replacing one of the same name (any case), as vLLM-Omni."""
        key = voice.name.lower()
        if key not in self.uploaded and len(self.uploaded) >= MAX_UPLOADED_VOICES:
            raise APIError(
                f"Uploaded voice limit reached ({MAX_UPLOADED_VOICES}). Delete an existing "
                "voice before registering a new one, or raise the cap via SPEAKER_MAX_UPLOADED."
            )
        self.uploaded[key] = voice

    def remove(self, name: str) -> bool:
        """Remove an uploaded voice; whether it was there."""
        return self.uploaded.pop(name.lower(), None) is not None


def _multipart_parts(content_type: str, body: bytes) -> list[Message]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise APIError("The request body is not valid multipart/form-data")
    return [part for part in message.iter_parts() if isinstance(part, Message)]


def parse_voice_upload(content_type: str, body: bytes, created_at: int) -> UploadedVoice:
    """Check a ``POST /v1/audio/voices`` form.

    Fields: ``audio_sample``, ``name``, ``consent``, optionally ``ref_text`` and
    ``speaker_description``; the sample must decode and last 1 to 30 seconds.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError("Expected a multipart/form-data body (audio_sample, name, consent)")
    fields: dict[str, Message] = {}
    for part in _multipart_parts(content_type, body):
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name not in fields:
            fields[name] = part
    for required in ("audio_sample", "name", "consent"):
        if required not in fields:
            raise APIError(f"{required}: Field required", param=required)

    def text(key: str) -> str:
        payload = fields[key].get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        return raw.decode("utf-8", "replace").strip()

    raw_name, consent = text("name"), text("consent")
    name = raw_name.strip()
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise APIError(
            f"Invalid voice name {raw_name!r}: must be non-empty, no path separators or NUL"
        )
    sample_part = fields["audio_sample"]
    payload = sample_part.get_payload(decode=True)
    sample = payload if isinstance(payload, bytes) else b""
    if len(sample) > MAX_VOICE_SAMPLE_BYTES:
        raise too_large(len(sample))

    mime_type = sample_part.get_content_type()
    filename = sample_part.get_filename() or ""
    if mime_type == "application/octet-stream":
        # By the file's extension; anything else is taken for WAV, as vLLM-Omni does.
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else "wav"
        mime_type = _EXTENSION_MIME_TYPES.get(extension, "audio/wav")
    if mime_type not in _SAMPLE_MIME_TYPES:
        raise APIError(
            f"Unsupported MIME type: {mime_type}. Allowed: {', '.join(sorted(_SAMPLE_MIME_TYPES))}"
        )
    try:
        _rate, seconds = decode(sample)
    except ValueError as e:
        raise APIError(f"Could not decode audio file: {e}") from None
    if seconds < MIN_SAMPLE_SECONDS:
        raise APIError(
            f"Reference audio too short ({seconds:.1f}s). "
            f"At least {MIN_SAMPLE_SECONDS:.0f}s of clear speech is required."
        )
    if seconds > MAX_SAMPLE_SECONDS:
        raise APIError(
            f"Reference audio too long ({seconds:.1f}s). "
            f"Maximum {MAX_SAMPLE_SECONDS:.0f}s supported \u2014 use a shorter clip."
        )
    return UploadedVoice(
        name=name,
        consent=consent,
        created_at=created_at,
        mime_type=mime_type,
        file_size=len(sample),
        profile=profile_for_upload(name, hashlib.sha256(sample).digest()),
        ref_text=(text("ref_text") or None) if "ref_text" in fields else None,
        speaker_description=(
            (text("speaker_description") or None) if "speaker_description" in fields else None
        ),
    )


def too_large(size: int) -> APIError:
    return APIError(
        f"File size exceeds maximum limit of 10MB. Got {size} bytes.", param="audio_sample"
    )
