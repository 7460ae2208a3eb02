"""Instructions per small request, counted by valgrind: a CPU measure that noise does not move.

    python -m bench.icount [--requests 400] [--warmup 200] [--only NAME ...]

Each contender that runs Python (aistack-tts as deployed and with ``--log-level=warn``,
twisted.web.proxy, the Twisted floors of ``bench/floors.py`` that answer the request) runs
under ``valgrind --tool=callgrind`` in front of ``bench/fast_upstream.py``.
One keep-alive client sends ``GET /v1/audio/voices`` one at a time: ``--warmup`` requests
(imports, caches, the pooled upstream connection), then the counters zeroed
(``callgrind_control --zero``), ``--requests`` more, and a dump. The table is the dump's
total instruction count (user space of the gateway process only: no kernel, no upstream, no
client) divided by the counted requests.

Wall-clock benchmarks (``bench/run.py``) move by a quarter between runs on a shared 2-vCPU
machine; the same binary, inputs and request count give the same instruction count to a
fraction of a percent, so this is the measure for "did this change make a request cheaper".
It does not see the kernel: twisted.web.proxy's new upstream connection per request costs it
system time that ``bench/run.py``'s CPU per request shows and this does not.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.clients import read_head, response_complete, status_of
from bench.contenders import (
    AGENT_FLOOR,
    AISTACK,
    BENCH_OPTIONS,
    GATEWAY_SLOTS,
    LEAN_FLOOR,
    TWISTED,
    WEB_FLOOR,
    floor_command,
    start_command,
    start_upstream,
    twisted_command,
)
from testbed.processes import aistack_command

QUIET = f"{AISTACK} --log-level=warn"
#: In the order of the table.
NAMES = (TWISTED, WEB_FLOOR, AGENT_FLOOR, LEAN_FLOOR, AISTACK, QUIET)
REQUEST = b"GET /v1/audio/voices HTTP/1.1\r\nHost: bench.test\r\n\r\n"


def command_for(name: str, upstream_port: int) -> list[str]:
    """The contender's command line, before valgrind."""
    url = f"http://127.0.0.1:{upstream_port}"
    slots = ("--slots", str(GATEWAY_SLOTS), *BENCH_OPTIONS)
    if name == AISTACK:
        return aistack_command(url, *slots)
    if name == QUIET:
        # twist's own option goes before the plugin's name.
        command = aistack_command(url, *slots)
        plugin = command.index("aistack-tts")
        return [*command[:plugin], "--log-level=warn", *command[plugin:]]
    if name == TWISTED:
        return twisted_command(upstream_port)
    return floor_command(name, upstream_port)


class KeepAlive:
    """One client connection, reopened when the server closes it (twisted.web.proxy may)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._sock: socket.socket | None = None

    def get(self) -> None:
        for _attempt in range(2):
            if self._sock is None:
                self._sock = socket.create_connection(("127.0.0.1", self._port), timeout=120)
            self._sock.sendall(REQUEST)
            try:
                head, body = read_head(self._sock)
            except ConnectionError:
                self.close()
                continue
            data = head + body
            while not response_complete(data):
                more = self._sock.recv(65536)
                if not more:
                    raise ConnectionError(f"the body ended early: {data[:300]!r}")
                data += more
            if status_of(head) != 200:
                raise RuntimeError(f"not 200: {head!r}")
            if b"connection: close" in head.lower():
                self.close()
            return
        raise ConnectionError("the server closed the connection twice before answering")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def total_instructions(dump: Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind dump: instructions (Ir)."""
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def count(name: str, upstream_port: int, workdir: Path, warmup: int, requests: int) -> float:
    """Instructions per request of one contender."""
    out = workdir / f"callgrind.{NAMES.index(name)}"
    valgrind = ["valgrind", "--tool=callgrind", "--vgdb=yes"]
    valgrind.append(f"--callgrind-out-file={out}.%p")
    command = [*valgrind, *command_for(name, upstream_port)]
    # Under valgrind, Python's start-up takes tens of seconds.
    contender = start_command(name, command, workdir, timeout=600)
    assert contender.process is not None
    pid = contender.process.pid
    try:
        client = KeepAlive(contender.port)
        for _ in range(warmup):
            client.get()
        control(pid, "--zero")
        for _ in range(requests):
            client.get()
        control(pid, "--dump")
        client.close()
    finally:
        contender.stop()
    dumps = sorted(workdir.glob(f"{out.name}.{pid}.*"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump for {name} in {workdir}")
    return total_instructions(dumps[0]) / requests


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)
    # callgrind_control returns once valgrind has the command; give the dump time to land.
    time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--only", nargs="*", choices=NAMES, default=list(NAMES))
    options = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("bench.icount needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="aistack-icount-") as tmp:
        workdir = Path(tmp)
        upstream = start_upstream(workdir)
        try:
            rows = []
            for name in [n for n in NAMES if n in options.only]:
                print(f"counting {name} ...", file=sys.stderr, flush=True)
                per = count(name, upstream.port, workdir, options.warmup, options.requests)
                rows.append((name, per))
        finally:
            upstream.stop()
    reference = dict(rows).get(TWISTED)
    print(f"instructions per GET /v1/audio/voices ({options.requests} counted, keep-alive)")
    for name, per in rows:
        ratio = f"  {per / reference:.2f}x twisted.web.proxy" if reference else ""
        print(f"  {name:<32} {per / 1e6:6.3f} M{ratio}")


if __name__ == "__main__":
    main()
