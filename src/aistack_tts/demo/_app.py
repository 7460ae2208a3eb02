"""The demo upstream's routes: what vLLM-Omni serving Qwen3-TTS-12Hz-0.6B-CustomVoice answers.

Request checks are plain functions (``parse_speech_request``, ``parse_voice_upload``) that raise
L{APIError}; the Klein routes only glue them to a L{_Generation}, which makes audio one codec
frame at a time on the injected clock, like the real model does on its GPU. The WebSocket
stream (``/v1/audio/speech/stream``) lives in ``_stream``.
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

from ._pacing import PacedFrames
from ._stream import (
    DemoRoot,
    StreamConfig,
    StreamError,
    StreamSettings,
    stream_resource,
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
#: Formats this demo can produce (the real server also encodes mp3, flac, aac and opus).
RESPONSE_FORMATS = ("wav", "pcm")
STREAM_FORMATS = ("audio", "sse")
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
#: Room for the multipart framing and the small text fields around the sample.
_MULTIPART_SLACK = 64 * 1024
_VOICE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
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
_CONTENT_TYPES = {"wav": b"audio/wav", "pcm": b"audio/pcm"}


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
    stream: bool = False
    stream_format: str = "audio"

    @property
    def sse(self) -> bool:
        """Server-sent events (base64 deltas) rather than raw audio bytes."""
        return self.stream_format == "sse"


_KINDS: dict[str, tuple[type, ...]] = {
    "a valid string": (str,),
    "a valid boolean": (bool,),
    "a valid number": (int, float),
}


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


def parse_speech_request(
    raw: bytes, voices: VoiceRegistry, model_name: str = MODEL_NAME
) -> SpeechRequest:
    """Check a speech request body in the order vLLM does; raise L{APIError} on the first fault."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object")

    # Schema checks first (pydantic's part in vLLM), then the server's own.
    if "input" not in body or body["input"] is None:
        raise APIError("input: Field required", param="input")
    text = _field(body, "input", "a valid string", "")
    if len(text) > MAX_INPUT_CHARS:
        raise APIError(
            f"input: String should have at most {MAX_INPUT_CHARS} characters, got {len(text)}",
            param="input",
        )
    response_format = _field(body, "response_format", "a valid string", "wav")
    if response_format not in RESPONSE_FORMATS:
        raise APIError(
            f"response_format {response_format!r} is not supported by this server; "
            f"supported: {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    speed = _field(body, "speed", "a valid number", 1.0)
    if not (math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED):
        raise APIError(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}", param="speed"
        )
    stream = _field(body, "stream", "a valid boolean", False)
    stream_format = _field(body, "stream_format", "a valid string", "audio")
    if stream_format not in STREAM_FORMATS:
        raise APIError(
            f"stream_format {stream_format!r} is not supported; "
            f"supported: {', '.join(STREAM_FORMATS)}",
            param="stream_format",
        )

    model = _field(body, "model", "a valid string", None)
    if model and model != model_name:
        raise _not_found(f"The model `{model}` does not exist.", param="model")
    if not text.strip():
        raise APIError("Input text cannot be empty", param="input")
    language = _field(body, "language", "a valid string", "Auto")
    if language not in LANGUAGES:
        raise APIError(
            f"Invalid language '{language}'. Supported: {', '.join(LANGUAGES)}",
            param="language",
        )
    voice_name = _field(body, "voice", "a valid string", DEFAULT_VOICE)
    voice = voices.get(voice_name)
    if voice is None:
        raise APIError(
            f"Invalid speaker '{voice_name.lower()}'. Supported: {', '.join(voices.names())}",
            param="voice",
        )
    return SpeechRequest(
        input=text,
        voice=voice,
        response_format=response_format,
        speed=float(speed),
        language=language,
        # An event stream is a stream whatever ``stream`` says.
        stream=stream or stream_format == "sse",
        stream_format=stream_format,
    )


def parse_stream_config(
    message: Mapping[str, Any], voices: VoiceRegistry, model_name: str = MODEL_NAME
) -> StreamConfig:
    """Check a ``session.config`` as vLLM-Omni does: as a speech request without its input.

    Audio is streamed as it is made, which vLLM-Omni only does in ``pcm`` (the default here).
    """
    fields = {k: v for k, v in message.items() if k not in ("type", "input")}
    if fields.get("response_format") is None:
        fields["response_format"] = "pcm"
    try:
        speech = parse_speech_request(
            json.dumps({**fields, "input": "ping"}).encode(), voices, model_name
        )
    except APIError as e:
        raise StreamError(f"Invalid session config: {e.message}") from None
    if speech.response_format != "pcm":
        raise StreamError(
            "Invalid session config: response_format must be 'pcm' for a speech stream "
            "(audio is sent as it is generated)"
        )
    return StreamConfig(voice=speech.voice, speed=speech.speed, response_format="pcm")


