"""The contenders: the processes in front of the upstream, started and measured from outside.

``direct`` (no proxy), ``aistack-tts`` (``twist aistack-tts``), ``twisted.web.proxy``
(``testbed.web_proxy``), ``nginx`` (a config written into a temporary directory) and the
Twisted floors (``bench/floors.py``); the upstream itself is ``bench/fast_upstream.py``. Each
runs as its own process (``testbed.processes`` starts and stops them; ``python -m`` children run
in the repository's root); ``/proc`` tells which processes are the gateway and what they use.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO

from testbed.processes import (
    ROOT,
    UpstreamProcess,
    aistack_command,
    inherited_listener,
    module_command,
    stop_process,
    wait_listening,
)

BENCH = Path(__file__).resolve().parent

DIRECT = "direct"
AISTACK = "aistack-tts"
TWISTED = "twisted.web.proxy"
NGINX = "nginx"
CONTENDERS = (DIRECT, AISTACK, TWISTED, NGINX)
GATEWAYS = (AISTACK, TWISTED, NGINX)
# Floors (bench/floors.py): Twisted with no gateway logic, run in the same rounds.
WEB_FLOOR = "bare twisted.web"
AGENT_FLOOR = "twisted.web + Agent"
LEAN_FLOOR = "twisted.web + lean client"
RELAY_FLOOR = "byte relay"
FLOOR_KINDS = {
    WEB_FLOOR: "web",
    AGENT_FLOOR: "agent",
    LEAN_FLOOR: "lean",
    RELAY_FLOOR: "relay",
}

GATEWAY_SLOTS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")


# /proc


def proc_stat_fields(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pids: Collection[int]) -> float:
    """utime + stime of ``pids``, in seconds (clock-tick resolution)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = proc_stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_of(pids: Collection[int]) -> int:
    """Summed VmRSS of ``pids`` in bytes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(proc_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(found)


# The upstream


def start_upstream(workdir: Path) -> UpstreamProcess:
    """``bench/fast_upstream.py`` as a child process, its events collected as
    ``testbed.upstream_server``'s are (the two print the same event lines)."""
    return UpstreamProcess.spawn(workdir, "bench.fast_upstream")


# The contenders


class Contender:
    """One contender: where to connect, and which processes are the gateway (none: direct)."""

    def __init__(
        self,
        name: str,
        port: int,
        process: subprocess.Popen[bytes] | None = None,
        log_file: IO[bytes] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.process = process
        self._log = log_file

    def pids(self) -> list[int]:
        """The gateway's processes (nginx: master and workers)."""
        if self.process is None:
            return []
        if self.name == NGINX:
            return [self.process.pid, *children(self.process.pid)]
        return [self.process.pid]

    def rss_pids(self) -> list[int]:
        """The processes whose RSS counts (nginx: its workers)."""
        if self.process is not None and self.name == NGINX:
            return children(self.process.pid)
        return self.pids()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self._log is not None:
            self._log.close()


def _wait_listening(
    process: subprocess.Popen[bytes], name: str, log_path: Path, timeout: float
) -> int:
    try:
        return wait_listening(process, name, timeout)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {log_path.read_text()}") from None


#: What the benchmarks measure is the slot-guarded path as it always was: a busy GPU is a 503 at
#: once (no queue) and listing voices takes a slot like any call (the defaults since issue 26
#: queue for 30 s and exempt the voice list).
BENCH_OPTIONS = ("--queue-timeout", "0", "--slot-exempt", "none")


def start_aistack(upstream: UpstreamProcess, workdir: Path, slots: int) -> Contender:
    command = aistack_command(upstream.url, "--slots", str(slots), *BENCH_OPTIONS)
    return start_command(AISTACK, command, workdir)


def twisted_command(upstream_port: int) -> list[str]:
    """twisted.web.proxy's command line in front of the upstream on ``upstream_port``."""
    return module_command("testbed.web_proxy", "--upstream-port", str(upstream_port))


def floor_command(name: str, upstream_port: int) -> list[str]:
    """The Twisted floor ``name``'s command line (``bench/floors.py``)."""
    return module_command("bench.floors", FLOOR_KINDS[name], "--upstream-port", str(upstream_port))


def start_twisted(upstream: UpstreamProcess, workdir: Path) -> Contender:
    return start_command(TWISTED, twisted_command(upstream.port), workdir)


def start_floor(name: str, upstream: UpstreamProcess, workdir: Path) -> Contender:
    return start_command(name, floor_command(name, upstream.port), workdir)


def start_command(name: str, command: list[str], workdir: Path, timeout: float = 30) -> Contender:
    """Any contender's ``command`` (run in the repository's root), returned once it listens."""
    log_path = workdir / f"{name}-{time.monotonic_ns()}.log"
    log_file = log_path.open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=ROOT,
    )
    try:
        port = _wait_listening(process, name, log_path, timeout)
    except BaseException:
        stop_process(process)
        log_file.close()
        raise
    return Contender(name, port, process, log_file)


NGINX_CONF = """\
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    keepalive_requests 1000000;
    upstream tts {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /v1/audio/ {{
            proxy_pass http://tts;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size {buffer};
            proxy_buffers 4 {buffer};
            proxy_busy_buffers_size {buffer};
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def start_nginx(upstream: UpstreamProcess, workdir: Path, workers: int, buffer: str) -> Contender:
    binary = nginx_binary()
    assert binary is not None
    directory = workdir / f"nginx-{time.monotonic_ns()}"
    directory.mkdir()
    # nginx cannot listen on port 0 and say where: it inherits a socket that does.
    listener = inherited_listener()
    port = listener.getsockname()[1]
    # As root, the workers would otherwise switch to "nobody": keep them the current user.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user=user,
            workers=workers,
            dir=directory,
            upstream=upstream.port,
            port=port,
            buffer=buffer,
        )
    )
    log_path = directory / "stderr.log"
    log_file = log_path.open("wb")
    command = [binary, "-e", str(directory / "error.log"), "-p", str(directory)]
    command += ["-c", str(conf), "-g", "daemon off;"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NGINX": f"{listener.fileno()};"},
        pass_fds=(listener.fileno(),),
    )
    listener.close()
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited: {log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                if len(children(process.pid)) >= workers:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("nginx did not listen in 30 s")
            time.sleep(0.02)
    except BaseException:
        stop_process(process)
        log_file.close()
        raise
    return Contender(NGINX, port, process, log_file)


# Raw-socket clients
