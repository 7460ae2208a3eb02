"""The demo upstream's routes: what vLLM-Omni serving Qwen3-TTS-12Hz-0.6B-CustomVoice answers.

Request checks are plain functions (``parse_speech_request``, ``parse_voice_upload``) that raise
L{APIError}; the Klein routes only glue them to a L{_Generation}, which makes audio one codec
frame at a time on the injected clock, like the real model does on its GPU. The WebSocket
stream (``/v1/audio/speech/stream``) lives in ``_stream`` and ``_stream_config``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from attrs import field, frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from ._encode import CONTENT_TYPES, RESPONSE_FORMATS, decode, encode
from ._encode import STREAM_FORMATS as _STREAMABLE
from ._pacing import PacedFrames
from ._stream import DemoRoot, StreamSettings, stream_resource
from ._stream_config import (
    CONFIG_TIMEOUT,
    IDLE_TIMEOUT,
    StreamConfig,
    StreamError,
    parse_stream_config,
)
from ._synth import (
    BUILTIN_PROFILES,
    FRAME_SECONDS,
    VoiceProfile,
    profile_for_upload,
    synthesize,
    wav_header,
)

log = Logger(namespace="aistack_tts.demo")
#: The demo's access lines, marked as the demo's: in front of it, the gateway logs its own.
access_log = Logger(namespace="aistack_tts.demo.access")

#: The model the real container serves; requests naming another model get 404, as from vLLM.
MODEL_NAME = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
#: The speaker names of the CustomVoice model, spelled as in its config.
VOICES: tuple[str, ...] = tuple(p.name for p in BUILTIN_PROFILES)
DEFAULT_VOICE = "vivian"
MAX_INPUT_CHARS = 4096
MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_INSTRUCTIONS_CHARS = 500
STREAM_FORMATS = ("sse", "audio")
TASK_TYPES = ("CustomVoice", "VoiceDesign", "Base")
#: vLLM-Omni's deploy config: the first chunk is one codec frame, then 25 (2 s) at a time.
INITIAL_CHUNK_FRAMES = 1
CHUNK_FRAMES = 25
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
MAX_VOICE_SAMPLE_BYTES = 10 * 1024 * 1024
#: An uploaded sample must decode and last this long (seconds), as vLLM-Omni's upload checks.
MIN_SAMPLE_SECONDS, MAX_SAMPLE_SECONDS = 1.0, 30.0
#: vLLM-Omni's ``SPEAKER_MAX_UPLOADED`` default.
MAX_UPLOADED_VOICES = 1000
#: Room for the multipart framing and the small text fields around the sample.
_MULTIPART_SLACK = 64 * 1024
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


# --- errors --------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in vLLM's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "BadRequestError",  # the envelope's name for it
        param: str | None = None,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        """The JSON body, with ``code`` an integer as vLLM sends it."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return json.dumps({"error": {**error, "code": self.status}}).encode()


def _not_found(message: str, param: str | None = None) -> APIError:
    return APIError(message, status=404, type="NotFoundError", param=param)


