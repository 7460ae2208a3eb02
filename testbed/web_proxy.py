"""The baseline gateway: Twisted's ``twisted.web.proxy.ReverseProxyResource`` as a process.

It stands where the gateway would, in front of the same upstream, for the real-socket tests
that must tell a streaming gateway from a buffering one and for the benchmarks' comparison::

    python -m testbed.web_proxy --upstream-port PORT [--port 0]

It serves ``/v1/audio`` on 127.0.0.1 until SIGTERM; ``testbed.processes.GatewayProcess``
starts it (kind ``twisted.web.proxy``) and finds its port through ``/proc``.
"""

from __future__ import annotations

import argparse
import sys
from typing import cast


def main(argv: list[str] | None = None) -> None:
    """Serve ``ReverseProxyResource`` for ``/v1/audio`` until SIGTERM."""
    parser = argparse.ArgumentParser(description="twisted.web.proxy in front of the upstream")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    # The global reactor only here, in the process's entry point.
    from twisted.internet import reactor as _reactor
    from twisted.internet.posixbase import PosixReactorBase
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.web.proxy import ReverseProxyResource
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    root = Resource()
    v1 = Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"audio", ReverseProxyResource("127.0.0.1", args.upstream_port, b"/v1/audio"))
    site = Site(root)
    site.noisy = False
    reactor = cast(PosixReactorBase, _reactor)
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
