"""Script entry point: ``twisted.web.proxy`` in front of an upstream (the baseline gateway).

::

    python tests/gateway_process.py --upstream-port PORT [--port 0]

The code is ``support.processes``; the names below are re-exported for the benchmarks, which
import this module by its old path.
"""

from __future__ import annotations

from support.logs import log_events
from support.processes import (
    AISTACK_TTS,
    KINDS,
    LISTEN,
    TWISTED_WEB_PROXY,
    GatewayProcess,
    aistack_command,
    listening_ports,
    main,
    rss_bytes,
    stop_process,
    tcp_sockets,
)
from support.wire import fetch, get_request, open_stream, read_to_close

__all__ = [
    "AISTACK_TTS",
    "KINDS",
    "LISTEN",
    "TWISTED_WEB_PROXY",
    "GatewayProcess",
    "aistack_command",
    "fetch",
    "get_request",
    "listening_ports",
    "log_events",
    "open_stream",
    "read_to_close",
    "rss_bytes",
    "stop_process",
    "tcp_sockets",
]

if __name__ == "__main__":
    main()