# --- /v1/audio/speech ----------------------------------------------------------------------


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
    """Check a speech request body in the order vLLM-Omni does; raise L{APIError} on a fault.

    The schema first (pydantic's ``OpenAICreateSpeechRequest``), then the model name, then the
    Qwen3-TTS checks of ``serving_speech.py`` (input, language, voice, task, instructions).
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object")

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
        raise _not_found(f"The model `{model}` does not exist.", param="model")
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


def _sse_event(payload: Mapping[str, Any]) -> bytes:
    """One event as vLLM-Omni sends it: an ``event:`` line and a ``data:`` line."""
    name = str(payload["type"]).encode()
    return b"event: " + name + b"\ndata: " + json.dumps(payload).encode() + b"\n\n"


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


class _Generation:
    """One utterance being made, a frame at a time by a L{PacedFrames}.

    Streamed, frames go out in vLLM-Omni's chunks: the first codec frame alone (behind the
    WAV header), then ``chunk_frames`` at a time, the last chunk whatever is left. Otherwise
    the frames are kept and the whole file, encoded, is the result of ``start()``'s Deferred.
    """

    def __init__(
        self,
        request: Request,
        speech: SpeechRequest,
        *,
        clock: IReactorTime,
        first_chunk_delay: float,
        frame_interval: float,
        chunk_frames: int = CHUNK_FRAMES,
    ) -> None:
        self._request = request
        self._speech = speech
        self._chunk_frames = chunk_frames
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        self.total_frames = renderer.total_frames
        self._pacer = PacedFrames(
            clock=clock,
            first_chunk_delay=first_chunk_delay,
            frame_interval=frame_interval,
            frames=renderer.frames(),
            total_frames=renderer.total_frames,
            on_frame=self._frame,
            on_finish=self._complete,
            on_abort=self._aborted,
        )
        self._kept: list[bytes] = []
        self._done: Deferred[bytes | None] = Deferred(self._cancelled)

    def start(self) -> Deferred[bytes | None]:
        """Begin after the first-chunk delay; fires when the answer is complete."""
        self._request.notifyFinish().addErrback(self._client_gone)
        if self._speech.stream:
            if self._speech.sse:
                self._request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            else:
                content_type = CONTENT_TYPES[self._speech.response_format]
                self._request.setHeader(b"content-type", content_type)
            self._request.registerProducer(self._pacer, True)
        self._pacer.start()
        return self._done

    def _frame(self, frame: bytes) -> None:
        self._kept.append(frame)
        if not self._speech.stream:
            return
        made = self._pacer.frames_made
        if made == INITIAL_CHUNK_FRAMES or len(self._kept) >= self._chunk_frames:
            self._emit_kept(first=made == len(self._kept))

    def _emit_kept(self, first: bool) -> None:
        data = b"".join(self._kept)
        self._kept.clear()
        if first and self._speech.response_format == "wav":
            data = wav_header(None) + data
        if self._speech.sse:
            audio = base64.b64encode(data).decode("ascii")
            delta = {
                "type": "speech.audio.delta",
                "audio": audio,
                "response_format": self._speech.response_format,
            }
            data = _sse_event(delta)
        self._request.write(data)

    def _complete(self) -> None:
        frames_made = self._pacer.frames_made
        log.info(
            "speech generated: {frames} frames ({seconds:.2f} s of audio) in voice {voice}",
            frames=frames_made,
            seconds=frames_made * FRAME_SECONDS,
            voice=self._speech.voice.name,
        )
        if not self._speech.stream:
            body = encode(b"".join(self._kept), self._speech.response_format)
            self._kept.clear()
            content_type = CONTENT_TYPES[self._speech.response_format]
            self._request.setHeader(b"content-type", content_type)
            self._request.setHeader(b"content-length", b"%d" % len(body))
            for name, value in usage_headers(self._speech, frames_made).items():
                self._request.setHeader(name, value)
            self._done.callback(body)
            return
        if self._kept:
            self._emit_kept(first=False)
        if self._speech.sse:
            done = {"type": "speech.audio.done", "usage": usage(self._speech, frames_made)}
            self._request.write(_sse_event(done))
        self._request.unregisterProducer()
        self._done.callback(None)

    def _aborted(self) -> None:
        self._kept.clear()
        log.info(
            "speech generation aborted: {why} after {frames} frames",
            why="client disconnected",
            frames=self._pacer.frames_made,
            total_frames=self.total_frames,
            voice=self._speech.voice.name,
        )

    def _client_gone(self, reason: Failure) -> None:
        self._pacer.stop()

    def _cancelled(self, d: Deferred[bytes | None]) -> None:
        # Klein cancels the route's Deferred when the client leaves; nothing more to say then.
        self._pacer.stop()


#: ``BatchSpeechRequest``: its shared defaults (each item may override them) and its limit.
_BATCH_DEFAULTS = (
    "voice",
    "response_format",
    "speed",
    "task_type",
    "language",
    "instructions",
    "ref_audio",
    "ref_text",
    "max_new_tokens",
)
MAX_BATCH_ITEMS = 32


def speech_batch(raw: bytes, voices: VoiceRegistry, model_name: str = MODEL_NAME) -> Any:
    """``POST /v1/audio/speech/batch``: each item spoken whole, results in order.

    An item that fails its checks is an ``"error"`` result, not a failed batch, as in
    vLLM-Omni; the audio is made at once (no pacing: the batch answers when all are done).
    """
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object")
    items = body.get("items")
    if not isinstance(items, list) or not items:
        raise APIError("items: List should have at least 1 item after validation", param="items")
    if len(items) > MAX_BATCH_ITEMS:
        raise APIError(
            f"Batch contains {len(items)} items, exceeding the maximum of {MAX_BATCH_ITEMS}."
        )
    model = body.get("model")
    if isinstance(model, str) and model and model != model_name:
        raise _not_found(f"The model `{model}` does not exist.", param="model")
    results: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise APIError(f"items.{index}: Input should be a valid dictionary", param="items")
        merged = {k: body[k] for k in _BATCH_DEFAULTS if body.get(k) is not None}
        merged.update({k: v for k, v in item.items() if v is not None})
        merged["stream"] = False
        merged.pop("stream_format", None)
        try:
            speech = parse_speech_request(json.dumps(merged).encode(), voices, model_name)
        except APIError as e:
            results.append({"index": index, "status": "error", "error": e.message})
            continue
        renderer = synthesize(speech.input, speech.voice, speech.speed)
        data = encode(b"".join(renderer.frames()), speech.response_format)
        results.append(
            {
                "index": index,
                "status": "success",
                "audio_data": base64.b64encode(data).decode("ascii"),
                "media_type": CONTENT_TYPES[speech.response_format].decode(),
                "usage": usage(speech, renderer.total_frames),
            }
        )
    succeeded = sum(1 for r in results if r["status"] == "success")
    batch_id = hashlib.sha256(raw).hexdigest()[:32]
    return {
        "id": f"speech-batch-{batch_id}",
        "results": results,
        "total": len(results),
        "succeeded": succeeded,
        "failed": len(results) - succeeded,
    }


# --- /v1/audio/voices ----------------------------------------------------------------------


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
        raise _too_large(len(sample))

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


def _too_large(size: int) -> APIError:
    return APIError(
        f"File size exceeds maximum limit of 10MB. Got {size} bytes.", param="audio_sample"
    )


def _body_size(request: IRequest) -> int:
    content = request.content
    if content is None:
        return 0
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    return int(size)


def _body(request: IRequest) -> bytes:
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data


# --- routes --------------------------------------------------------------------------------


def _json_body(request: IRequest, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _json(request: IRequest, payload: Any) -> bytes:
    return _json_body(request, 200, json.dumps(payload).encode())


def _apply_error(request: IRequest, error: APIError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name, value)
    return _json_body(request, error.status, error.body())


class _Routes:
    app = Klein()
    # werkzeug would redirect a missing trailing slash or ``//`` (with an HTML body).
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False

    def __init__(self, upstream: DemoUpstream) -> None:
        self._upstream = upstream
        self._voices = upstream.voices

    @app.route("/v1/audio/speech", methods=["POST"])
    def speech(self, request: Request) -> Deferred[bytes | None]:
        speech = parse_speech_request(_body(request), self._voices, self._upstream.model_name)
        generation = _Generation(
            request,
            speech,
            clock=self._upstream.reactor,
            first_chunk_delay=self._upstream.first_chunk_delay,
            frame_interval=self._upstream.rtf * FRAME_SECONDS,
            chunk_frames=self._upstream.chunk_frames,
        )
        log.debug(
            "speech request: {frames} frames in voice {voice}",
            frames=generation.total_frames,
            voice=speech.voice.name,
        )
        return generation.start()

    @app.route("/v1/audio/speech/batch", methods=["POST"])
    def speech_batch(self, request: IRequest) -> bytes:
        answer = speech_batch(_body(request), self._voices, self._upstream.model_name)
        return _json(request, answer)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return _json(request, {"status": "healthy"})

    @app.route("/v1/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        name = self._upstream.model_name
        model = {
            "id": name,
            "object": "model",
            "created": int(self._upstream.reactor.seconds()),
            "owned_by": "vllm",
            "root": name,
            "parent": None,
        }
        return _json(request, {"object": "list", "data": [model]})

    @app.route("/v1/audio/voices", methods=["GET"])
    def list_voices(self, request: IRequest) -> bytes:
        uploaded = [v.describe() for v in self._voices.uploaded.values()]
        return _json(request, {"voices": self._voices.names(), "uploaded_voices": uploaded})

    @app.route("/v1/audio/voices", methods=["POST"])
    def upload_voice(self, request: IRequest) -> bytes:
        size = _body_size(request)
        if size > MAX_VOICE_SAMPLE_BYTES + _MULTIPART_SLACK:
            # Too big to hold a sample under the limit: refuse without parsing it.
            raise _too_large(size)
        content_type = request.getHeader(b"content-type") or b""
        voice = parse_voice_upload(
            content_type.decode("latin-1"),
            _body(request),
            created_at=int(self._upstream.reactor.seconds()),
        )
        self._voices.add(voice)
        log.info("voice {name!r} uploaded ({size} bytes)", name=voice.name, size=voice.file_size)
        return _json(request, {"success": True, "voice": voice.describe()})

    @app.route("/v1/audio/voices/<string:name>", methods=["DELETE"])
    def delete_voice(self, request: IRequest, name: str) -> bytes:
        if not self._voices.remove(name):
            # Not vLLM's error shape: vLLM-Omni's route answers this one itself.
            body = json.dumps({"success": False, "error": f"Voice '{name}' not found"})
            return _json_body(request, 404, body.encode())
        log.info("voice {name!r} deleted", name=name)
        return _json(request, {"success": True, "message": f"Voice '{name}' deleted successfully"})

    @app.handle_errors(APIError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, APIError)
        return _apply_error(request, error)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        # Klein would answer these with werkzeug's HTML pages.
        exception = failure.value
        assert isinstance(exception, HTTPException)
        status = exception.code or 500
        if status == 405:
            allowed = ", ".join(sorted(getattr(exception, "valid_methods", None) or []))
            error = APIError(
                "Method Not Allowed",
                status=405,
                type="MethodNotAllowedError",
                headers={b"allow": allowed.encode("ascii")},
            )
        elif status == 404:
            error = _not_found("Not Found")
        else:
            error = APIError(exception.name, status=status, type="BadRequestError")
        return _apply_error(request, error)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("demo upstream failed on {uri}", failure, uri=request.uri)
        error = APIError(
            f"{type(failure.value).__name__}: {failure.getErrorMessage()}",
            status=500,
            type="InternalServerError",
        )
        return _apply_error(request, error)


# --- embedding -----------------------------------------------------------------------------


def _non_negative(name: str) -> Any:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")

    return check


class DemoUpstreamSite(Site):
    """A ``Site`` whose combined-log lines say they are the demo upstream's."""

    def log(self, request: Any) -> None:
        line = self._logFormatter(self._logDateTime, request)
        access_log.info("demo upstream: {line}", line=line)


