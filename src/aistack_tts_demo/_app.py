"""The demo upstream's routes: what vLLM-Omni serving Qwen3-TTS-12Hz-0.6B-CustomVoice answers.

The top of the demo. Request checks are plain functions one step below
(``_speech.parse_speech_request``, ``_voices.parse_voice_upload``, ``_batch.speech_batch``)
that raise ``APIError``; the Klein routes only glue them to a ``Generation``, which makes audio
one codec frame at a time on the injected clock, like the real model does on its GPU. The
WebSocket stream (``/v1/audio/speech/stream``) lives in ``_stream`` and ``_stream_config``;
``DemoRoot`` sends its upgrades there and the rest to Klein.
"""

from __future__ import annotations

import math
import uuid
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

from . import _routing
from ._api_error import APIError, render_json
from ._batch import speech_batch
from ._generation import CHUNK_FRAMES, Generation
from ._speech import MODEL_NAME, parse_speech_request, prepare_stream_speech
from ._stream import STREAM_PATH, StreamSettings, stream_resource
from ._stream_config import CONFIG_TIMEOUT, IDLE_TIMEOUT, parse_stream_config
from ._synth import FRAME_SECONDS
from ._voice_upload import MAX_UPLOAD_BODY, Answer, parse_voice_upload, too_large
from ._voices import VoiceRegistry

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
    return _routing.respond(request, status, body, b"application/json")


def _json(request: IRequest, payload: Any, status: int = 200) -> bytes:
    """Answer as Starlette's ``JSONResponse`` (vLLM-Omni's routes all answer with one)."""
    return _json_body(request, status, render_json(payload))


#: The talker stage's ``max_model_len`` (stage 0 of vLLM-Omni's Qwen3-TTS stage config), which
#: ``AsyncOmni`` takes its ``model_config`` from.
MAX_MODEL_LEN = 4096


def _model_card(name: str, now: int) -> dict[str, Any]:
    """VLLM's ``ModelCard`` for the base model, fields in its order, one ``ModelPermission``."""
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": name,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": name,
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
        "permission": [permission],
    }


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
        # vLLM's own /health (an empty 200) comes first in the app and shadows vLLM-Omni's.
        return _routing.respond(request, 200, b"", None)

    @app.route("/v1/models", methods=["GET"])
    def models(self, request: IRequest) -> bytes:
        card = _model_card(self._upstream.model_name, int(self._upstream.reactor.seconds()))
        return _json(request, {"object": "list", "data": [card]})

    @app.route("/v1/audio/voices", methods=["GET"])
    def list_voices(self, request: IRequest) -> bytes:
        return _json_body(request, 200, Answer(200, self._voices.listing()).body())

    @app.route("/v1/audio/voices", methods=["POST"])
    def upload_voice(self, request: IRequest) -> bytes:
        size = _body_size(request)
        if size > MAX_UPLOAD_BODY:
            # The demo's guard: too big to be worth parsing (the real server reads it all).
            answer = too_large(size)
        else:
            content_type = request.getHeader(b"content-type")
            answer = parse_voice_upload(
                None if content_type is None else content_type.decode("latin-1"),
                _body(request),
                self._voices,
                now=self._upstream.reactor.seconds(),
            )
        voice = answer.payload.get("voice")
        if voice is not None:
            log.info("voice {name!r} uploaded", name=voice["name"])
        return _json_body(request, answer.status, answer.body())

    @app.route("/v1/audio/voices/<string:name>", methods=["DELETE"])
    def delete_voice(self, request: IRequest, name: str) -> bytes:
        status, payload = self._voices.delete(name)
        if status == 200:
            log.info("voice {name!r} deleted", name=name)
        return _json_body(request, status, Answer(status, payload).body())

    @app.handle_errors(APIError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, APIError)
        return _apply_error(request, error)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        # DemoRoot routes as Starlette first, so werkzeug should not refuse anything; if it
        # does, answer in Starlette's shape rather than with werkzeug's HTML page.
        exception = failure.value
        assert isinstance(exception, HTTPException)
        return _routing.detail(request, exception.code or 500, exception.name)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("demo upstream failed on {uri}", failure, uri=request.uri)
        exception = failure.value
        assert exception is not None
        status, body = _routing.unexpected_error(exception)
        if body is None:
            return _routing.respond(request, status, b"", None)
        # Starlette's ServerErrorMiddleware re-raises after answering, and uvicorn then closes
        # the connection.
        channel = getattr(request, "channel", None)
        if channel is not None and isinstance(request, Request):
            request.notifyFinish().addBoth(lambda _: channel.loseConnection())
        return _json_body(request, status, body)


# --- embedding -----------------------------------------------------------------------------


class DemoRoot(Resource):
    """The demo's root: WebSocket upgrades of the stream path to autobahn, the rest to Klein."""

    isLeaf = True

    def __init__(self, routes: IResource, stream: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = routes
        self._stream = stream

    def render(self, request: IRequest) -> Any:
        request.setHeader(b"server", _routing.SERVER)
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if request.path == STREAM_PATH and b"websocket" in upgrade:
            return self._stream.render(request)
        # vLLM's CORSMiddleware runs before routing.
        preflight = _routing.cors_preflight(request)
        if preflight is not None:
            return preflight
        _routing.cors_simple(request)
        path = _routing.route_path(request)
        verdict, route = _routing.match(path, request.method.decode("latin-1"))
        if verdict == "full":
            return self._routes.render(request)
        if route is not None:
            allow = ", ".join(route.methods).encode("ascii")
            return _routing.detail(request, 405, "Method Not Allowed", (b"allow", allow))
        try:
            location = _routing.redirect_target(request, path)
        except UnicodeDecodeError as e:  # a query string not UTF-8, as Starlette decodes it
            status, body = _routing.unexpected_error(e)
            return _json_body(request, status, body or b"")
        if location is not None:
            return _routing.respond(
                request, 307, b"", None, ((b"location", location.encode("latin-1")),)
            )
        return _routing.detail(request, 404, "Not Found")


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
