"""aistack-tts: a transparent Twisted gateway for Qwen3-TTS that guards one GPU slot."""

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
from ._slot import GPUSlot, RetryAfter

__version__ = "0.1.0"

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
]
