"""aistack-tts: a transparent Twisted gateway for Qwen3-TTS that guards one GPU slot.

The public API, above every step of a request's way: the gateway (``TTSProxy``, its
``GatewayConfig``, its errors) and the listening helpers with which a ``twist`` plugin beside
it (the demo upstream's) listens the way the gateway does: ``parse_endpoints``,
``add_listeners`` and ``or_fail`` (a ``ConfigError`` at start ends the program with one line),
and logs the way it does: ``use_json_lines`` (twist's JSON log format as the gateway's JSON
lines, one object per line).
"""

from ._config import ConfigError, GatewayConfig
from ._errors import (
    GatewayError,
    GPUBusy,
    InvalidRequest,
    LocalResourceExhausted,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ._proxy import TTSProxy
from ._version import __version__
from .call._slot import GPUSlot, RetryAfter
from .observe._jsonlog import use_json_lines
from .server._listen import add_listeners, or_fail, parse_endpoints

__all__ = [
    "ConfigError",
    "GPUBusy",
    "GPUSlot",
    "GatewayConfig",
    "GatewayError",
    "InvalidRequest",
    "LocalResourceExhausted",
    "MethodNotAllowed",
    "NotFound",
    "RequestTooLarge",
    "RetryAfter",
    "TTSProxy",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "add_listeners",
    "or_fail",
    "parse_endpoints",
    "use_json_lines",
]
