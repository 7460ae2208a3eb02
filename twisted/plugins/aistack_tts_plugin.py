"""The ``twist aistack-tts`` plugin, the first step of a request's way: where the gateway starts.

ServiceMaker imports ``aistack_tts._service`` (and with it klein and the reactor-using code)
only when this plugin is run, not when twist lists its plugins.

It is also the one module above both packages, so it is where ``--demo`` is put together: the
gateway never imports the demo upstream (``aistack_tts_demo``), this plugin hands it
``load_demo``, which imports the demo only when ``--demo`` is given. A gateway installed
without the ``demo`` extra runs as before; its ``--demo`` fails at start with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.python.reflect import namedAny


def load_demo() -> Callable[[Any], Any]:
    """The demo upstream's site factory; ``ConfigError`` when the demo cannot be imported."""
    from aistack_tts import ConfigError

    try:
        from aistack_tts_demo import DemoUpstream
    except ImportError as e:
        raise ConfigError(
            f"--demo needs the demo upstream, which cannot be imported ({e}); "
            "install it with the demo extra, e.g. pip install -e '.[demo]' in a checkout"
        ) from None
    return lambda reactor: DemoUpstream(reactor=reactor).site()


class _GatewayMaker(ServiceMaker):
    """A ``ServiceMaker`` whose ``makeService`` hands the gateway ``load_demo``."""

    @property
    def makeService(self) -> Callable[[Any], Any]:
        make = namedAny(self.module).makeService
        return lambda options: make(options, demo=load_demo)


aistack_tts = _GatewayMaker(
    "aistack-tts",
    "aistack_tts._service",
    "Transparent streaming gateway for Qwen3-TTS (/v1/audio/*) that guards one GPU slot",
    "aistack-tts",
)
