"""Configuration: one frozen, validated record; bad values fail at construction, in one line."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"
#: vLLM-Omni's documented port for the Qwen3-TTS server.
DEFAULT_UPSTREAM = "http://127.0.0.1:8091"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_BODY = 25 * 1024 * 1024
DEFAULT_SLOTS = 1
DEFAULT_WS_IDLE_TIMEOUT = 300.0
DEFAULT_DRAIN_TIMEOUT = 30.0
#: nginx's client_header_timeout / client_body_timeout.
DEFAULT_CLIENT_TIMEOUT = 60.0
#: How long an idle upstream connection is kept for reuse: under uvicorn's (vLLM's server)
#: 5 s keep-alive, so the gateway closes it before the upstream does.
DEFAULT_POOL_IDLE_TIMEOUT = 4.0
#: How long a request may wait for a busy GPU: a typical generation (a sentence to a paragraph,
#: 1-20 s) ends within it, so a request queued behind one or two is served instead of refused,
#: and the wait stays under the 60 s after which a proxy in front (nginx's proxy_read_timeout)
#: or the gateway's own --idle-timeout would give up.
DEFAULT_QUEUE_TIMEOUT = 30.0
#: How long an upstream that refused a connection is passed over while another can take the
#: call.
DEFAULT_DOWN_COOLDOWN = 5.0
#: Calls that do no inference: listing voices must not wait for (or be refused by) a generation.
DEFAULT_SLOT_EXEMPT = ("GET:/v1/audio/voices",)
#: The ``--slot-exempt`` value that clears the default rules: every call takes the slot.
NO_SLOT_EXEMPT = "none"


class ConfigError(ValueError):
    """A configuration value that cannot work; its message is one line for the operator."""


#: The port an upstream URL without one is reached on.
DEFAULT_PORTS = {"http": 80, "https": 443}


@frozen
class Origin:
    """One upstream server as the gateway reaches it: its URL, parsed once (``Origin.parse``).

    The HTTP client, the WebSocket tunnel and the readiness probe all take it from here: where
    to connect (``endpoint``, TLS for ``https``), the ``Host`` value that names it, and the
    base that request-targets are appended to.
    """

    #: The URL as it was configured (for logs and the access log).
    url: str
    scheme: str
    #: As ``urlsplit`` gives it: lower-case, IPv6 without brackets.
    hostname: str
    port: int
    #: The ``Host`` header value: the host (bracketed for IPv6), ``:port`` unless the default.
    host: bytes
    #: The URL without a trailing slash: a request-target is appended to it byte-exact.
    base: bytes

    @property
    def tls(self) -> bool:
        """Whether connections to it are TLS (``https``)."""
        return self.scheme == "https"

    @classmethod
    def parse(cls, url: str) -> Origin:
        """Validate an upstream base URL; raises ``ConfigError`` in one line for the operator."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ConfigError(f"upstream URL {url!r} is not a valid URL ({e})") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(
                f"upstream URL {url!r} must look like http://HOST:PORT (http or https, with a host)"
            )
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(
                f"upstream URL {url!r} must not carry a query, fragment or credentials"
            )
        if port == 0:
            raise ConfigError(f"upstream URL {url!r} has port 0")
        if parts.path.strip("/"):
            # The request's own path (/v1/audio/...) is appended as it came: a base with a
            # path, as OpenAI base URLs are written, would send every call to /v1/v1/audio/...
            origin = f"{parts.scheme}://{parts.netloc}"
            raise ConfigError(
                f"upstream URL {url!r} has a path ({parts.path!r}): give the server's origin "
                f"only, e.g. {origin} (requests keep their own /v1/audio/... path)"
            )
        try:
            base = url.rstrip("/").encode("ascii")
        except UnicodeEncodeError:
            raise ConfigError(f"upstream URL {url!r} must be ASCII (punycode the host)") from None
        hostname = parts.hostname
        default = DEFAULT_PORTS[parts.scheme]
        port = port or default
        host = f"[{hostname}]" if ":" in hostname else hostname
        if port != default:
            host = f"{host}:{port}"
        return cls(url, parts.scheme, hostname, port, host.encode("ascii"), base)

    def endpoint(self, reactor: Any, *, timeout: float, tls: bool = True) -> IStreamClientEndpoint:
        """A client endpoint to it on ``reactor``, reusable: TLS-wrapped for ``https``.

        ``tls=False``: a plain TCP connect whatever the scheme (the readiness probe's).
        """
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.hostname, self.port, timeout=timeout
        )
        if tls and self.tls:
            # Imported here: pyOpenSSL is only needed once an https upstream is configured.
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(self.hostname), endpoint)
        return endpoint


