"""The processes a real-socket test or a benchmark starts: gateways and the scriptable upstream.

- ``aistack-tts``: ``twist aistack-tts --listen tcp:0:interface=127.0.0.1 --upstream URL``.
- ``twisted.web.proxy``: ``python -m testbed.web_proxy``, Twisted's own
  ``ReverseProxyResource`` in front of the same upstream, the baseline the gateway's streaming
  and disconnect handling are measured against.
- the upstream: ``python -m testbed.upstream_server``; ``UpstreamProcess`` starts it and
  collects its event lines.

A ``python -m testbed...`` child runs in the repository's root (``ROOT``), so it imports
``testbed`` however the parent found it.

Gateways listen on 127.0.0.1; ``GatewayProcess`` finds the bound port through ``/proc`` (the
process's listening socket), so neither needs to print it. Linux only, like the RSS reading.
``stop_process`` ends a process started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: The script entry points (kept at these paths: the benchmarks run them too).
#: The repository's root: the working directory of ``python -m`` children (``module_command``).
ROOT = Path(__file__).resolve().parent.parent

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
    ``/proc/<pid>/net/tcp*`` (state ``LISTEN`` is a listening socket)."""
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


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: an upstream that is down.

    The socket is bound and never listens, so a connect gets ``ECONNREFUSED`` and no other
    process can take the port meanwhile (a port bound and released at once can be).
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port


def inherited_listener() -> socket.socket:
    """A listening loopback socket on an ephemeral port, for a child to inherit.

    For a program that cannot listen on port 0 and say where (nginx): it gets this socket
    (``pass_fds``; nginx through its ``NGINX`` variable) and a configuration naming its port.
    The parent closes its copy once the child runs.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(511)
    listener.set_inheritable(True)
    return listener


def wait_listening(process: subprocess.Popen[Any], what: str, timeout: float = 30) -> int:
    """The port ``process`` listens on (its only one), once it does: it was told port 0."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        ports = listening_ports(process.pid)
        if ports:
            return min(ports)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not listen in {timeout} s")
        time.sleep(0.02)


def bound_port(log_path: Path, process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """The gateway's own port, from its start-up line (``bound``), once it is logged.

    With ``--demo`` the process listens twice (the demo upstream, then the gateway), so
    ``/proc`` cannot say which is which; the start-up line names where the gateway listens.
    """
    deadline = time.monotonic() + timeout
    while True:
        for line in log_path.read_bytes().splitlines():
            if b'"aistack_tts.startup"' in line:
                bound = json.loads(line)["bound"].split()[0]
                return int(bound.rsplit(":", 1)[1])
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no start-up line in {timeout} s: {log_path.read_text()}")
        time.sleep(0.02)


def start_demo_gateway(log_path: Path, *options: str) -> tuple[subprocess.Popen[bytes], int]:
    """``twist aistack-tts --demo`` on an ephemeral 127.0.0.1 port: the process and its port.

    Its output (JSON lines) goes to ``log_path``; it is returned once it listens. ``options``
    are more options for it.
    """
    twist = str(Path(sys.executable).parent / "twist")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [twist, "aistack-tts", "--demo", "--listen", "tcp:0:interface=127.0.0.1", *options],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        return process, bound_port(log_path, process)
    except BaseException:
        stop_process(process)
        raise


def aistack_command(upstream: str, *options: str) -> list[str]:
    """``twist aistack-tts`` on an ephemeral 127.0.0.1 port in front of ``upstream``."""
    twist = Path(sys.executable).with_name("twist")
    launcher = [str(twist)] if twist.exists() else [sys.executable, "-m", "twisted"]
    listen = ["--listen", "tcp:0:interface=127.0.0.1"]
    return [*launcher, "aistack-tts", *listen, "--upstream", upstream, *options]


def module_command(module: str, *args: str) -> list[str]:
    """``python -m module args``, with this interpreter; start it with ``cwd=ROOT``."""
    return [sys.executable, "-m", module, *args]


def _command(kind: str, upstream_port: int, options: Sequence[str]) -> list[str]:
    if kind == AISTACK_TTS:
        return aistack_command(f"http://127.0.0.1:{upstream_port}", *options)
    if kind == TWISTED_WEB_PROXY:
        return module_command("testbed.web_proxy", "--upstream-port", str(upstream_port))
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
            cwd=ROOT,
        )
        gateway = cls(kind, process, log, log_path)
        gateway.command = command
        try:
            gateway.port = wait_listening(process, kind, timeout)
        except RuntimeError as e:
            gateway.stop()
            raise RuntimeError(f"{e}: {log_path.read_text()}") from None
        except BaseException:
            gateway.stop()
            raise
        return gateway

    def rss(self) -> int:
        """The gateway's resident set size in bytes."""
        return rss_bytes(self.pid)

    def stop(self) -> None:
        """Terminate the process and wait for it."""
        stop_process(self.process)
        self._log.close()


