"""``/v1/audio/voices``: the voices the demo knows, as vLLM-Omni keeps and lists them.

A step below the speech request (which looks voices up here) and the routes: the model's own
speakers and uploaded voices in one registry, with the listing and the delete answers of
vLLM-Omni's routes. The upload's checks are in ``_voice_upload`` (``parse_voice_upload``).

Facts from ``vllm_omni/entrypoints/openai/serving_speech.py`` @ 01bc4171df2a (``upload_voice``,
``upload_voice_embedding``, ``delete_voice``, ``_next_upload_timestamp``,
``_check_upload_cap``, ``_evict_existing_upload``) and ``api_server.py`` @ 005fd8eae138
(``list_voices``, ``delete_voice``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import field, frozen

from ._profiles import BUILTIN_PROFILES, VoiceProfile

#: The speaker names of the CustomVoice model, spelled as in its config.
VOICES: tuple[str, ...] = tuple(p.name for p in BUILTIN_PROFILES)
#: vLLM-Omni's ``SPEAKER_MAX_UPLOADED`` default.
MAX_UPLOADED_VOICES = 1000


@frozen
class UploadedVoice:
    """A voice added with ``POST /v1/audio/voices``: what vLLM-Omni stores of it."""

    name: str
    consent: str
    created_at: int
    mime_type: str
    file_size: int
    profile: VoiceProfile = field(eq=False)
    ref_text: str | None = None
    speaker_description: str | None = None
    #: ``"audio"`` for a sample, ``"direct"`` for a speaker embedding.
    embedding_source: str = "audio"
    embedding_dim: int | None = None

    def listed(self) -> dict[str, Any]:
        """The entry of ``GET /v1/audio/voices`` (``api_server.py`` ``list_voices``)."""
        shown: dict[str, Any] = {
            "name": self.name,
            "consent": self.consent,
            "created_at": self.created_at,
            "file_size": self.file_size,
            "mime_type": self.mime_type,
            "embedding_source": self.embedding_source,
            "embedding_dim": self.embedding_dim,
        }
        return {**shown, **self._texts()}

    def uploaded(self) -> dict[str, Any]:
        """The ``voice`` of the upload's answer: ``upload_voice`` or ``upload_voice_embedding``."""
        shown: dict[str, Any] = {
            "name": self.name,
            "consent": self.consent,
            "created_at": self.created_at,
        }
        if self.embedding_source == "direct":
            return {**shown, "embedding_source": "direct", "embedding_dim": self.embedding_dim}
        return {**shown, "mime_type": self.mime_type, "file_size": self.file_size, **self._texts()}

    def _texts(self) -> dict[str, str]:
        texts = {"ref_text": self.ref_text, "speaker_description": self.speaker_description}
        return {key: value for key, value in texts.items() if value}


class VoiceRegistry:
    """The model's own speakers and uploaded voices, looked up case-insensitively."""

    def __init__(self) -> None:
        self._builtin = {p.name.lower(): p for p in BUILTIN_PROFILES}
        #: By lower-cased name, in upload order (a re-upload moves to the end).
        self.uploaded: dict[str, UploadedVoice] = {}
        self._last_upload = 0

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

    def listing(self) -> dict[str, Any]:
        """``GET /v1/audio/voices``: the names, then the uploads in their order."""
        uploaded = [voice.listed() for voice in self.uploaded.values()]
        return {"voices": self.names(), "uploaded_voices": uploaded}

    def evict(self, name: str) -> None:
        """Drop an upload of this name first, as a re-upload does even if it then fails."""
        self.uploaded.pop(name.lower(), None)

    def check_cap(self) -> None:
        """``_check_upload_cap``: refuse a new upload once the cap is reached."""
        if len(self.uploaded) >= MAX_UPLOADED_VOICES:
            raise ValueError(
                f"Uploaded voice limit reached ({MAX_UPLOADED_VOICES}). Delete an existing "
                "voice before registering a new one, or raise the cap via SPEAKER_MAX_UPLOADED."
            )

    def next_timestamp(self, now: float) -> int:
        """``_next_upload_timestamp``: whole seconds, one more than the last at least."""
        self._last_upload = max(int(now), self._last_upload + 1)
        return self._last_upload

    def add(self, voice: UploadedVoice) -> None:
        """Register a checked upload (after ``evict`` and ``check_cap``)."""
        self.uploaded[voice.name.lower()] = voice

    def delete(self, name: str) -> tuple[int, dict[str, Any]]:
        """``DELETE /v1/audio/voices/{name}``: its status and body (the route words both)."""
        if self.uploaded.pop(name.lower(), None) is None:
            return 404, {"success": False, "error": f"Voice '{name}' not found"}
        return 200, {"success": True, "message": f"Voice '{name}' deleted successfully"}


def sanitize_filename(text: str) -> str:
    """``_sanitize_filename``: the last path part, unsafe characters as ``_``, 1-255 long."""
    sanitized = re.sub(r"[^a-zA-Z0-9_.\-]", "_", text.rsplit("/", 1)[-1])
    return (sanitized or "file")[:255]


def safetensors_size(tensor_bytes: int, shape: list[int], metadata: dict[str, str]) -> int:
    """The size of the file ``safetensors.torch.save_file`` writes for one F32 tensor.

    The format (huggingface/safetensors README): an 8-byte header length, the JSON header
    (``__metadata__`` and the tensor's dtype, shape and offsets, compact, padded with spaces
    to a multiple of 8), then the data. Key order does not change the length.
    """
    header = {
        "__metadata__": metadata,
        "speaker_embedding": {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [0, tensor_bytes],
        },
    }
    length = len(json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode())
    return 8 + (length + 7) // 8 * 8 + tensor_bytes


__all__ = ["MAX_UPLOADED_VOICES", "VOICES", "UploadedVoice", "VoiceRegistry"]