def _positive_seconds(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")

    return check


def _optional(
    check: Callable[[Any, Any, float], None],
) -> Callable[[Any, Any, float | None], None]:
    def optional(instance: Any, attribute: Any, value: float | None) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _upstreams(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_upstreams(instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigError("upstream needs at least one URL, e.g. http://127.0.0.1:8091")
    origins = tuple(Origin.parse(url) for url in value)
    if len(set(value)) != len(value):
        raise ConfigError(f"upstream URLs must differ: {', '.join(value)}")
    # Parsed once, here, as the URLs are checked: ``GatewayConfig.origins`` holds the result.
    object.__setattr__(instance, "origins", origins)


@frozen
class ExemptRule:
    """A call that does not touch the GPU (``METHOD:PATH``, ``*`` at the end for a prefix)."""

    method: bytes
    path: bytes
    prefix: bool

    @classmethod
    def parse(cls, rule: str) -> ExemptRule:
        """``GET:/v1/audio/voices`` or ``GET:/v1/audio/voices*``; raises ``ConfigError``."""
        method, sep, path = rule.partition(":")
        if not sep or not method.isalpha() or not path.startswith("/"):
            raise ConfigError(
                f"slot-exempt {rule!r} must look like METHOD:/path (e.g. GET:/v1/audio/voices)"
            )
        prefix = path.endswith("*")
        try:
            raw = path.rstrip("*").encode("ascii")
        except UnicodeEncodeError:
            raise ConfigError(f"slot-exempt {rule!r} must be ASCII") from None
        return cls(method.upper().encode("ascii"), raw, prefix)

    def matches(self, method: bytes, target: bytes) -> bool:
        """Whether a request with this method and raw request-target falls under the rule."""
        path = target.split(b"?", 1)[0]
        if method != self.method:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path


def _exempt(value: str | Iterable[str]) -> tuple[str, ...]:
    rules = (value,) if isinstance(value, str) else tuple(value)
    # ``none`` alone: no rule at all, the default ones included.
    return () if [r.lower() for r in rules] == [NO_SLOT_EXEMPT] else rules


def _check_exempt(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    if NO_SLOT_EXEMPT in (rule.lower() for rule in value):
        raise ConfigError(
            f"slot-exempt {NO_SLOT_EXEMPT!r} (every call takes the slot) cannot be combined "
            f"with rules: {' '.join(value)}"
        )
    for rule in value:
        ExemptRule.parse(rule)


def _non_negative_seconds(name: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")

    return check


def _check_max_body(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"max-body must be a whole number of bytes >= 0, not {value!r}")


def _check_slots(_instance: Any, _attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"slots must be a whole number >= 1, not {value!r}")


def _check_max_connections(_instance: Any, _attribute: Any, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max-connections must be a whole number >= 1, not {value!r}")


def _check_listen(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    if not value or any(not isinstance(v, str) or not v.strip() for v in value):
        raise ConfigError("listen needs at least one endpoint description, e.g. tcp:8000")


@frozen
class GatewayConfig:
    """Everything ``twist aistack-tts`` is told, checked."""

    #: One URL per GPU (each gets its own slot of ``slots`` tokens).
    upstream: tuple[str, ...] = field(
        default=(DEFAULT_UPSTREAM,), converter=_upstreams, validator=_check_upstreams
    )
    listen: tuple[str, ...] = field(
        default=(DEFAULT_LISTEN,), converter=_strings, validator=_check_listen
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
    client_timeout: float = field(
        default=DEFAULT_CLIENT_TIMEOUT, validator=_positive_seconds("client-timeout")
    )
    #: None: ``client_timeout``'s value (the contract's one timeout for idle clients).
    keepalive_timeout: float | None = field(
        default=None, validator=_optional(_positive_seconds("keepalive-timeout"))
    )
    #: None: from the descriptor limit (``default_max_connections``).
    max_connections: int | None = field(default=None, validator=_check_max_connections)
    #: 0: a busy GPU is a 503 at once; more: wait that long, first come first served.
    queue_timeout: float = field(
        default=DEFAULT_QUEUE_TIMEOUT, validator=_non_negative_seconds("queue-timeout")
    )
    #: How long an upstream that refused a connection is passed over.
    down_cooldown: float = field(
        default=DEFAULT_DOWN_COOLDOWN, validator=_non_negative_seconds("down-cooldown")
    )
    #: 0: every upstream connection carries one request.
    pool_idle_timeout: float = field(
        default=DEFAULT_POOL_IDLE_TIMEOUT, validator=_non_negative_seconds("pool-idle-timeout")
    )
    #: ``("none",)`` clears the default: every call takes the slot.
    slot_exempt: tuple[str, ...] = field(
        default=DEFAULT_SLOT_EXEMPT, converter=_exempt, validator=_check_exempt
    )
    demo: bool = False
    metrics: bool = True
    health: bool = True
    #: The ``upstream`` URLs parsed, in order: made by their validation, not given.
    origins: tuple[Origin, ...] = field(init=False, eq=False, repr=False)

    @property
    def exempt_rules(self) -> tuple[ExemptRule, ...]:
        """The parsed ``slot_exempt`` rules."""
        return tuple(ExemptRule.parse(rule) for rule in self.slot_exempt)
