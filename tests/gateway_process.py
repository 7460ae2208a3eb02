"""The gateways under comparison, as real processes, for the real-socket tests and the benchmarks.

- ``aistack-tts``: ``twist aistack-tts --listen tcp:0:interface=127.0.0.1 --upstream URL``.
- ``twisted.web.proxy``: this file run as a script, serving Twisted's own
  ``twisted.web.proxy.ReverseProxyResource`` for ``/v1/audio`` in front of the same upstream,
  the baseline the gateway's streaming and disconnect handling are measured against::

      python tests/gateway_process.py --upstream-port PORT [--port 0]

Both listen on 127.0.0.1; L{GatewayProcess} finds the bound port through ``/proc`` (the
process's listening socket), so neither needs to print it. Linux only, like the RSS reading.
L{open_stream} and L{fetch} are the blocking raw-socket clients that drive them;
L{stop_process} ends a process started here (or the upstream's, in ``upstream_server``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

AISTACK_TTS = "aistack-tts"
TWISTED_WEB_PROXY = "twisted.web.proxy"
KINDS = (AISTACK_TTS, TWISTED_WEB_PROXY)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` in ``/proc/<pid>/status``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


#: ``st`` of a listening socket in ``/proc/<pid>/net/tcp*``.
LISTEN = "0A"


def tcp_sockets(pid: int) -> list[tuple[str, int]]:
    """(state, local port) of each TCP socket ``pid`` holds, from its socket fds and
    ``/proc/<pid>/net/tcp*`` (state L{LISTEN} is a listening socket)."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found: list[tuple[str, int]] = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            # local_address is HEXIP:HEXPORT, field 3 the state, field 9 the inode.
            if fields[9] in inodes:
                found.append((fields[3], int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` is listening on."""
    return {port for state, port in tcp_sockets(pid) if state == LISTEN}


def stop_process(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """Terminate ``process`` if it still runs and wait for it; kill it after ``grace`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def aistack_command(upstream: str, *options: str) -> list[str]:
    """``twist aistack-tts`` on an ephemeral 127.0.0.1 port in front of ``upstream``."""
    twist = Path(sys.executable).with_name("twist")
    launcher = [str(twist)] if twist.exists() else [sys.executable, "-m", "twisted"]
    listen = ["--listen", "tcp:0:interface=127.0.0.1"]
    return [*launcher, "aistack-tts", *listen, "--upstream", upstream, *options]


def _command(kind: str, upstream_port: int, options: Sequence[str]) -> list[str]:
    if kind == AISTACK_TTS:
        return aistack_command(f"http://127.0.0.1:{upstream_port}", *options)
    if kind == TWISTED_WEB_PROXY:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream-port",
            str(upstream_port),
        ]
    raise ValueError(f"unknown gateway kind {kind!r}")


class GatewayProcess:
    """One gateway process listening on 127.0.0.1; its output goes to a log file."""

    def __init__(self, kind: str, process: subprocess.Popen[bytes], log: IO[bytes], log_path: Path):
        self.kind = kind
        self.process = process
        self.pid = process.pid
        self._log = log
        self.log_path = log_path
        self.port = 0
        #: The command line it runs.
        self.command: list[str] = []

    @classmethod
    def start(
        cls,
        kind: str,
        upstream_port: int,
        workdir: Path,
        timeout: float = 30,
        options: Sequence[str] = (),
    ) -> GatewayProcess:
        """Start a gateway of ``kind`` (aistack-tts: with ``options``); return once it listens."""
        log_path = workdir / f"gateway-{kind}-{time.monotonic_ns()}.log"
        log = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
        command = _command(kind, upstream_port, options)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        gateway = cls(kind, process, log, log_path)
        gateway.command = command
        deadline = time.monotonic() + timeout
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{kind} exited with {process.returncode}: {log_path.read_text()}"
                    )
                ports = listening_ports(process.pid)
                if ports:
                    gateway.port = min(ports)
                    return gateway
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kind} did not listen in {timeout} s")
                time.sleep(0.02)
        except BaseException:
            gateway.stop()
            raise

    def rss(self) -> int:
        """The gateway's resident set size in bytes."""
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        stop_process(self.process)
        self._log.close()


def get_request(target: str) -> bytes:
    """The bytes of ``GET target`` with ``Connection: close``."""
    return f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n".encode()


def open_stream(
    port: int,
    target: str,
    *,
    receive_buffer: int = 128 * 1024,
    body_bytes: int = 64 * 1024,
    timeout: float = 10,
) -> socket.socket:
    """A raw client that sent ``GET target`` and read the headers and ``body_bytes`` of body.

    Then it stops reading. Its receive buffer is fixed (set before connecting) so the kernel
    does not absorb tens of MB on its behalf, and a stall reaches the gateway quickly.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.sendall(get_request(target))
        data = b""
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and len(data) - head_end - 4 >= body_bytes:
                break
            more = sock.recv(65536)
            if not more:
                raise ConnectionError(f"the connection ended early: {data[:400]!r}")
            data += more
        if not data.startswith(b"HTTP/1.1 200 "):
            raise ConnectionError(f"not a 200: {data[:400]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log events a gateway process wrote to ``path`` so far (other lines skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def read_to_close(sock: socket.socket) -> tuple[bytes, bool]:
    """Read until the gateway closes; the bytes, and whether it reset the connection."""
    data = b""
    try:
        while more := sock.recv(1 << 20):
            data += more
    except ConnectionResetError:
        return data, True
    return data, False


def fetch(port: int, target: str, timeout: float = 10) -> bytes:
    """``GET target`` and read until the gateway closes the connection; the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(get_request(target))
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str] | None = None) -> None:
    """Serve ``ReverseProxyResource`` for ``/v1/audio`` until SIGTERM."""
    parser = argparse.ArgumentParser(description="twisted.web.proxy in front of the upstream")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

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
