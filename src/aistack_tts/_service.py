"""The ``twist aistack-tts`` service: listeners for the gateway's site, closed cleanly."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString

from ._config import ConfigError, GatewayConfig
from ._proxy import TTSProxy


class GatewayService(MultiService):
    """Listens on every configured endpoint; closes pooled upstream connections on stop."""

    def __init__(self, proxy: TTSProxy, endpoints: list[Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.proxy = proxy
        site = proxy.site()
        for endpoint in endpoints:
            listener = StreamServerEndpointService(endpoint, site)
            # Fail the start (and so the process) when a port cannot be bound.
            listener._raiseSynchronously = True
            listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        """Stop listening, then close idle upstream connections."""
        d = maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.proxy.close())
        return d


def make_gateway_service(config: GatewayConfig, reactor: Any) -> IService:
    """Build the service for ``config``; a bad listen description raises L{ConfigError}."""
    endpoints = []
    for description in config.listen:
        try:
            endpoints.append(serverFromString(reactor, description))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--listen {description!r} is not a valid endpoint ({e})") from None
    proxy = TTSProxy.from_config(config, reactor=reactor)
    return GatewayService(proxy, endpoints)


def makeService(options: Any) -> IService:
    """Entry point for the ``twist`` plugin (imported lazily by the ServiceMaker)."""
    import sys

    from twisted.internet import reactor

    try:
        return make_gateway_service(options.config, reactor)
    except ConfigError as e:
        sys.stderr.write(f"aistack-tts: error: {e}\n")
        raise SystemExit(64) from None
