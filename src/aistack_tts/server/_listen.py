"""At start, before any request: listening, and failing with one line.

``parse_endpoints``, ``add_listeners`` and ``or_fail`` are public (``aistack_tts``): the
gateway's service uses them, and so does the demo upstream's plugin beside the gateway.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.defer import fail as fail_deferred
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

from aistack_tts._config import ConfigError
from aistack_tts.wire._descriptors import quiet_accept_exhaustion

_T = TypeVar("_T")

#: Exit status for a bad configuration value (EX_USAGE).
EX_USAGE = 64


#: A ``--listen`` description and the endpoint it names.
Listen = tuple[str, IStreamServerEndpoint]

#: Listen backlog where a description does not give one: nginx's default. Twisted's 50 makes
#: a burst of clients (200 connecting at once, say) wait ~1 s for SYN retransmissions.
DEFAULT_BACKLOG = 511

#: Endpoints whose description takes ``backlog=``.
_BACKLOGGED = (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint, UNIXServerEndpoint)


def parse_endpoints(reactor: Any, descriptions: Iterable[str]) -> list[Listen]:
    """Server endpoints for ``--listen`` descriptions; a bad one raises ``ConfigError``.

    Socket endpoints get a listen backlog of ``DEFAULT_BACKLOG`` unless the description sets
    ``backlog=``.
    """
    return [(description, _endpoint(reactor, description)) for description in descriptions]


def _endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        if isinstance(endpoint, _BACKLOGGED) and "backlog=" not in description:
            endpoint = serverFromString(reactor, f"{description}:backlog={DEFAULT_BACKLOG}")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--listen {description!r} is not a valid endpoint ({e})") from None
    return endpoint


class _Listener(StreamServerEndpointService):
    """Listens on one endpoint; a port that cannot be bound ends the program with one line."""

    def __init__(self, program: str, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)  # type: ignore[no-untyped-call]
        self._program = program
        self._description = description
        # Fail the start (and so the process) when the port cannot be bound.
        self._raiseSynchronously = True

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except CannotListenError as e:
            fail(self._program, ConfigError(f"--listen {self._description!r}: {e.socketError}"))
        waiting = self._waitingForPort
        if waiting is not None:
            waiting.addCallback(quiet_accept_exhaustion)

    def bound(self) -> Deferred[str]:
        """Where this listener listens once it does: ``host:port`` (a port 0 made real)."""
        waiting: Deferred[IListeningPort] | None = self._waitingForPort
        if waiting is None:
            return fail_deferred(RuntimeError(f"{self._description!r} is not listening"))
        bound: Deferred[str] = Deferred()

        def found(port: IListeningPort) -> IListeningPort:
            bound.callback(describe_address(port.getHost()))
            return port

        def failed(reason: Failure) -> Failure:
            bound.errback(reason)
            return reason

        waiting.addCallbacks(found, failed)
        return bound


def describe_address(address: IAddress) -> str:
    """A listening address as an operator writes it: ``127.0.0.1:8000``, ``[::1]:8000``, a path."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        return str(address.name, "utf-8") if isinstance(address.name, bytes) else str(address.name)
    return str(address)


def add_listeners(
    program: str, parent: MultiService, endpoints: Iterable[Listen], factory: IProtocolFactory
) -> list[_Listener]:
    """One listening service per endpoint under ``parent``; the listeners, in order."""
    listeners = []
    for description, endpoint in endpoints:
        listener = _Listener(program, description, endpoint, factory)
        listener.setServiceParent(parent)  # type: ignore[no-untyped-call]
        listeners.append(listener)
    return listeners


def fail(program: str, error: ConfigError) -> NoReturn:
    """End the program with one clear line (twist would print its whole usage after it)."""
    sys.stderr.write(f"{program}: error: {error}\n")
    raise SystemExit(EX_USAGE)


def or_fail(program: str, build: Callable[[], _T]) -> _T:
    """``build()``, or ``fail`` with its ``ConfigError``."""
    try:
        return build()
    except ConfigError as e:
        fail(program, e)
