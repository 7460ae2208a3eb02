"""Listening and failing at start: shared by the gateway and the demo upstream plugins."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

from ._config import ConfigError

_T = TypeVar("_T")

#: Exit status for a bad configuration value (EX_USAGE).
EX_USAGE = 64


def parse_endpoints(reactor: Any, descriptions: Iterable[str]) -> list[IStreamServerEndpoint]:
    """Server endpoints for ``--listen`` descriptions; a bad one raises L{ConfigError}."""
    endpoints = []
    for description in descriptions:
        try:
            endpoints.append(serverFromString(reactor, description))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--listen {description!r} is not a valid endpoint ({e})") from None
    return endpoints


def add_listeners(
    parent: MultiService, endpoints: Iterable[IStreamServerEndpoint], factory: IProtocolFactory
) -> None:
    """One listening service per endpoint under ``parent``."""
    for endpoint in endpoints:
        listener = StreamServerEndpointService(endpoint, factory)
        # Fail the start (and so the process) when a port cannot be bound.
        listener._raiseSynchronously = True
        listener.setServiceParent(parent)


def fail(program: str, error: ConfigError) -> NoReturn:
    """End the program with one clear line (twist would print its whole usage after it)."""
    sys.stderr.write(f"{program}: error: {error}\n")
    raise SystemExit(EX_USAGE)


def or_fail(program: str, build: Callable[[], _T]) -> _T:
    """``build()``, or L{fail} with its L{ConfigError}."""
    try:
        return build()
    except ConfigError as e:
        fail(program, e)
