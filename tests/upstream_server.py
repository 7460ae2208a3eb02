"""Script entry point: the scriptable upstream HTTP server of the real-socket tests and benchmarks.

::

    python tests/upstream_server.py --port 0 --port-file PATH [--connection-events]

The server is ``support.upstream_server`` (its docstring lists the endpoints and event lines);
``UpstreamProcess`` and ``Event`` are re-exported for the benchmarks, which import this module by
its old path.
"""

from __future__ import annotations

from support.processes import Event, UpstreamProcess
from support.upstream_server import (
    COOKIE,
    ECHO_BODY_MAX,
    GARBAGE,
    STALL_REPORT_S,
    Upstream,
    emit,
    main,
    pattern,
)

__all__ = [
    "COOKIE",
    "ECHO_BODY_MAX",
    "GARBAGE",
    "STALL_REPORT_S",
    "Event",
    "Upstream",
    "UpstreamProcess",
    "emit",
    "pattern",
]

if __name__ == "__main__":
    main()
