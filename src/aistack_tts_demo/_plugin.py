"""``twist aistack-tts-demo-upstream``: its ``Options`` and ``makeService``, loaded lazily."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from attrs import frozen
from twisted.application.service import IService, MultiService
from twisted.python import usage

from aistack_tts import ConfigError, add_listeners, or_fail, parse_endpoints, use_json_lines

from ._app import DemoUpstream
from ._speech import MODEL_NAME
from ._stream_config import CONFIG_TIMEOUT, IDLE_TIMEOUT

_PROGRAM = "aistack-tts-demo-upstream"

DEFAULT_LISTEN = "tcp:8091:interface=127.0.0.1"
DEFAULT_FIRST_CHUNK_DELAY = 0.1
DEFAULT_RTF = 0.5

_ENV = {
    "listen": "AISTACK_TTS_DEMO_LISTEN",
    "first-chunk-delay": "AISTACK_TTS_DEMO_FIRST_CHUNK_DELAY",
    "rtf": "AISTACK_TTS_DEMO_RTF",
    "model": "AISTACK_TTS_DEMO_MODEL",
    "ws-idle-timeout": "AISTACK_TTS_DEMO_WS_IDLE_TIMEOUT",
    "ws-config-timeout": "AISTACK_TTS_DEMO_WS_CONFIG_TIMEOUT",
}
_SECONDS = {
    "first-chunk-delay": "first_chunk_delay",
    "rtf": "rtf",
    "ws-idle-timeout": "ws_idle_timeout",
    "ws-config-timeout": "ws_config_timeout",
}


class DemoConfigError(ConfigError):
    """A setting that cannot work; its message is one line for the operator."""


@frozen
class DemoSettings:
    """The demo upstream's settings, from the command line, the environment or defaults."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    first_chunk_delay: float = DEFAULT_FIRST_CHUNK_DELAY
    rtf: float = DEFAULT_RTF
    model: str = MODEL_NAME
    ws_idle_timeout: float = IDLE_TIMEOUT
    ws_config_timeout: float = CONFIG_TIMEOUT


def _seconds(source: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DemoConfigError(f"{source}: {raw!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise DemoConfigError(f"{source}: {raw!r} must be a finite number >= 0")
    return value


class Options(usage.Options):
    """Options for ``twist aistack-tts-demo-upstream``; ``self.settings`` holds the result."""

    synopsis = "[options]"
    longdesc = (
        "A stand-in for the Qwen3-TTS container (vLLM-Omni): /v1/audio/speech answers with a "
        "synthetic voice made one 80 ms frame at a time, /v1/audio/voices lists, uploads and "
        "deletes voices. Every option can also come from the environment variable in its help."
    )
    optParameters = [
        [
            "first-chunk-delay",
            None,
            None,
            "Seconds before the first audio frame "
            f"[env {_ENV['first-chunk-delay']}; default {DEFAULT_FIRST_CHUNK_DELAY}]",
        ],
        [
            "rtf",
            None,
            None,
            "Real-time factor: seconds of work per second of audio, 0.5 makes each 80 ms "
            f"frame in 40 ms, 0 as fast as possible [env {_ENV['rtf']}; default {DEFAULT_RTF}]",
        ],
        [
            "model",
            None,
            None,
            f"Served model name [env {_ENV['model']}; default {MODEL_NAME}]",
        ],
        [
            "ws-idle-timeout",
            None,
            None,
            "Seconds a WebSocket session may go without a client message, as vLLM-Omni's "
            f"[env {_ENV['ws-idle-timeout']}; default {IDLE_TIMEOUT:g}]",
        ],
        [
            "ws-config-timeout",
            None,
            None,
            "Seconds a new WebSocket session has to send its session.config "
            f"[env {_ENV['ws-config-timeout']}; default {CONFIG_TIMEOUT:g}]",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ = os.environ if environ is None else environ
        self["listen"] = []
        self.settings = DemoSettings()

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve on (repeatable) [env AISTACK_TTS_DEMO_LISTEN, space-separated; default tcp:8091:interface=127.0.0.1]"""  # noqa: E501
        self["listen"].append(description)

    def postOptions(self) -> None:
        """Build and check the settings; a bad value ends the program with one line."""
        self.settings = or_fail(_PROGRAM, self.build_settings)
        # Under twist, its JSON log format (the default off a terminal) becomes the gateway's
        # JSON lines: one object per line, as jq and log shippers read them.
        use_json_lines(getattr(self, "parent", None))

    def _raw(self, name: str) -> tuple[str, str] | None:
        if self[name] is not None:
            return f"--{name}", str(self[name])
        env = _ENV[name]
        if self._environ.get(env, "").strip():
            return env, self._environ[env].strip()
        return None

    def build_settings(self) -> DemoSettings:
        """Command line over environment over defaults; raises ``DemoConfigError``."""
        values: dict[str, Any] = {}
        listen = self["listen"] or self._environ.get(_ENV["listen"], "").split()
        if listen:
            values["listen"] = tuple(listen)
        for name, attribute in _SECONDS.items():
            raw = self._raw(name)
            if raw is not None:
                values[attribute] = _seconds(*raw)
        model = self._raw("model")
        if model is not None:
            values["model"] = model[1]
        return DemoSettings(**values)


def make_demo_service(settings: DemoSettings, reactor: Any) -> IService:
    """Listeners for a ``DemoUpstream`` on every endpoint in ``settings``."""
    upstream = DemoUpstream(
        reactor=reactor,
        first_chunk_delay=settings.first_chunk_delay,
        rtf=settings.rtf,
        model_name=settings.model,
        ws_idle_timeout=settings.ws_idle_timeout,
        ws_config_timeout=settings.ws_config_timeout,
    )
    service = MultiService()
    add_listeners(_PROGRAM, service, parse_endpoints(reactor, settings.listen), upstream.site())
    return service


def makeService(options: Options) -> IService:
    """Entry point for the ``twist`` plugin (imported lazily by the ServiceMaker)."""
    from twisted.internet import reactor

    return or_fail(_PROGRAM, lambda: make_demo_service(options.settings, reactor))


__all__ = ["DemoSettings", "Options", "makeService"]
