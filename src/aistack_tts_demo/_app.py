"""The demo upstream's routes: what vLLM-Omni serving Qwen3-TTS-12Hz-0.6B-CustomVoice answers.

The top of the demo. Request checks are plain functions one step below
(``_speech.parse_speech_request``, ``_voices.parse_voice_upload``, ``_batch.speech_batch``)
that raise ``APIError``; the Klein routes only glue them to a ``Generation``, which makes audio
one codec frame at a time on the injected clock, like the real model does on its GPU. The
WebSocket stream (``/v1/audio/speech/stream``) lives in ``_stream`` and ``_stream_config``;
``DemoRoot`` sends its upgrades there and the rest to Klein.
"""

from __future__ import annotations

import json
import math
from typing import Any

from attrs import field, frozen
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException

from ._api_error import APIError, not_found, render_json
from ._batch import speech_batch
from ._generation import CHUNK_FRAMES, Generation
from ._speech import MODEL_NAME, parse_speech_request, prepare_stream_speech
from ._stream import STREAM_PATH, StreamSettings, stream_resource
from ._stream_config import CONFIG_TIMEOUT, IDLE_TIMEOUT, parse_stream_config
from ._synth import FRAME_SECONDS
from ._voices import (
    MAX_VOICE_SAMPLE_BYTES,
    MULTIPART_SLACK,
    VoiceRegistry,
    parse_voice_upload,
    too_large,
)

log = Logger(namespace="aistack_tts_demo")
#: The demo's access lines, marked as the demo's: in front of it, the gateway logs its own.
access_log = Logger(namespace="aistack_tts_demo.access")


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
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1") or None
        speech = parse_speech_request(
            _body(request), content_type, self._voices, self._upstream.model_name
        )
        generation = Generation(
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
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1") or None
        answer = speech_batch(_body(request), content_type, self._voices, self._upstream.model_name)
        # The route answers JSONResponse(result.model_dump()): Starlette's compact JSON.
        return _json_body(request, 200, render_json(answer))

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
        if size > MAX_VOICE_SAMPLE_BYTES + MULTIPART_SLACK:
            # Too big to hold a sample under the limit: refuse without parsing it.
            raise too_large(size)
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
            error = not_found("Not Found")
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


class DemoRoot(Resource):
    """The demo's root: WebSocket upgrades of the stream path to autobahn, the rest to Klein."""

    isLeaf = True

    def __init__(self, routes: IResource, stream: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes
        self._stream = stream

    def render(self, request: IRequest) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.path == STREAM_PATH and b"websocket" in upgrade:
            return self._stream.render(request)
        return self._routes.render(request)


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
        """A ``Site`` serving ``resource`` (multipart bodies left to the route to parse)."""
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
    """Serve a new ``DemoUpstream`` on ``interface:port`` (an ephemeral loopback port by default).

    ``reactor`` must provide ``IReactorTCP`` and ``IReactorTime``. The port's
    ``getHost().port`` is where to send requests; ``stopListening()`` ends it.
    """
    upstream = DemoUpstream(reactor=reactor, first_chunk_delay=first_chunk_delay, rtf=rtf)
    endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
    listening: Deferred[IListeningPort] = endpoint.listen(upstream.site())
    return listening