def _at_least_one(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"chunk_frames must be a whole number >= 1, not {value!r}")


@frozen
class DemoUpstream:
    """A stand-in for the Qwen3-TTS container, to serve or embed.

    ``first_chunk_delay`` is the seconds before the first 80 ms frame; ``rtf`` the real-time
    factor (seconds of work per second of audio: 0.5 makes each frame in 40 ms; 0 as fast as
    the reactor runs); ``chunk_frames`` how many frames a streamed chunk holds after the first,
    which is one frame alone, as vLLM-Omni sends them. Uploaded voices live as long as this
    object.
    """

    reactor: IReactorTime
    first_chunk_delay: float = field(default=0.1, validator=_non_negative("first_chunk_delay"))
    rtf: float = field(default=0.5, validator=_non_negative("rtf"))
    model_name: str = MODEL_NAME
    #: Codec frames per streamed chunk after the first (vLLM-Omni's ``codec_chunk_frames``).
    chunk_frames: int = field(default=CHUNK_FRAMES, validator=_at_least_one)
    voices: VoiceRegistry = field(factory=VoiceRegistry, eq=False)
    #: The WebSocket session's limits: seconds without a message, and to send the config.
    ws_idle_timeout: float = field(default=IDLE_TIMEOUT, validator=_non_negative("ws_idle_timeout"))
    ws_config_timeout: float = field(
        default=CONFIG_TIMEOUT, validator=_non_negative("ws_config_timeout")
    )

    def resource(self) -> IResource:
        """The root resource: the Klein routes, and the WebSocket ``/v1/audio/speech/stream``."""
        routes: IResource = _Routes(self).app.resource()
        settings = StreamSettings(
            clock=self.reactor,
            first_chunk_delay=self.first_chunk_delay,
            frame_interval=self.rtf * FRAME_SECONDS,
            parse_config=lambda message: parse_stream_config(message, self.model_name),
            prepare=lambda config, text: prepare_stream_speech(
                config, text, self.voices, self.model_name
            ),
            chunk_frames=self.chunk_frames,
            idle_timeout=self.ws_idle_timeout,
            config_timeout=self.ws_config_timeout,
        )
        return DemoRoot(routes, stream_resource(settings))

    def site(self) -> Site:
        """A ``Site`` serving L{resource} (multipart bodies left to the route to parse)."""
        site = DemoUpstreamSite(  # type: ignore[no-untyped-call]
            self.resource(), reactor=self.reactor, parsePOSTFormSubmission=False
        )
        site.displayTracebacks = False
        site.noisy = False
        return site


def listen_demo(
    reactor: Any,
    *,
    first_chunk_delay: float = 0.1,
    rtf: float = 0.5,
    interface: str = "127.0.0.1",
    port: int = 0,
) -> Deferred[IListeningPort]:
    """Serve a new L{DemoUpstream} on ``interface:port`` (an ephemeral loopback port by default).

    ``reactor`` must provide ``IReactorTCP`` and ``IReactorTime``. The port's
    ``getHost().port`` is where to send requests; ``stopListening()`` ends it.
    """
    upstream = DemoUpstream(reactor=reactor, first_chunk_delay=first_chunk_delay, rtf=rtf)
    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
    listening: Deferred[IListeningPort] = endpoint.listen(upstream.site())
    return listening