# The upstream, run from a test or a benchmark.


@dataclass(frozen=True)
class Event:
    """One line of the server's stdout."""

    kind: str
    ident: str
    t: float
    fields: tuple[str, ...]

    @property
    def sent(self) -> int:
        """Body bytes sent when the event happened (STALLED, DONE, CLOSED, FAULT)."""
        return int(self.fields[0])


class UpstreamProcess:
    """``testbed.upstream_server`` as a child process, with its events collected by a thread."""

    def __init__(self, process: subprocess.Popen[str], port_file: Path, log: IO[str]) -> None:
        """Collect the events of ``process`` (already started, printing event lines and its
        port into ``port_file``); return once it is listening."""
        self.process = process
        self.pid = process.pid
        self._log = log
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="upstream-events", daemon=True)
        self._reader.start()
        try:
            self.wait("-", {"LISTENING"}, timeout=20)
        except BaseException:
            self.stop()
            raise
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, *, connection_events: bool = False) -> UpstreamProcess:
        """Start the server; return once it is listening. Its stderr goes to a file in workdir.

        ``connection_events`` turns on the CONNECTED, ON and DISCONNECTED events.
        """
        events = ["--connection-events"] if connection_events else []
        return cls.spawn(workdir, "testbed.upstream_server", *events)

    @classmethod
    def spawn(cls, workdir: Path, module: str, *args: str) -> UpstreamProcess:
        """``python -m module --port 0 --port-file F *args``, any server printing these events."""
        port_file = workdir / "upstream.port"
        log = (workdir / "upstream.stderr").open("w")
        process = subprocess.Popen(
            module_command(module, "--port", "0", "--port-file", str(port_file), *args),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
        )
        return cls(process, port_file, log)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, ident, t, *fields = line.split()
            with self._changed:
                self._events.append(Event(kind, ident, float(t), tuple(fields)))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def forget(self, ident: str) -> None:
        """Drop the events of ``ident`` (a long run need not keep them all)."""
        with self._changed:
            self._events = [e for e in self._events if e.ident != ident]

    def events(self, ident: str | None = None) -> list[Event]:
        """Events so far, optionally of one request id."""
        with self._changed:
            return [e for e in self._events if ident is None or e.ident == ident]

    def first(self, ident: str, kinds: Collection[str]) -> Event | None:
        """The first event of ``ident`` whose kind is in ``kinds``, if it happened yet."""
        with self._changed:
            for event in self._events:
                if event.ident == ident and event.kind in kinds:
                    return event
        return None

    def wait(self, ident: str, kinds: Collection[str], timeout: float) -> Event:
        """Block until ``first(ident, kinds)`` happens; raise ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                event = self.first(ident, kinds)
                if event is not None:
                    return event
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(
                        f"upstream event {sorted(kinds)} for {ident!r} did not happen; "
                        f"saw {self.events(ident)}"
                    )
                self._changed.wait(left)

    def stop(self) -> None:
        """Terminate the process and wait for it (and its event reader)."""
        stop_process(self.process)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
