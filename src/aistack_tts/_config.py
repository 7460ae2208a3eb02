"""Configuration: one frozen, validated record; bad values fail at construction, in one line."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"
#: vLLM-Omni's documented port for the Qwen3-TTS server.
DEFAULT_UPSTREAM = "http://127.0.0.1:8091"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_BODY = 25 * 1024 * 1024
DEFAULT_SLOTS = 1
DEFAULT_WS_IDLE_TIMEOUT = 300.0
DEFAULT_DRAIN_TIMEOUT = 30.0


class ConfigError(ValueError):
    """A configuration value that cannot work; its message is one line for the operator."""


def parse_upstream(url: str) -> bytes:
    """Validate an upstream base URL; return it as bytes without a trailing slash."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"upstream URL {url!r} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"upstream URL {url!r} must look like http://HOST:PORT (http or https, with a host)"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"upstream URL {url!r} must not carry a query, fragment or credentials")
    if port == 0:
        raise ConfigError(f"upstream URL {url!r} has port 0")
    try:
        encoded = url.rstrip("/").encode("ascii")
    except UnicodeEncodeError:
        raise ConfigError(f"upstream URL {url!r} must be ASCII (punycode the host)") from None
    return encoded


def _positive_seconds(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")

    return check


def _check_upstream(_instance: Any, _attribute: Any, value: str) -> None:
    parse_upstream(value)


def _check_max_body(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"max-body must be a whole number of bytes >= 0, not {value!r}")


def _check_slots(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"slots must be a whole number >= 1, not {value!r}")


def _check_listen(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    if not value or any(not isinstance(v, str) or not v.strip() for v in value):
        raise ConfigError("listen needs at least one endpoint description, e.g. tcp:8000")


@frozen
class GatewayConfig:
    """Everything ``twist aistack-tts`` is told, checked."""

    upstream: str = field(default=DEFAULT_UPSTREAM, validator=_check_upstream)
    listen: tuple[str, ...] = field(
        default=(DEFAULT_LISTEN,), converter=tuple, validator=_check_listen
    )
    connect_timeout: float = field(
        default=DEFAULT_CONNECT_TIMEOUT, validator=_positive_seconds("connect-timeout")
    )
    idle_timeout: float = field(
        default=DEFAULT_IDLE_TIMEOUT, validator=_positive_seconds("idle-timeout")
    )
    max_body: int = field(default=DEFAULT_MAX_BODY, validator=_check_max_body)
    slots: int = field(default=DEFAULT_SLOTS, validator=_check_slots)
    ws_idle_timeout: float = field(
        default=DEFAULT_WS_IDLE_TIMEOUT, validator=_positive_seconds("ws-idle-timeout")
    )
    drain_timeout: float = field(
        default=DEFAULT_DRAIN_TIMEOUT, validator=_positive_seconds("drain-timeout")
    )
    demo: bool = False
    metrics: bool = True
    health: bool = True

    @property
    def upstream_base(self) -> bytes:
        """The upstream URL as the bytes the request-target is appended to."""
        return parse_upstream(self.upstream)
