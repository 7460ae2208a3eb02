"""``twist aistack-tts`` options: command line, then environment, then defaults."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from twisted.copyright import version as twisted_version
from twisted.python import usage

from ._config import (
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DOWN_COOLDOWN,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY,
    DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_SLOTS,
    DEFAULT_WS_IDLE_TIMEOUT,
    ConfigError,
    GatewayConfig,
)
from ._version import __version__
from .observe._jsonlog import quiet_port_lines, use_json_lines
from .server._listen import or_fail

#: option name -> (environment variable, GatewayConfig field, parser, default, help)
_SETTINGS: list[tuple[str, str, str, Callable[[str], Any], object, str]] = [
    (
        "queue-timeout",
        "AISTACK_TTS_QUEUE_TIMEOUT",
        "queue_timeout",
        float,
        f"{DEFAULT_QUEUE_TIMEOUT:g}",
        "Seconds a request may wait for a busy GPU, first come first served; 503 gpu_busy at"
        " once only when the wait is expected to run past it (0: 503 at once). The default"
        " outlasts a typical generation or two and stays under a front proxy's 60 s",
    ),
    (
        "down-cooldown",
        "AISTACK_TTS_DOWN_COOLDOWN",
        "down_cooldown",
        float,
        f"{DEFAULT_DOWN_COOLDOWN:g}",
        "Seconds an upstream that refused a connection is passed over while another is up"
        " (with none up, a call tries it anyway; an answer ends the cool-down)",
    ),
    (
        "connect-timeout",
        "AISTACK_TTS_CONNECT_TIMEOUT",
        "connect_timeout",
        float,
        DEFAULT_CONNECT_TIMEOUT,
        "Seconds to wait for the upstream TCP connection",
    ),
    (
        "idle-timeout",
        "AISTACK_TTS_IDLE_TIMEOUT",
        "idle_timeout",
        float,
        DEFAULT_IDLE_TIMEOUT,
        "Seconds without an upstream byte (or a client read) before the call is given up",
    ),
    (
        "max-body",
        "AISTACK_TTS_MAX_BODY",
        "max_body",
        int,
        DEFAULT_MAX_BODY,
        "Largest request body in bytes; larger ones get 413 before they are stored",
    ),
    (
        "slots",
        "AISTACK_TTS_SLOTS",
        "slots",
        int,
        DEFAULT_SLOTS,
        "Capacity of the GPU slot (concurrent upstream calls)",
    ),
    (
        "ws-idle-timeout",
        "AISTACK_TTS_WS_IDLE_TIMEOUT",
        "ws_idle_timeout",
        float,
        DEFAULT_WS_IDLE_TIMEOUT,
        "Seconds an idle WebSocket session may hold the slot",
    ),
    (
        "client-timeout",
        "AISTACK_TTS_CLIENT_TIMEOUT",
        "client_timeout",
        float,
        DEFAULT_CLIENT_TIMEOUT,
        "Seconds a request head may take from its first byte, and a request body may stall;"
        " 408 after that",
    ),
    (
        "keepalive-timeout",
        "AISTACK_TTS_KEEPALIVE_TIMEOUT",
        "keepalive_timeout",
        float,
        "--client-timeout's value",
        "Seconds an idle keep-alive client connection is kept open",
    ),
    (
        "max-connections",
        "AISTACK_TTS_MAX_CONNECTIONS",
        "max_connections",
        int,
        "(descriptor limit - 64) / 2",
        "Open client connections beyond which new ones are closed at once",
    ),
    (
        "pool-idle-timeout",
        "AISTACK_TTS_POOL_IDLE_TIMEOUT",
        "pool_idle_timeout",
        float,
        DEFAULT_POOL_IDLE_TIMEOUT,
        "Seconds an idle upstream connection is kept for reuse (shorter when the upstream's"
        " Keep-Alive says so; 0: never reused)",
    ),
    (
        "drain-timeout",
        "AISTACK_TTS_DRAIN_TIMEOUT",
        "drain_timeout",
        float,
        DEFAULT_DRAIN_TIMEOUT,
        "Seconds in-flight calls may go on after SIGTERM before they are cut",
    ),
]
#: Repeatable options: option name -> (environment variable, GatewayConfig field).
_LISTS = {
    "listen": ("AISTACK_TTS_LISTEN", "listen"),
    "upstream": ("AISTACK_TTS_UPSTREAM", "upstream"),
    "slot-exempt": ("AISTACK_TTS_SLOT_EXEMPT", "slot_exempt"),
}


def _switch(env: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on", ""):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env}: {raw!r} is not one of 1/0, true/false, yes/no, on/off")


class Options(usage.Options):
    """Options for ``twist aistack-tts``; ``self.config`` is the validated ``GatewayConfig``."""

    synopsis = "[options]"
    longdesc = (
        "Transparent streaming gateway for /v1/audio/* in front of a Qwen3-TTS server, "
        "guarding one GPU slot. Every option can also come from the environment variable "
        "named in its help."
    )
    optFlags = [
        ["demo", None, "Start the built-in demo upstream in-process and use it"],
        ["no-metrics", None, "Do not serve GET /metrics [env AISTACK_TTS_METRICS=0]"],
        ["no-health", None, "Do not serve GET /healthz and /readyz [env AISTACK_TTS_HEALTH=0]"],
    ]
    optParameters = [
        [name, None, None, f"{help_} [env {env}; default {default}]"]
        for name, env, _field, _parse, default, help_ in _SETTINGS
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ = os.environ if environ is None else environ
        for name in _LISTS:
            self[name] = []
        self.config = GatewayConfig()

    def opt_version(self) -> NoReturn:
        """Print the gateway's version (and Twisted's) and exit"""
        print(f"aistack-tts {__version__}\nTwisted {twisted_version}")
        sys.exit(0)

    def opt_listen(self, description: str) -> None:
        """Endpoint to serve on (repeatable) [env AISTACK_TTS_LISTEN, space-separated; default tcp:8000:interface=127.0.0.1]"""  # noqa: E501
        self["listen"].append(description)

    def opt_upstream(self, url: str) -> None:
        """Base URL of a Qwen3-TTS (vLLM-Omni) server, one per GPU (repeatable) [env AISTACK_TTS_UPSTREAM, space-separated; default http://127.0.0.1:8091]"""  # noqa: E501
        self["upstream"].append(url)

    def opt_slot_exempt(self, rule: str) -> None:
        """METHOD:PATH of a call that needs no GPU slot; a * at the end matches a prefix (repeatable; replaces the default; 'none' alone: every call takes the slot) [env AISTACK_TTS_SLOT_EXEMPT, space-separated; default GET:/v1/audio/voices]"""  # noqa: E501
        self["slot-exempt"].append(rule)

    def postOptions(self) -> None:
        """Build and check the config; a bad value ends the program with one line."""
        self.config = or_fail("aistack-tts", self.build_config)
        # Under twist, its JSON log format (the default off a terminal) becomes JSON lines,
        # and the start-up line alone says where the gateway listens.
        use_json_lines(getattr(self, "parent", None))
        quiet_port_lines(getattr(self, "parent", None))

    def build_config(self) -> GatewayConfig:
        """Command line over environment over defaults; raises ``ConfigError``."""
        values: dict[str, Any] = {}
        for name, env, field_, parse, _default, _help in _SETTINGS:
            raw = self[name]
            source = f"--{name}"
            if raw is None and self._environ.get(env, "").strip():
                raw, source = self._environ[env].strip(), env
            if raw is None:
                continue
            try:
                values[field_] = parse(raw)
            except ValueError:
                raise ConfigError(f"{source}: {raw!r} is not a valid {parse.__name__}") from None
        for name, (env, field_) in _LISTS.items():
            listed = self[name] or self._environ.get(env, "").split()
            if listed:
                values[field_] = tuple(listed)
        values["demo"] = bool(self["demo"])
        if values["demo"] and "upstream" in values:
            source = "--upstream" if self["upstream"] else "AISTACK_TTS_UPSTREAM"
            raise ConfigError(
                f"--demo runs its own upstream: leave out {source} (or --demo, to use that one)"
            )
        for name, env in (("metrics", "AISTACK_TTS_METRICS"), ("health", "AISTACK_TTS_HEALTH")):
            values[name] = not self[f"no-{name}"] and _switch(env, self._environ.get(env, "1"))
        return GatewayConfig(**values)