def _sse_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _Generation:
    """One utterance being made, a frame at a time by a L{PacedFrames}.

    Streamed, each frame is written as it is made (the first one behind the WAV header);
    otherwise frames are kept and the whole file is the result of ``start()``'s Deferred.
    """

    def __init__(
        self,
        request: Request,
        speech: SpeechRequest,
        *,
        clock: IReactorTime,
        first_chunk_delay: float,
        frame_interval: float,
    ) -> None:
        self._request = request
        self._speech = speech
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
                self._request.setHeader(b"content-type", b"text/event-stream")
                self._request.setHeader(b"cache-control", b"no-cache")
            else:
                content_type = _CONTENT_TYPES[self._speech.response_format]
                self._request.setHeader(b"content-type", content_type)
            self._request.registerProducer(self._pacer, True)
        self._pacer.start()
        return self._done

    def _frame(self, frame: bytes) -> None:
        if self._pacer.frames_made == 1 and self._speech.response_format == "wav":
            # Streamed, the length is not known yet; kept, it is exactly the frames to come.
            size = None if self._speech.stream else self.total_frames * len(frame)
            frame = wav_header(size) + frame
        if self._speech.stream:
            self._emit(frame)
        else:
            self._kept.append(frame)

    def _emit(self, data: bytes) -> None:
        if self._speech.sse:
            audio = base64.b64encode(data).decode("ascii")
            data = _sse_event({"type": "speech.audio.delta", "audio": audio})
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
            body = b"".join(self._kept)
            self._kept.clear()
            self._request.setHeader(b"content-type", _CONTENT_TYPES[self._speech.response_format])
            self._request.setHeader(b"content-length", b"%d" % len(body))
            self._done.callback(body)
            return
        if self._speech.sse:
            tokens = max(1, len(self._speech.input) // 4)
            usage = {
                "input_tokens": tokens,
                "output_tokens": frames_made,
                "total_tokens": tokens + frames_made,
            }
            self._request.write(_sse_event({"type": "speech.audio.done", "usage": usage}))
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

    def describe(self) -> dict[str, Any]:
        """What the voices endpoints show about this voice."""
        return {
            "name": self.name,
            "consent": self.consent,
            "created_at": self.created_at,
            "mime_type": self.mime_type,
            "file_size": self.file_size,
        }


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

    def names(self) -> list[str]:
        """Every usable voice name, lower-case and sorted, as vLLM lists them."""
        return sorted({*self._builtin, *self.uploaded})

    def add(self, voice: UploadedVoice) -> None:
        """Add an uploaded voice; a taken name is an L{APIError}."""
        key = voice.name.lower()
        if key in self._builtin or key in self.uploaded:
            raise APIError(f"Voice '{voice.name}' already exists", param="name")
        self.uploaded[key] = voice

    def remove(self, name: str) -> None:
        """Remove an uploaded voice; one that is not there is a 404."""
        if self.uploaded.pop(name.lower(), None) is None:
            raise _not_found(f"Voice '{name}' not found", param="name")


def _multipart_parts(content_type: str, body: bytes) -> list[Message]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise APIError("The request body is not valid multipart/form-data")
    return [part for part in message.iter_parts() if isinstance(part, Message)]


def parse_voice_upload(content_type: str, body: bytes, created_at: int) -> UploadedVoice:
    """Check a ``POST /v1/audio/voices`` form (``audio_sample``, ``name``, ``consent``)."""
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

    name, consent = text("name"), text("consent")
    if not _VOICE_NAME.match(name):
        raise APIError("name must be 1-64 letters, digits, '_', '-' or '.'", param="name")
    if not consent:
        raise APIError("consent: a consent recording ID is required", param="consent")
    sample_part = fields["audio_sample"]
    payload = sample_part.get_payload(decode=True)
    sample = payload if isinstance(payload, bytes) else b""
    if len(sample) > MAX_VOICE_SAMPLE_BYTES:
        raise _too_large(len(sample))
    if not sample:
        raise APIError("audio_sample: the file is empty", param="audio_sample")
    mime_type = sample_part.get_content_type()
    filename = sample_part.get_filename() or ""
    if mime_type in ("application/octet-stream", "text/plain"):
        extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else "wav"
        mime_type = _EXTENSION_MIME_TYPES.get(extension, mime_type)
    if mime_type not in _SAMPLE_MIME_TYPES:
        raise APIError(
            f"Unsupported MIME type: {mime_type}. Allowed: {', '.join(sorted(_SAMPLE_MIME_TYPES))}",
            param="audio_sample",
        )
    return UploadedVoice(
        name=name,
        consent=consent,
        created_at=created_at,
        mime_type=mime_type,
        file_size=len(sample),
        profile=profile_for_upload(name, hashlib.sha256(sample).digest()),
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
        )
        log.debug(
            "speech request: {frames} frames in voice {voice}",
            frames=generation.total_frames,
            voice=speech.voice.name,
        )
        return generation.start()

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
        self._voices.remove(name)
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


@frozen
class DemoUpstream:
    """A stand-in for the Qwen3-TTS container, to serve or embed.

    ``first_chunk_delay`` is the seconds before the first 80 ms frame; ``rtf`` the real-time
    factor (seconds of work per second of audio: 0.5 makes each frame in 40 ms; 0 as fast as
    the reactor runs). Uploaded voices live as long as this object.
    """

    reactor: IReactorTime
    first_chunk_delay: float = field(default=0.1, validator=_non_negative("first_chunk_delay"))
    rtf: float = field(default=0.5, validator=_non_negative("rtf"))
    model_name: str = MODEL_NAME
    voices: VoiceRegistry = field(factory=VoiceRegistry, eq=False)

    def resource(self) -> IResource:
        """The root resource: the Klein routes, and the WebSocket ``/v1/audio/speech/stream``."""
        routes: IResource = _Routes(self).app.resource()
        settings = StreamSettings(
            clock=self.reactor,
            first_chunk_delay=self.first_chunk_delay,
            frame_interval=self.rtf * FRAME_SECONDS,
            parse_config=lambda message: parse_stream_config(message, self.voices, self.model_name),
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
