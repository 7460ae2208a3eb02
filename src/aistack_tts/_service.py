"""The ``twist aistack-tts`` service: listeners for the gateway's site, closed cleanly.

``--demo`` runs an upstream in-process, but the gateway never imports the demo's package:
whoever starts the service hands in a ``DemoLoader``, which the gateway calls only for
``--demo``. The ``twist`` plugin (``twisted/plugins/aistack_tts_plugin.py``) is that caller,
the one module above both packages. This beats the demo composing the gateway itself: start,
drain and the second signal stay here in one place, the public API does not grow by the
gateway's service internals, and the demo stays a plain upstream that only needs the public
listening helpers. A gateway installed without the demo's extra runs unchanged.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from attrs import evolve
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore
from twisted.logger import Logger

from . import __version__
from ._config import DEFAULT_DRAIN_TIMEOUT, ConfigError, GatewayConfig
from ._options import Options
from ._proxy import TTSProxy
from ._shutdown import FastShutdown
from .observe._startup import log_startup, warn_unreachable
from .server._listen import Listen, add_listeners, or_fail, parse_endpoints

# What the ``twist aistack-tts`` ServiceMaker loads from this module.
__all__ = ["GatewayService", "Options", "makeService"]

_log = Logger()

#: Builds an upstream's site on a reactor: what ``--demo`` listens with on loopback.
SiteFactory = Callable[[Any], IProtocolFactory]

#: Finds the demo upstream's ``SiteFactory``, or raises ``ConfigError`` saying why it cannot.
DemoLoader = Callable[[], SiteFactory]


class GatewayService(MultiService):
    """Listens on every configured endpoint; closes pooled upstream connections on stop."""

    def __init__(
        self,
        proxy: TTSProxy,
        endpoints: list[Listen],
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        config: GatewayConfig | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.proxy = proxy
        self.drain_timeout = drain_timeout
        self._config = config
        self._listeners = add_listeners("aistack-tts", self, endpoints, proxy.site())

    def startService(self) -> None:
        """Listen; once every listener is bound, log the start-up line (``config`` given).

        Then each upstream is probed once, with a warning for each that cannot be reached
        (not for ``--demo``, whose upstream is in this process); the start does not wait for
        it. Logged then, not before, so that it names where the gateway listens (a ``tcp:0``
        made real); a listener that cannot bind has already ended the program.
        """
        super().startService()  # type: ignore[no-untyped-call]
        config = self._config
        if config is None:
            return
        bound = gatherResults([listener.bound() for listener in self._listeners])
        bound.addCallback(lambda addresses: log_startup(config, __version__, addresses))
        if not config.demo:
            bound.addCallback(lambda _: warn_unreachable(self.proxy.readiness))
        bound.addErrback(lambda _: None)  # the listener's own failure ends the program

    def stopService(self) -> Deferred[None]:
        """Graceful drain: stop listening, let calls under way finish, close the pool.

        The drain also waits for their responses to reach the clients. What is still going
        after the drain timeout (or ``cut_now``) is cut short.
        """
        d = maybeDeferred(super().stopService)
        d.addBoth(lambda _: self.proxy.drain(self.drain_timeout))
        d.addBoth(lambda _: self.proxy.close())
        return d

    def cut_now(self) -> int:
        """Cut every call and client connection now; how many calls were cut."""
        return self.proxy.cut_now()


class DemoGatewayService(MultiService):
    """``--demo``: the demo upstream on an ephemeral loopback port, and the gateway in front.

    ``upstream_site`` builds the demo's site; it comes from outside the gateway.
    """

    def __init__(
        self,
        config: GatewayConfig,
        endpoints: list[Listen],
        reactor: Any,
        upstream_site: SiteFactory,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._config = config
        self._endpoints = endpoints
        self._reactor = reactor
        self._upstream_site = upstream_site
        self._demo_port: IListeningPort | None = None
        self._gateway: GatewayService | None = None

    def startService(self) -> None:
        """Listen for the demo first: the gateway's upstream URL needs its port."""
        self._demo_port = self._reactor.listenTCP(
            0, self._upstream_site(self._reactor), interface="127.0.0.1"
        )
        assert self._demo_port is not None
        address: Any = self._demo_port.getHost()
        url = f"http://127.0.0.1:{address.port}"
        _log.info("demo upstream (synthetic Qwen3-TTS voice) listening on {url}", url=url)
        config = evolve(self._config, upstream=(url,))
        proxy = TTSProxy.from_config(config, reactor=self._reactor)
        gateway = GatewayService(proxy, self._endpoints, self._config.drain_timeout, config)
        gateway.setServiceParent(self)  # type: ignore[no-untyped-call]
        self._gateway = gateway
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop the gateway, then the demo upstream."""
        d = maybeDeferred(super().stopService)
        if self._demo_port is not None:
            port = self._demo_port
            d.addBoth(lambda _: port.stopListening())
        return d

    def cut_now(self) -> int:
        """Cut the gateway's calls and client connections now; how many calls were cut."""
        return 0 if self._gateway is None else self._gateway.cut_now()


def make_gateway_service(
    config: GatewayConfig, reactor: Any, demo: DemoLoader | None = None
) -> GatewayService | DemoGatewayService:
    """Build the service for ``config``; a bad listen description raises ``ConfigError``.

    ``demo`` is called only for ``--demo``; without one, ``--demo`` raises ``ConfigError``.
    """
    endpoints = parse_endpoints(reactor, config.listen)
    if config.demo:
        if demo is None:
            raise ConfigError(
                "--demo: no demo upstream was given to this gateway (the twist plugin gives"
                " it; an older installed copy of the plugin does not: reinstall the package)"
            )
        return DemoGatewayService(config, endpoints, reactor, demo())
    proxy = TTSProxy.from_config(config, reactor=reactor)
    return GatewayService(proxy, endpoints, config.drain_timeout, config)


def makeService(options: Any, demo: DemoLoader | None = None) -> IService:
    """Entry point for the ``twist`` plugin (imported lazily by the ServiceMaker).

    ``demo`` is the plugin's loader for ``--demo``'s upstream (see the module docstring); a
    ``ConfigError`` from it ends the program with one line, as a bad option does.

    The first SIGTERM/SIGINT drains (the reactor's handlers stop it, which stops the service);
    a second one cuts the drain short (``FastShutdown``, installed once the reactor runs,
    after the reactor's own handlers).
    """
    from twisted.internet import reactor

    service = or_fail("aistack-tts", lambda: make_gateway_service(options.config, reactor, demo))
    reactor.callWhenRunning(FastShutdown(reactor, service.cut_now).install)
    freeze_when_running(reactor)
    return service


def freeze_when_running(reactor: IReactorCore) -> None:
    """Once the reactor runs, leave what start-up made out of Python's full collections.

    Only for a process the gateway owns (``twist aistack-tts``), never when embedded.
    Imports, Klein's and werkzeug's maps, prometheus_client and the service are ~60,000
    objects that live as long as the process, and every full (generation-2) collection
    walked them all, tens of milliseconds in which the reactor serves nothing, every few
    seconds under load: it was the gateway's whole latency p99. ``gc.freeze`` moves them to
    the permanent generation (BENCHMARKS.rst has the p99 before and after).
    """
    reactor.callWhenRunning(gc.freeze)
