"""aistack-tts next to direct, twisted.web.proxy and nginx: seven scenarios in one run.

    python bench/run.py [--repeat 5] [--scenarios 1,2,...] [--quick]

Starts, on 127.0.0.1, one upstream (``bench/fast_upstream.py``: plain asyncio, so that the
upstream is not the bottleneck) and four contenders in front of it, each its own process:

- ``direct``: no proxy, the client talks to the upstream;
- ``aistack-tts``: ``twist aistack-tts --upstream URL --listen tcp:0:interface=127.0.0.1
  --slots 16`` (16 so that no scenario but 6 ever meets a 503; scenario 6 starts its own with
  ``--slots 1``);
- ``twisted.web.proxy``: ``tests/gateway_process.py`` (``ReverseProxyResource``);
- ``nginx``: ``proxy_pass`` to an ``upstream`` block with ``keepalive``, HTTP/1.1 to the
  upstream, ``proxy_buffering off``, ``proxy_request_buffering off``, ``proxy_buffer_size
  64k``, one worker, from a config written into a temporary directory and run with ``nginx -p
  DIR -c CONF -g 'daemon off;'`` (skipped, with a note, where there is no nginx).

Scenarios (the load generator always runs in this process or in ``wrk``, never in a gateway):

1. ``GET /v1/audio/voices`` with ``wrk --latency`` (1 connection, then 16): latency p50/p99
   and the latency each contender adds over direct, paired per round. Target: aistack-tts
   adds at most half of what twisted.web.proxy adds (p50).
2. A 200 MB speech response read as fast as possible (``recv_into`` a reused 1 MiB buffer, no
   HTTP library), MB/s. Targets: aistack-tts >= nginx and >= 50% of direct.
3. The upstream sends its first audio byte after 100 ms: time from the request to the first
   body byte, and what each contender adds over direct (p50). Target: <= 1 ms. Measured with
   the status line coming with the first chunk, and with the status line sent at once.
4. A client stops reading during a 500 MiB response: the gateway's RSS growth (VmRSS; nginx:
   its workers summed), a fresh gateway per trial, as ``bench/stall_and_disconnect.py``
   measures it. Target: <= 16 MiB.
5. A client closes mid-stream (128 MiB response), 50 trials: time until the upstream sees its
   connection closed (the upstream prints ``time.monotonic()``). Target: p99 <= 10 ms.
6. aistack-tts with ``--slots 1`` and one stalled request holding the slot: 200 speech
   requests sent at once on 200 open connections, the 503 latency (send to whole response)
   p50/p99, and afterwards the slot intact (every burst 200 x 503; the holder's response
   complete; a follow-up request succeeds; while a new holder streams, a second request
   still gets 503). Target: p99 <= 5 ms. Other contenders have no slot: n/a.
7. Gateway CPU seconds (utime + stime from ``/proc/<pid>/stat``; nginx: master and workers)
   per GB streamed, over scenario 2's transfers. Reported, no target.

Contenders run round-robin within each repetition (and the order rotates per round), so
drift on a shared machine hits them alike. Writes ``bench/results/<date>.json`` and, when
matplotlib imports, ``bench/results/<date>.png`` (``--quick``: ``<date>-quick.*``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import pwd
import re
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

# Importing it also puts tests/ on sys.path (for gateway_process).
from bench.stall_and_disconnect import (  # noqa: E402
    P99_GOAL_MS,
    RSS_GOAL_MIB,
    machine,
    percentile,
)

from gateway_process import aistack_command, listening_ports  # noqa: E402
from upstream_server import UpstreamProcess  # noqa: E402

MiB = 1024 * 1024
MB = 1000 * 1000
GB = 1000 * MB

DIRECT = "direct"
AISTACK = "aistack-tts"
TWISTED = "twisted.web.proxy"
NGINX = "nginx"
CONTENDERS = (DIRECT, AISTACK, TWISTED, NGINX)
GATEWAYS = (AISTACK, TWISTED, NGINX)
# Floors (bench/floors.py): Twisted with no gateway logic, run in the same rounds.
WEB_FLOOR = "bare twisted.web"
AGENT_FLOOR = "twisted.web + Agent"
RELAY_FLOOR = "byte relay"
FLOOR_KINDS = {WEB_FLOOR: "web", AGENT_FLOOR: "agent", RELAY_FLOOR: "relay"}

TTFB_GOAL_MS = 1.0
BUSY_P99_GOAL_MS = 5.0
GATEWAY_SLOTS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPEECH_BODY = json.dumps(
    {
        "model": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        "voice": "vivian",
        "input": "The gateway streams audio as it is made.",
        "response_format": "pcm",
        "stream": True,
    }
).encode()
COLOURS = {DIRECT: "#7f7f7f", AISTACK: "#1f77b4", TWISTED: "#ff7f0e", NGINX: "#2ca02c"}


def log(message: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """``names`` starting at ``turn`` (mod its length): who goes first changes per round."""
    if not names:
        return []
    k = turn % len(names)
    return [*names[k:], *names[:k]]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (as ``bench/stall_and_disconnect.py`` computes it)."""
    return float(percentile(list(values), 0.99))


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


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate a process this harness started, and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The upstream


def start_upstream(workdir: Path) -> UpstreamProcess:
    """``bench/fast_upstream.py`` as a child process, its events collected as
    ``tests/upstream_server.py``'s are (the two print the same event lines)."""
    port_file = workdir / "upstream.port"
    log = (workdir / "upstream.stderr").open("w")
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "fast_upstream.py"), "--port-file", str(port_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    return UpstreamProcess(process, port_file, log)


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


def _wait_listening(process: subprocess.Popen[bytes], name: str, log_path: Path) -> int:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {log_path.read_text()}")
        ports = listening_ports(process.pid)
        if ports:
            return min(ports)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not listen in 30 s")
        time.sleep(0.02)


def start_aistack(upstream: UpstreamProcess, workdir: Path, slots: int) -> Contender:
    return _start(AISTACK, aistack_command(upstream.url, "--slots", str(slots)), workdir)


def start_twisted(upstream: UpstreamProcess, workdir: Path) -> Contender:
    script = ROOT / "tests" / "gateway_process.py"
    command = [sys.executable, str(script), "--upstream-port", str(upstream.port), "--port", "0"]
    return _start(TWISTED, command, workdir)


def start_floor(name: str, upstream: UpstreamProcess, workdir: Path) -> Contender:
    script = BENCH / "floors.py"
    kind = FLOOR_KINDS[name]
    command = [sys.executable, str(script), kind, "--upstream-port", str(upstream.port)]
    return _start(name, command, workdir)


def _start(name: str, command: list[str], workdir: Path) -> Contender:
    log_path = workdir / f"{name}-{time.monotonic_ns()}.log"
    log_file = log_path.open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
    )
    try:
        port = _wait_listening(process, name, log_path)
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
    port = free_port()
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
        command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
    )
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


def post(target: str, *, close: bool = True) -> bytes:
    """``POST target`` with a speech request body."""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {target} HTTP/1.1\r\nHost: bench.test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(SPEECH_BODY)}\r\n{connection}\r\n"
    ).encode() + SPEECH_BODY


def speech(size: int, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"bytes": size, **params}.items())
    return f"/v1/audio/speech?{query}"


_idents = iter(range(10**9))


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_idents)}"


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read until the end of the response head: (head, body bytes read so far)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"the connection ended in the head: {data[:300]!r}")
        data += more
    return data[: end + 4], data[end + 4 :]


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@dataclass
class Transfer:
    status: int
    body_bytes: int  # on the wire, chunk framing included
    seconds: float
    complete: bool  # ended with the terminating chunk


def transfer(port: int, target: str, buffer: memoryview, timeout: float = 120) -> Transfer:
    """POST ``target``, read the whole response into ``buffer`` (reused), until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        request = post(target)
        started = time.perf_counter()
        sock.sendall(request)
        head, early = read_head(sock)
        body = len(early)
        tail = early[-5:]
        while n := sock.recv_into(buffer):
            body += n
            tail = (tail + bytes(buffer[max(0, n - 5) : n]))[-5:]
        seconds = time.perf_counter() - started
    return Transfer(status_of(head), body, seconds, tail == b"0\r\n\r\n")


def first_byte(port: int, target: str, timeout: float = 30) -> float:
    """Seconds from sending ``POST target`` to the first response body byte (then drains)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        request = post(target)
        started = time.perf_counter()
        sock.sendall(request)
        data = b""
        while True:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError(f"ended before the body: {data[:300]!r}")
            data += more
            end = data.find(b"\r\n\r\n")
            if end >= 0 and len(data) > end + 4:
                elapsed = time.perf_counter() - started
                break
        if status_of(data) != 200:
            raise ConnectionError(f"not a 200: {data[:300]!r}")
        while sock.recv(1 << 20):
            pass
    return elapsed


def open_stream(
    port: int, target: str, *, receive_buffer: int = 128 * 1024, body_bytes: int = 64 * 1024
) -> tuple[socket.socket, int]:
    """A client that sent ``POST target`` and read the head and ``body_bytes``, then stops.

    As ``tests/gateway_process.open_stream`` does: its receive buffer is fixed before it
    connects, so the kernel does not absorb tens of MB on its behalf. Returns the socket and
    the body bytes read so far.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(post(target))
        head, body = read_head(sock)
        if status_of(head) != 200:
            raise ConnectionError(f"not a 200: {head[:300]!r}")
        got = len(body)
        while got < body_bytes:
            more = sock.recv(65536)
            if not more:
                raise ConnectionError("the stream ended early")
            got += len(more)
    except BaseException:
        sock.close()
        raise
    return sock, got


def drain(sock: socket.socket) -> tuple[int, bool]:
    """Read ``sock`` to EOF: (bytes, whether it ended with the terminating chunk)."""
    total = 0
    tail = b""
    while more := sock.recv(1 << 20):
        total += len(more)
        tail = (tail + more[-5:])[-5:]
    return total, tail == b"0\r\n\r\n"


def response_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole response with a ``Content-Length``."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", bytes(data[:end]))
    return match is not None and len(data) - end - 4 >= int(match.group(1))


# Scenario 1: load generation


WRK_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$")
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_wrk(text: str) -> dict[str, Any]:
    """Latency percentiles (seconds), requests/s and errors from ``wrk --latency`` output."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for line in text.splitlines():
        if match := WRK_LINE.match(line):
            result[f"p{match.group(1)}"] = float(match.group(2)) * UNIT[match.group(3)]
        elif line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        elif "Non-2xx or 3xx responses:" in line:
            result["non_2xx"] = int(line.split(":")[1])
        elif line.strip().startswith("Socket errors:"):
            result["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", line))
        elif match := re.match(r"^\s*(\d+) requests in", line):
            result["requests"] = int(match.group(1))
    missing = {"p50", "p99", "rps"} - set(result)
    if missing:
        raise RuntimeError(f"could not read {sorted(missing)} from wrk:\n{text}")
    return result


def run_wrk(port: int, connections: int, seconds: float) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    command += ["--timeout", "5s", f"http://127.0.0.1:{port}/v1/audio/voices"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def run_python_load(port: int, connections: int, seconds: float) -> dict[str, Any]:
    """The fallback when there is no wrk: closed-loop keep-alive GETs from this process."""
    request = b"GET /v1/audio/voices HTTP/1.1\r\nHost: bench.test\r\n\r\n"
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    non_2xx = 0
    state: dict[socket.socket, tuple[float, bytearray]] = {}
    try:
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
            state[sock] = (time.perf_counter(), bytearray())
            sock.send(request)
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for key, _ in selector.select(timeout=1):
                sock = key.data
                sent, data = state[sock]
                data += sock.recv(65536)
                if response_complete(data):
                    now = time.perf_counter()
                    latencies.append(now - sent)
                    if not data.startswith(b"HTTP/1.1 2"):
                        non_2xx += 1
                    state[sock] = (now, bytearray())
                    sock.send(request)
        elapsed = time.perf_counter() - started
    finally:
        for sock in state:
            selector.unregister(sock)
            sock.close()
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        f"p{q}": percentile(ordered, q / 100) for q in (50, 75, 90, 99) if ordered
    }
    result.update(
        rps=len(latencies) / elapsed, requests=len(latencies), non_2xx=non_2xx, socket_errors=0
    )
    return result


# The run


@dataclass
class Settings:
    repeat: int
    wrk_seconds: float
    stream_mb: int
    ttfb_trials: int
    stall_mib: int
    stall_cap: float
    close_trials: int
    close_mib: int
    burst: int
    sequential_503: int
    nginx_workers: int
    nginx_buffer: str
    loadgen: str
    floors: bool


class Bench:
    """Holds the upstream and the long-lived contenders; each scenario method adds results."""

    def __init__(self, settings: Settings, workdir: Path, names: list[str]) -> None:
        self.s = settings
        self.workdir = workdir
        self.names = names  # contenders taking part (nginx dropped where absent)
        self.upstream = start_upstream(workdir)
        self.contenders: dict[str, Contender] = {}
        self.results: dict[str, Any] = {}
        self.buffer = memoryview(bytearray(1 << 20))

    def start_contender(self, name: str, slots: int = GATEWAY_SLOTS) -> Contender:
        if name == DIRECT:
            return Contender(DIRECT, self.upstream.port)
        if name == AISTACK:
            return start_aistack(self.upstream, self.workdir, slots)
        if name == TWISTED:
            return start_twisted(self.upstream, self.workdir)
        if name in FLOOR_KINDS:
            return start_floor(name, self.upstream, self.workdir)
        return start_nginx(self.upstream, self.workdir, self.s.nginx_workers, self.s.nginx_buffer)

    def ensure_started(self, floors: Sequence[str] = ()) -> list[str]:
        """Start the contenders (and ``floors`` if the floors are on); who takes part."""
        names = [*self.names, *(floors if self.s.floors else ())]
        for name in names:
            if name not in self.contenders:
                self.contenders[name] = contender = self.start_contender(name)
                if name != WEB_FLOOR:  # it only answers voices and 503s
                    self.warm(contender)
        return names

    def split_floors(self, by_name: dict[str, Any]) -> dict[str, Any]:
        """Take the floors' entries out of ``by_name`` (the table shows contenders only)."""
        return {name: by_name.pop(name) for name in FLOOR_KINDS if name in by_name}

    def warm(self, contender: Contender) -> None:
        for _ in range(3):
            transfer(contender.port, speech(4 * MiB), self.buffer)
        for _ in range(20):
            first_byte(contender.port, speech(3840, chunk=3840))

    def stop(self) -> None:
        for contender in self.contenders.values():
            contender.stop()
        self.contenders.clear()
        self.upstream.stop()

    # 1

    def voices(self) -> None:
        s = self.s
        load = run_wrk if s.loadgen == "wrk" else run_python_load
        names = self.ensure_started([WEB_FLOOR, AGENT_FLOOR])
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for connections in (1, 16):
            key = f"{connections}conn"
            runs[key] = {name: [] for name in names}
            for name in names:  # warm-up, not recorded
                load(self.contenders[name].port, connections, min(1.0, s.wrk_seconds))
            for turn in range(s.repeat):
                for name in rotated(names, turn):
                    log(f"1: voices, {connections} conn, round {turn + 1}/{s.repeat}: {name}")
                    pids = self.contenders[name].pids()
                    cpu = cpu_seconds(pids)
                    run = load(self.contenders[name].port, connections, s.wrk_seconds)
                    if pids and run.get("requests"):
                        run["cpu_us_per_request"] = (
                            (cpu_seconds(pids) - cpu) / run["requests"] * 1e6
                        )
                    runs[key][name].append(run)
        summary: dict[str, Any] = {}
        for key, by_name in runs.items():
            direct = by_name.get(DIRECT, [])
            summary[key] = {}
            for name, rounds in by_name.items():
                entry: dict[str, Any] = {
                    "p50_us": median([r["p50"] for r in rounds]) * 1e6,
                    "p99_us": median([r["p99"] for r in rounds]) * 1e6,
                    "rps": median([r["rps"] for r in rounds]),
                    "non_2xx": sum(r["non_2xx"] for r in rounds),
                    "socket_errors": sum(r["socket_errors"] for r in rounds),
                }
                if all("cpu_us_per_request" in r for r in rounds):
                    entry["cpu_us_per_request"] = median([r["cpu_us_per_request"] for r in rounds])
                if name != DIRECT and direct:
                    entry["added_p50_us"] = (
                        median([r["p50"] - d["p50"] for r, d in zip(rounds, direct, strict=True)])
                        * 1e6
                    )
                    entry["added_p99_us"] = (
                        median([r["p99"] - d["p99"] for r, d in zip(rounds, direct, strict=True)])
                        * 1e6
                    )
                summary[key][name] = entry
        floors = {key: self.split_floors(by_name) for key, by_name in summary.items()}
        if s.floors:
            self.results.setdefault("floors", {})["1"] = floors
        self.results["1"] = {
            "what": "GET /v1/audio/voices, closed loop; aistack-tts with --slots 16",
            "loadgen": "wrk -t1 --latency" if s.loadgen == "wrk" else "python (in the harness)",
            "seconds_per_run": s.wrk_seconds,
            "rounds": s.repeat,
            "summary": summary,
            "runs": runs,
        }

    # 2 and 7

    def throughput(self) -> None:
        s = self.s
        names = self.ensure_started([AGENT_FLOOR, RELAY_FLOOR])
        size = s.stream_mb * MB
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for turn in range(s.repeat):
            for name in rotated(names, turn):
                log(f"2: {s.stream_mb} MB stream, round {turn + 1}/{s.repeat}: {name}")
                contender = self.contenders[name]
                pids = contender.pids()
                gateway_cpu = cpu_seconds(pids)
                upstream_cpu = cpu_seconds([self.upstream.pid])
                client_cpu = time.process_time()
                result = transfer(contender.port, speech(size), self.buffer)
                client_cpu = time.process_time() - client_cpu
                upstream_cpu = cpu_seconds([self.upstream.pid]) - upstream_cpu
                gateway_cpu = cpu_seconds(pids) - gateway_cpu
                if result.status != 200 or not result.complete or result.body_bytes < size:
                    raise RuntimeError(f"{name}: bad {s.stream_mb} MB transfer: {result}")
                rows[name].append(
                    {
                        "seconds": result.seconds,
                        "mb_per_s": size / MB / result.seconds,
                        "wire_bytes": result.body_bytes,
                        "gateway_cpu_s": gateway_cpu,
                        "upstream_cpu_s": upstream_cpu,
                        "client_cpu_s": client_cpu,
                    }
                )
        summary: dict[str, Any] = {}
        cpu: dict[str, Any] = {}
        for name, runs in rows.items():
            speeds = [r["mb_per_s"] for r in runs]
            seconds = sum(r["seconds"] for r in runs)
            summary[name] = {
                "mb_per_s": median(speeds),
                "min_mb_per_s": min(speeds),
                "max_mb_per_s": max(speeds),
                "client_busy": sum(r["client_cpu_s"] for r in runs) / seconds,
                "upstream_busy": sum(r["upstream_cpu_s"] for r in runs) / seconds,
                "gateway_busy": sum(r["gateway_cpu_s"] for r in runs) / seconds,
            }
            streamed = size * len(runs) / GB
            cpu[name] = {
                "gateway_cpu_s_per_gb": (
                    sum(r["gateway_cpu_s"] for r in runs) / streamed if name != DIRECT else None
                ),
                "upstream_cpu_s_per_gb": sum(r["upstream_cpu_s"] for r in runs) / streamed,
                "client_cpu_s_per_gb": sum(r["client_cpu_s"] for r in runs) / streamed,
            }
        if s.floors:
            self.results.setdefault("floors", {}).update(
                {"2": self.split_floors(summary), "7": self.split_floors(cpu)}
            )
        self.results["2"] = {
            "what": f"{s.stream_mb} MB speech response, chunked in 64 KiB chunks, read to EOF",
            "bytes": size,
            "rounds": s.repeat,
            "summary": summary,
            "runs": rows,
        }
        self.results["7"] = {
            "what": "gateway CPU seconds (utime+stime) per GB over scenario 2's transfers",
            "clock_ticks_per_s": CLK_TCK,
            "summary": cpu,
        }

    # 3

    def first_bytes(self) -> None:
        s = self.s
        names = self.ensure_started([AGENT_FLOOR, RELAY_FLOOR])
        variants = {
            "late_head": speech(38400, chunk=3840, delay=0.1),
            "early_head": speech(38400, chunk=3840, delay=0.1, head="early"),
        }
        samples: dict[str, dict[str, list[float]]] = {
            v: {name: [] for name in names} for v in variants
        }
        for trial in range(s.ttfb_trials):
            if trial % 10 == 0:
                log(f"3: first byte after 100 ms, trial {trial + 1}/{s.ttfb_trials}")
            for variant, target in variants.items():
                for name in rotated(names, trial):
                    samples[variant][name].append(first_byte(self.contenders[name].port, target))
        summary: dict[str, Any] = {}
        for variant, by_name in samples.items():
            direct = by_name.get(DIRECT)
            summary[variant] = {}
            for name, values in by_name.items():
                entry = {"p50_ms": median(values) * 1e3, "p99_ms": p99(values) * 1e3}
                if name != DIRECT and direct:
                    entry["added_p50_ms"] = (median(values) - median(direct)) * 1e3
                    entry["added_p99_ms"] = (p99(values) - p99(direct)) * 1e3
                summary[variant][name] = entry
        floors = {variant: self.split_floors(by_name) for variant, by_name in summary.items()}
        if s.floors:
            self.results.setdefault("floors", {})["3"] = floors
        self.results["3"] = {
            "what": "time from sending the request to the first body byte; the upstream waits "
            "100 ms before its first 3840-byte chunk (late_head: the status line comes with "
            "it; early_head: the status line is sent at once)",
            "trials": s.ttfb_trials,
            "summary": summary,
            "samples_ms": {
                v: {n: [round(x * 1e3, 4) for x in xs] for n, xs in d.items()}
                for v, d in samples.items()
            },
        }

    # 4

    def stall_once(self, name: str) -> dict[str, Any]:
        s = self.s
        contender = self.start_contender(name)
        try:
            for _ in range(2):
                transfer(contender.port, speech(4 * MiB), self.buffer)  # warm up
            baseline = peak = rss_of(contender.rss_pids())
            ident = new_id("stall")
            started = time.monotonic()
            sock, _ = open_stream(contender.port, speech(s.stall_mib * MiB, id=ident))
            try:
                settled_at: float | None = None
                outcome = f"cap of {s.stall_cap:g} s reached"
                while True:
                    now = time.monotonic()
                    peak = max(peak, rss_of(contender.rss_pids()))
                    if settled_at is None:
                        if self.upstream.first(ident, {"DONE"}) is not None:
                            settled_at = now + 1.0
                            outcome = "upstream sent it all (gateway buffered it)"
                        elif self.upstream.first(ident, {"STALLED"}) is not None:
                            settled_at = now + 2.0
                            outcome = "upstream paused (backpressure)"
                    if (settled_at is not None and now >= settled_at) or (
                        now - started >= s.stall_cap
                    ):
                        break
                    time.sleep(0.05)
                sent = [
                    e.sent for e in self.upstream.events(ident) if e.kind in ("STALLED", "DONE")
                ]
            finally:
                sock.close()
        finally:
            contender.stop()
        return {
            "baseline_rss": baseline,
            "peak_rss": peak,
            "growth_mib": (peak - baseline) / MiB,
            "upstream_sent": max(sent) if sent else None,
            "outcome": outcome,
        }

    def stalls(self) -> None:
        s = self.s
        names = [n for n in self.names if n != DIRECT]
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for turn in range(s.repeat):
            for name in rotated(names, turn):
                log(f"4: stall on {s.stall_mib} MiB, round {turn + 1}/{s.repeat}: {name}")
                rows[name].append(self.stall_once(name))
        summary = {
            name: {
                "growth_mib": median([r["growth_mib"] for r in runs]),
                "max_growth_mib": max(r["growth_mib"] for r in runs),
                "outcome": runs[-1]["outcome"],
                "upstream_sent_mib": (
                    None if runs[-1]["upstream_sent"] is None else runs[-1]["upstream_sent"] / MiB
                ),
            }
            for name, runs in rows.items()
        }
        self.results["4"] = {
            "what": f"RSS growth while the only client stops reading a {s.stall_mib} MiB "
            "response (a fresh gateway per trial; nginx: its workers summed)",
            "mib": s.stall_mib,
            "rounds": s.repeat,
            "summary": summary,
            "runs": rows,
        }

    # 5

    def disconnects(self) -> None:
        s = self.s
        self.ensure_started()
        closed: dict[str, list[float]] = {name: [] for name in self.names}
        ran_to_end: dict[str, list[float]] = {name: [] for name in self.names}
        missing: dict[str, int] = dict.fromkeys(self.names, 0)
        size = s.close_mib * MiB
        for trial in range(s.close_trials):
            if trial % 10 == 0:
                log(f"5: client close, trial {trial + 1}/{s.close_trials}")
            for name in rotated(self.names, trial):
                ident = new_id("close")
                sock, _ = open_stream(self.contenders[name].port, speech(size, id=ident))
                self.upstream.wait(ident, {"HEADERS"}, 10)
                closed_at = time.monotonic()
                sock.close()
                try:
                    event = self.upstream.wait(ident, {"CLOSED", "DONE"}, 10)
                except TimeoutError:
                    missing[name] += 1
                    continue
                finally:
                    self.upstream.forget(ident)
                if event.kind == "CLOSED":
                    closed[name].append((event.t - closed_at) * 1e3)
                else:
                    ran_to_end[name].append(event.t - closed_at)
        summary: dict[str, Any] = {}
        for name in self.names:
            values = closed[name]
            entry: dict[str, Any] = {
                "closed": len(values),
                "ran_to_end": len(ran_to_end[name]),
                "no_event_in_10s": missing[name],
            }
            if values:
                entry.update(p50_ms=median(values), p99_ms=p99(values), max_ms=max(values))
            if ran_to_end[name]:
                entry["ran_to_end_p50_s"] = median(ran_to_end[name])
            summary[name] = entry
        self.results["5"] = {
            "what": f"client reads the head and 64 KiB of a {s.close_mib} MiB stream, then "
            "closes; time until the upstream sees its connection closed",
            "trials": s.close_trials,
            "summary": summary,
            "close_ms": {n: [round(v, 4) for v in vs] for n, vs in closed.items()},
        }

    # 6

    def busy(self) -> None:
        s = self.s
        if AISTACK not in self.names:
            return
        gateway = start_aistack(self.upstream, self.workdir, slots=1)
        bursts: list[dict[str, Any]] = []
        sequential: list[float] = []
        checks: list[dict[str, Any]] = []
        try:
            port = gateway.port
            for _ in range(3):
                transfer(port, speech(4 * MiB), self.buffer)  # warm up
            for turn in range(s.repeat):
                log(f"6: {s.burst} requests against a held slot, round {turn + 1}/{s.repeat}")
                holder, _ = open_stream(port, speech(8 * MiB, id=new_id("hold")))
                try:
                    bursts.append(burst(port, s.burst))
                    sequential += one_at_a_time(port, s.sequential_503)
                    size, complete = drain(holder)
                finally:
                    holder.close()
                follow_up = retry_until_ok(port, self.buffer)
                checks.append(
                    {"holder_complete": complete, "holder_bytes": size + 64 * 1024, **follow_up}
                )
            capacity = capacity_still_one(port, self.buffer)
        finally:
            gateway.stop()
        if s.floors:
            self.floor_bursts()
        latencies = [x for b in bursts for x in b["latencies_ms"]]
        counts_ok = all(b["status"].get("503", 0) == s.burst for b in bursts)
        intact = (
            counts_ok
            and all(c["holder_complete"] and c["follow_up_status"] == 200 for c in checks)
            and capacity["second_status"] == 503
            and capacity["after_release_status"] == 200
        )
        self.results["6"] = {
            "what": f"aistack-tts --slots 1, one stalled request holding the slot; {s.burst} "
            "speech requests sent at once on open connections; latency from each send to its "
            "whole 503 response",
            "burst": s.burst,
            "rounds": s.repeat,
            "summary": {
                AISTACK: {
                    "p50_ms": median(latencies),
                    "p99_ms": p99(latencies),
                    "max_ms": max(latencies),
                    "sequential_p50_ms": median(sequential),
                    "sequential_p99_ms": p99(sequential),
                    "burst_span_ms": median([b["span_ms"] for b in bursts]),
                    "slow_connects": sum(b["slow_connects"] for b in bursts),
                    "all_503": counts_ok,
                    "slot_intact": intact,
                }
            },
            "bursts": [{k: v for k, v in b.items() if k != "latencies_ms"} for b in bursts],
            "latencies_ms": [round(x, 4) for x in latencies],
            "sequential_ms": [round(x, 4) for x in sequential],
            "after_each_burst": checks,
            "capacity_check": capacity,
        }

    def floor_bursts(self) -> None:
        """Scenario 6's burst against a bare twisted.web answering a fixed 503."""
        s = self.s
        floor = start_floor(WEB_FLOOR, self.upstream, self.workdir)
        try:
            bursts = []
            for turn in range(s.repeat):
                log(f"6: {s.burst} requests against {WEB_FLOOR}, round {turn + 1}/{s.repeat}")
                bursts.append(burst(floor.port, s.burst))
        finally:
            floor.stop()
        latencies = [x for b in bursts for x in b["latencies_ms"]]
        self.results.setdefault("floors", {})["6"] = {
            WEB_FLOOR: {
                "p50_ms": median(latencies),
                "p99_ms": p99(latencies),
                "all_503": all(b["status"].get("503", 0) == s.burst for b in bursts),
                "slow_connects": sum(b["slow_connects"] for b in bursts),
            }
        }


def burst(port: int, count: int) -> dict[str, Any]:
    """Open ``count`` connections, send a speech request on each at once, time each answer."""
    request = post(speech(1 * MiB))
    sockets: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        connects: list[float] = []
        for _ in range(count):
            connect_started = time.perf_counter()
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            connects.append(time.perf_counter() - connect_started)
        time.sleep(0.05)  # let the gateway accept them all
        sent_at: list[float] = []
        done_at: list[float | None] = [None] * count
        data = [bytearray() for _ in range(count)]
        for i, sock in enumerate(sockets):
            sock.setblocking(False)
            sent_at.append(time.perf_counter())
            sock.send(request)
            selector.register(sock, selectors.EVENT_READ, i)
        pending = count
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                i = key.data
                sock = sockets[i]
                try:
                    more = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    more = b""
                data[i] += more
                if not more or response_complete(data[i]):
                    done_at[i] = time.perf_counter()
                    selector.unregister(sock)
                    pending -= 1
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    status: dict[str, int] = {}
    for d in data:
        code = d[9:12].decode("latin-1") if d.startswith(b"HTTP/") else "none"
        status[code] = status.get(code, 0) + 1
    latencies = [(d - s) * 1e3 for s, d in zip(sent_at, done_at, strict=True) if d is not None]
    finished = [d for d in done_at if d is not None]
    return {
        "connect_ms": sum(connects) * 1e3,
        # A connect that waited for a SYN retransmission: the listen backlog was full.
        "slow_connects": sum(c > 0.5 for c in connects),
        "send_span_ms": (sent_at[-1] - sent_at[0]) * 1e3,
        "span_ms": (max(finished) - sent_at[0]) * 1e3 if finished else None,
        "answered": len(latencies),
        "status": status,
        "gpu_busy_bodies": sum(b'"gpu_busy"' in bytes(d) for d in data),
        "latencies_ms": latencies,
    }


def one_at_a_time(port: int, count: int) -> list[float]:
    """``count`` speech requests, each alone on its connection: 503 latencies (ms)."""
    request = post(speech(1 * MiB))
    latencies = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.perf_counter()
            sock.sendall(request)
            data = bytearray()
            while not response_complete(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
            latencies.append((time.perf_counter() - started) * 1e3)
            if not data.startswith(b"HTTP/1.1 503"):
                raise RuntimeError(f"expected a 503 while the slot is held: {bytes(data[:200])!r}")
    return latencies


def retry_until_ok(port: int, buffer: memoryview) -> dict[str, Any]:
    """After the holder is done: a new request succeeds (allowing 1 s for the release)."""
    deadline = time.monotonic() + 1.0
    attempts = 0
    while True:
        attempts += 1
        result = transfer(port, speech(1 * MiB), buffer)
        if result.status == 200 or time.monotonic() > deadline:
            return {
                "follow_up_status": result.status,
                "follow_up_complete": result.complete,
                "follow_up_attempts": attempts,
            }
        time.sleep(0.01)


def capacity_still_one(port: int, buffer: memoryview) -> dict[str, Any]:
    """While a new holder streams, a second request gets 503; after it, a request succeeds."""
    holder, _ = open_stream(port, speech(8 * MiB, id=new_id("cap")))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post(speech(1 * MiB)))
            head, _ = read_head(sock)
        second = status_of(head)
    finally:
        holder.close()
    after = retry_until_ok(port, buffer)
    return {"second_status": second, "after_release_status": after["follow_up_status"]}


# Targets, table, chart


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class Row:
    scenario: str
    metric: str
    cells: dict[str, str]
    target: str = ""
    verdict: str = ""


@dataclass
class Target:
    scenario: str
    target: str
    value: str
    passed: bool


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build(results: dict[str, Any], names: list[str]) -> tuple[list[Row], list[Target]]:
    """The table rows and the target verdicts for aistack-tts."""
    rows: list[Row] = []
    targets: list[Target] = []

    def check(scenario: str, target: str, value: str, ok: bool) -> str:
        targets.append(Target(scenario, target, value, ok))
        return verdict(ok)

    def pair(a: float | None, b: float | None, digits: int) -> str:
        return f"{fmt(a, digits)} / {fmt(b, digits)}"

    na = {n: "n/a" for n in names if n != AISTACK}
    if "1" in results:
        for key, label in (("1conn", "1 conn"), ("16conn", "16 conns")):
            summary = results["1"]["summary"][key]
            rows.append(
                Row(
                    "1",
                    f"voices, {label}: latency p50 / p99 (us)",
                    {n: pair(e["p50_us"], e["p99_us"], 0) for n, e in summary.items()},
                )
            )
            added = {n: e for n, e in summary.items() if "added_p50_us" in e}
            row = Row(
                "1",
                f"voices, {label}: added p50 / p99 (us)",
                {n: pair(e["added_p50_us"], e["added_p99_us"], 0) for n, e in added.items()},
                "added p50 <= 1/2 twisted's",
            )
            if AISTACK in added and TWISTED in added:
                ours, theirs = added[AISTACK]["added_p50_us"], added[TWISTED]["added_p50_us"]
                row.verdict = check(
                    "1",
                    f"voices, {label}: added p50 <= 1/2 of twisted.web.proxy's",
                    f"{ours:.0f} us vs {theirs:.0f} us / 2 = {theirs / 2:.0f} us",
                    ours <= theirs / 2,
                )
            rows.append(row)
            rows.append(
                Row(
                    "1",
                    f"voices, {label}: requests/s",
                    {n: fmt(e["rps"], 0) for n, e in summary.items()},
                )
            )
            rows.append(
                Row(
                    "1",
                    "  gateway CPU per request (us)",
                    {
                        n: fmt(e["cpu_us_per_request"], 0)
                        for n, e in summary.items()
                        if "cpu_us_per_request" in e
                    },
                )
            )
    if "2" in results:
        summary = results["2"]["summary"]
        row = Row(
            "2",
            f"{results['2']['bytes'] // MB} MB stream: MB/s median (slowest)",
            {n: f"{e['mb_per_s']:.0f} ({e['min_mb_per_s']:.0f})" for n, e in summary.items()},
            ">= nginx; >= 1/2 direct",
        )
        if AISTACK in summary:
            ours = summary[AISTACK]["mb_per_s"]
            verdicts = []
            if NGINX in summary:
                theirs = summary[NGINX]["mb_per_s"]
                ok = check(
                    "2",
                    "MB/s >= nginx's",
                    f"{ours:.0f} vs {theirs:.0f} MB/s ({ours / theirs:.0%} of nginx)",
                    ours >= theirs,
                )
                verdicts.append(f"{ok} (nginx)")
            if DIRECT in summary:
                direct = summary[DIRECT]["mb_per_s"]
                ok = check(
                    "2",
                    "MB/s >= 50% of direct",
                    f"{ours:.0f} vs {direct:.0f} MB/s ({ours / direct:.0%} of direct)",
                    ours >= direct / 2,
                )
                verdicts.append(f"{ok} (direct)")
            row.verdict = ", ".join(verdicts)
        rows.append(row)
        rows.append(
            Row(
                "2",
                "  CPU busy: client / upstream / gateway",
                {
                    n: f"{e['client_busy']:.0%} / {e['upstream_busy']:.0%} / "
                    + (f"{e['gateway_busy']:.0%}" if n != DIRECT else "-")
                    for n, e in summary.items()
                },
            )
        )
    if "3" in results:
        for variant, label in (("late_head", "head+audio"), ("early_head", "head early")):
            summary = results["3"]["summary"][variant]
            rows.append(
                Row(
                    "3",
                    f"first byte, {label} at 100 ms: p50 / p99 (ms)",
                    {n: pair(e["p50_ms"], e["p99_ms"], 2) for n, e in summary.items()},
                )
            )
            added = {n: e for n, e in summary.items() if "added_p50_ms" in e}
            row = Row(
                "3",
                f"first byte, {label} at 100 ms: added p50 / p99",
                {n: pair(e["added_p50_ms"], e["added_p99_ms"], 2) for n, e in added.items()},
                f"added p50 <= {TTFB_GOAL_MS:g} ms",
            )
            if AISTACK in added:
                ours = added[AISTACK]["added_p50_ms"]
                row.verdict = check(
                    "3",
                    f"first byte ({label} after 100 ms): added p50 <= {TTFB_GOAL_MS:g} ms",
                    f"{ours:.2f} ms",
                    ours <= TTFB_GOAL_MS,
                )
            rows.append(row)
    if "4" in results:
        summary = results["4"]["summary"]
        row = Row(
            "4",
            f"stall on {results['4']['mib']} MiB: RSS growth MiB median (max)",
            {DIRECT: "n/a"}
            | {
                n: f"{e['growth_mib']:+.1f} ({e['max_growth_mib']:+.1f})"
                for n, e in summary.items()
            },
            f"<= {RSS_GOAL_MIB} MiB",
        )
        if AISTACK in summary:
            ours = summary[AISTACK]["max_growth_mib"]
            row.verdict = check(
                "4",
                f"RSS growth <= {RSS_GOAL_MIB} MiB (worst trial)",
                f"{ours:+.2f} MiB",
                ours <= RSS_GOAL_MIB,
            )
        rows.append(row)
        upstream: dict[str, str] = {DIRECT: "n/a"}
        for n, e in summary.items():
            what = "paused" if "paused" in e["outcome"] else "sent all"
            sent = e["upstream_sent_mib"]
            upstream[n] = what if sent is None else f"{what} at {sent:.0f} MiB"
        rows.append(Row("4", "  the upstream", upstream))
    if "5" in results:
        summary = results["5"]["summary"]
        trials = results["5"]["trials"]
        cells = {}
        for n, e in summary.items():
            if "p50_ms" in e:
                cells[n] = pair(e["p50_ms"], e["p99_ms"], 2)
                if e["closed"] != trials:
                    cells[n] += f" ({e['closed']}/{trials} closed)"
            else:
                cells[n] = f"never ({e['ran_to_end']} ran to end)"
        row = Row(
            "5",
            f"close -> upstream closed, {trials}x: p50 / p99 (ms)",
            cells,
            f"p99 <= {P99_GOAL_MS:g} ms",
        )
        if AISTACK in summary:
            e = summary[AISTACK]
            row.verdict = check(
                "5",
                f"client close -> upstream closed: p99 <= {P99_GOAL_MS:g} ms",
                f"{e.get('p99_ms', float('nan')):.2f} ms ({e['closed']}/{trials} closed)",
                e["closed"] == trials and e.get("p99_ms", float("inf")) <= P99_GOAL_MS,
            )
        rows.append(row)
    if "6" in results:
        e = results["6"]["summary"][AISTACK]
        count = results["6"]["burst"]
        rows.append(
            Row(
                "6",
                f"slot held, {count} at once: 503 p50 / p99 (ms)",
                na | {AISTACK: pair(e["p50_ms"], e["p99_ms"], 2)},
                f"p99 <= {BUSY_P99_GOAL_MS:g} ms",
                check(
                    "6",
                    f"503 while the slot is held ({count} at once): p99 <= {BUSY_P99_GOAL_MS:g} ms",
                    f"{e['p99_ms']:.2f} ms",
                    e["p99_ms"] <= BUSY_P99_GOAL_MS,
                ),
            )
        )
        rows.append(
            Row(
                "6",
                f"  connects > 0.5 s (SYN retried), of {count * results['6']['rounds']}",
                na | {AISTACK: str(e["slow_connects"])},
            )
        )
        rows.append(
            Row(
                "6",
                "  one at a time: 503 p50 / p99 (ms)",
                na | {AISTACK: pair(e["sequential_p50_ms"], e["sequential_p99_ms"], 2)},
            )
        )
        rows.append(
            Row(
                "6",
                "  slot intact afterwards",
                na | {AISTACK: "yes" if e["slot_intact"] else "NO"},
                "all 503; then 200; cap. 1",
                check(
                    "6",
                    "slot intact (each burst all 503, holder complete, follow-up 200, "
                    "capacity still 1)",
                    "yes" if e["slot_intact"] else "no",
                    bool(e["slot_intact"]),
                ),
            )
        )
    if "7" in results:
        summary = results["7"]["summary"]
        rows.append(
            Row(
                "7",
                "gateway CPU s per GB streamed",
                {
                    n: "n/a"
                    if e["gateway_cpu_s_per_gb"] is None
                    else fmt(e["gateway_cpu_s_per_gb"], 2)
                    for n, e in summary.items()
                },
                "(report)",
            )
        )
        rows.append(
            Row(
                "7",
                "  upstream CPU s per GB (same transfers)",
                {n: fmt(e["upstream_cpu_s_per_gb"], 2) for n, e in summary.items()},
            )
        )
    return rows, targets


def render_floors(results: dict[str, Any]) -> str:
    """The floors beside aistack-tts and the target, one line per measure."""
    floors = results.get("floors")
    if not floors:
        return ""
    lines = [
        "Twisted floors, measured in the same rounds (bench/floors.py; no gateway logic at all):"
    ]

    def us(entry: dict[str, Any] | None) -> str:
        if entry is None:
            return "-"
        cpu = entry.get("cpu_us_per_request")
        return f"{entry['added_p50_us']:.0f} us" + (f" (CPU {cpu:.0f} us)" if cpu else "")

    for key, label in (("1conn", "1 conn"), ("16conn", "16 conns")):
        if key not in floors.get("1", {}):
            continue
        floor, main = floors["1"][key], results["1"]["summary"][key]
        twisted = main.get(TWISTED)
        target = f"{twisted['added_p50_us'] / 2:.0f} us" if twisted else "-"
        lines.append(
            f"  1  voices, {label}, added p50: {WEB_FLOOR} {us(floor.get(WEB_FLOOR))}, "
            f"{AGENT_FLOOR} {us(floor.get(AGENT_FLOOR))}; aistack-tts {us(main.get(AISTACK))} "
            f"(target {target})"
        )
    for variant, label in (("late_head", "head+audio"), ("early_head", "head early")):
        if variant not in floors.get("3", {}):
            continue
        floor, main = floors["3"][variant], results["3"]["summary"][variant]
        cells = [f"{n} {e['added_p50_ms']:.2f}" for n, e in floor.items()]
        cells += [f"{n} {main[n]['added_p50_ms']:.2f}" for n in (AISTACK, NGINX) if n in main]
        lines.append(
            f"  3  first byte ({label}), added p50 ms: {', '.join(cells)} "
            f"(target {TTFB_GOAL_MS:.0f})"
        )
    if "2" in floors and "2" in results:
        floor, main = floors["2"], results["2"]["summary"]
        cells = [f"{n} {e['mb_per_s']:.0f}" for n, e in floor.items()]
        cells += [f"{n} {main[n]['mb_per_s']:.0f}" for n in (AISTACK, NGINX) if n in main]
        lines.append(f"  2  MB/s: {', '.join(cells)}")
    if "7" in floors and "7" in results:
        floor, main = floors["7"], results["7"]["summary"]
        cells = [f"{n} {e['gateway_cpu_s_per_gb']:.2f}" for n, e in floor.items()]
        cells += [
            f"{n} {main[n]['gateway_cpu_s_per_gb']:.2f}" for n in (AISTACK, NGINX) if n in main
        ]
        lines.append(f"  7  CPU s per GB: {', '.join(cells)}")
    if "6" in floors:
        floor = floors["6"][WEB_FLOOR]
        main = results.get("6", {}).get("summary", {}).get(AISTACK)
        ours = f"; aistack-tts {main['p50_ms']:.1f} / {main['p99_ms']:.1f} ms" if main else ""
        lines.append(
            f"  6  {WEB_FLOOR} answering a fixed 503 to the same bursts: p50 / p99 "
            f"{floor['p50_ms']:.1f} / {floor['p99_ms']:.1f} ms{ours} (target p99 "
            f"{BUSY_P99_GOAL_MS:.0f} ms)"
        )
    return "\n".join(lines)


def render(rows: list[Row], names: list[str]) -> str:
    widths = {n: max(len(n), *(len(r.cells.get(n, "")) for r in rows)) for n in names}
    metric_w = max(len("scenario / metric"), *(len(r.metric) + 3 for r in rows))
    target_w = max(len("target (aistack-tts)"), *(len(r.target) for r in rows))
    header = f"{'scenario / metric':<{metric_w}}" + "".join(f"  {n:>{widths[n]}}" for n in names)
    header += f"  {'target (aistack-tts)':<{target_w}}  result"
    lines = [header, "-" * len(header)]
    last = ""
    for r in rows:
        if r.scenario != last and last:
            lines.append("")
        last = r.scenario
        label = f"{r.scenario}  {r.metric}" if not r.metric.startswith("  ") else f"   {r.metric}"
        line = f"{label:<{metric_w}}" + "".join(
            f"  {r.cells.get(n, ''):>{widths[n]}}" for n in names
        )
        lines.append(f"{line}  {r.target:<{target_w}}  {r.verdict}".rstrip())
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> str:
    """Draw the PNG; returns a note on what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no chart (pip install matplotlib)"
    results = report["results"]
    names: list[str] = report["contenders"]
    verdicts: dict[str, list[bool]] = {}
    for t in report["targets"]:
        verdicts.setdefault(t["scenario"], []).append(t["passed"])

    def title(scenario: str, text: str) -> str:
        marks = verdicts.get(scenario)
        if not marks:
            return text
        return f"{text}\naistack-tts: {'PASS' if all(marks) else 'FAIL'}"

    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    flat = list(axes.flat)

    def bars(ax: Any, values: dict[str, float], unit: str, log_scale: bool = False) -> None:
        labels = [n for n in names if n in values]
        heights = [values[n] for n in labels]
        drawn = ax.bar(labels, heights, color=[COLOURS[n] for n in labels])
        ax.bar_label(drawn, labels=[f"{v:.3g}" for v in heights], fontsize=8)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        if log_scale:
            ax.set_yscale("symlog", linthresh=1)

    def grouped(ax: Any, series: dict[str, dict[str, float]], unit: str) -> None:
        labels = [n for n in names if any(n in s for s in series.values())]
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            present = [(i, n) for i, n in enumerate(labels) if n in values]
            drawn = ax.bar(
                [i + k * width for i, _ in present],
                [values[n] for _, n in present],
                width,
                color=[COLOURS[n] for _, n in present],
                alpha=1.0 if k == 0 else 0.45,
                hatch="" if k == 0 else "//",
                edgecolor="white" if k == 0 else "black",
                linewidth=0.3,
            )
            ax.bar_label(drawn, labels=[f"{values[n]:.3g}" for _, n in present], fontsize=7)
            # A grey proxy for the legend: the series, not a contender.
            ax.bar(
                [0],
                [0],
                0,
                color="#555555",
                alpha=drawn[0].get_alpha() or 1.0,
                hatch="" if k == 0 else "//",
                label=label,
            )
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(labels))], labels)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)

    floors = results.get("floors", {})
    styles: dict[str, Any] = {WEB_FLOOR: ":", AGENT_FLOOR: "-.", RELAY_FLOOR: (0, (1, 3))}

    def floor_lines(ax: Any, values: dict[str, float], what: str = "") -> None:
        """The Twisted floors measured in the same rounds, as grey lines."""
        for name, value in values.items():
            label = f"floor: {name}{what}"
            ax.axhline(value, color="#444444", linestyle=styles[name], linewidth=1.2, label=label)
        if values:
            bottom, top = ax.get_ylim()
            ax.set_ylim(bottom, top * 1.3)  # room for the legend above the bars
            ax.legend(fontsize=7, loc="upper right")

    panels = iter(flat)
    if "1" in results:
        for key, label in (("1conn", "1 connection"), ("16conn", "16 connections")):
            summary = results["1"]["summary"][key]
            ax = next(panels)
            grouped(
                ax,
                {
                    "added p50": {
                        n: e["added_p50_us"] for n, e in summary.items() if "added_p50_us" in e
                    },
                    "added p99": {
                        n: e["added_p99_us"] for n, e in summary.items() if "added_p99_us" in e
                    },
                },
                "us over direct",
            )
            floor_lines(
                ax,
                {n: e["added_p50_us"] for n, e in floors.get("1", {}).get(key, {}).items()},
                " (p50)",
            )
            ax.set_title(title("1", f"1. GET /v1/audio/voices, {label}: added latency"), fontsize=9)
    if "2" in results:
        ax = next(panels)
        summary = results["2"]["summary"]
        bars(ax, {n: e["mb_per_s"] for n, e in summary.items()}, "MB/s")
        if NGINX in summary:
            ax.axhline(summary[NGINX]["mb_per_s"], color="red", linestyle="--", linewidth=0.8)
        if DIRECT in summary:
            ax.axhline(summary[DIRECT]["mb_per_s"] / 2, color="red", linestyle=":", linewidth=0.8)
        floor_lines(ax, {n: e["mb_per_s"] for n, e in floors.get("2", {}).items()})
        ax.set_title(
            title(
                "2",
                f"2. {results['2']['bytes'] // MB} MB stream: MB/s (median)\n"
                "lines: nginx (dashed), half of direct (dotted)",
            ),
            fontsize=9,
        )
    if "3" in results:
        ax = next(panels)
        grouped(
            ax,
            {
                label: {
                    n: e["added_p50_ms"]
                    for n, e in results["3"]["summary"][variant].items()
                    if "added_p50_ms" in e
                }
                for variant, label in (
                    ("late_head", "head with audio"),
                    ("early_head", "head at once"),
                )
            },
            "ms over direct",
        )
        ax.axhline(TTFB_GOAL_MS, color="red", linestyle="--", linewidth=0.8)
        floor_lines(
            ax,
            {n: e["added_p50_ms"] for n, e in floors.get("3", {}).get("late_head", {}).items()},
            " (head with audio)",
        )
        ax.set_title(title("3", "3. first byte after 100 ms: added p50"), fontsize=9)
    if "4" in results:
        ax = next(panels)
        bars(
            ax,
            {n: max(0.0, e["max_growth_mib"]) for n, e in results["4"]["summary"].items()},
            "MiB (symlog)",
            log_scale=True,
        )
        ax.axhline(RSS_GOAL_MIB, color="red", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 4 * max(RSS_GOAL_MIB, *ax.get_ylim()))
        ax.set_title(title("4", "4. stalled client: RSS growth (worst trial)"), fontsize=9)
    if "5" in results:
        ax = next(panels)
        summary = results["5"]["summary"]
        grouped(
            ax,
            {
                "p50": {n: e["p50_ms"] for n, e in summary.items() if "p50_ms" in e},
                "p99": {n: e["p99_ms"] for n, e in summary.items() if "p99_ms" in e},
            },
            "ms",
        )
        ax.axhline(P99_GOAL_MS, color="red", linestyle="--", linewidth=0.8)
        never = [n for n, e in summary.items() if "p50_ms" not in e]
        note = f" (never closed: {', '.join(never)})" if never else ""
        ax.set_title(title("5", f"5. client close -> upstream closed{note}"), fontsize=9)
    if "6" in results and AISTACK in results["6"]["summary"]:
        ax = next(panels)
        e = results["6"]["summary"][AISTACK]
        labels = ["burst p50", "burst p99", "alone p50", "alone p99"]
        values = [e["p50_ms"], e["p99_ms"], e["sequential_p50_ms"], e["sequential_p99_ms"]]
        drawn = ax.bar(labels, values, color=COLOURS[AISTACK])
        ax.bar_label(drawn, labels=[f"{v:.3g}" for v in values], fontsize=8)
        ax.axhline(BUSY_P99_GOAL_MS, color="red", linestyle="--", linewidth=0.8)
        floor_lines(
            ax, {n: e["p99_ms"] for n, e in floors.get("6", {}).items()}, ", fixed 503 (p99)"
        )
        ax.set_ylabel("ms")
        ax.set_title(title("6", "6. aistack-tts 503 while the slot is held"), fontsize=9)
    if "7" in results:
        ax = next(panels)
        bars(
            ax,
            {
                n: e["gateway_cpu_s_per_gb"]
                for n, e in results["7"]["summary"].items()
                if e["gateway_cpu_s_per_gb"] is not None
            },
            "CPU s / GB",
        )
        floor_lines(ax, {n: e["gateway_cpu_s_per_gb"] for n, e in floors.get("7", {}).items()})
        ax.set_title("7. gateway CPU per GB streamed", fontsize=9)
    for ax in panels:
        ax.axis("off")
    fig.suptitle(
        f"aistack-tts benchmarks {report['date']} - {report['machine']['nproc']} CPUs "
        f"({report['machine']['cpu']}), Python {report['machine']['python']}, Twisted "
        f"{report['machine']['twisted']}, nginx {report['machine'].get('nginx') or 'absent'}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"


def versions() -> dict[str, Any]:
    info: dict[str, Any] = {}
    binary = nginx_binary()
    if binary is not None:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True)
        info["nginx"] = (done.stderr or done.stdout).strip().rsplit("/", 1)[-1]
    else:
        info["nginx"] = None
    if shutil.which("wrk"):
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        found = re.search(r"\d+\.\d+(\.\d+)?", done.stdout or done.stderr)
        info["wrk"] = f"wrk {found.group(0)}" if found else "wrk"
    else:
        info["wrk"] = None
    try:
        info["aistack_tts"] = importlib.metadata.version("aistack-tts")
    except importlib.metadata.PackageNotFoundError:
        info["aistack_tts"] = None
    try:
        info["matplotlib"] = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        info["matplotlib"] = None
    git = shutil.which("git")
    if git is not None:
        head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
        dirty = subprocess.run(
            [git, "-C", str(ROOT), "status", "--porcelain", "--", "src", "twisted"],
            capture_output=True,
            text=True,
        )
        info["git_head"] = head.stdout.decode().strip() or None
        info["src_uncommitted_files"] = len(dirty.stdout.splitlines())
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="e.g. 1,2 (7 runs with 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (default 5; quick 1)")
    parser.add_argument("--wrk-seconds", type=float, default=None, help="default 2 (quick 1)")
    parser.add_argument("--stream-mb", type=int, default=None, help="scenario 2 (default 200)")
    parser.add_argument("--ttfb-trials", type=int, default=None, help="scenario 3 (default 40)")
    parser.add_argument("--stall-mib", type=int, default=None, help="scenario 4 (default 500)")
    parser.add_argument("--stall-cap", type=float, default=20.0, help="longest stall watch (s)")
    parser.add_argument("--close-trials", type=int, default=None, help="scenario 5 (default 50)")
    parser.add_argument("--close-mib", type=int, default=128, help="scenario 5 response size")
    parser.add_argument("--burst", type=int, default=None, help="scenario 6 (default 200)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--nginx-buffer", default="64k", help="nginx proxy_buffer_size")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument(
        "--no-floors", action="store_true", help="leave out bench/floors.py's Twisted floors"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--results", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)

    quick = args.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    wanted = {part.strip() for part in args.scenarios.split(",") if part.strip()}
    unknown = wanted - {str(n) for n in range(1, 8)}
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from 1-7")
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    settings = Settings(
        repeat=pick(args.repeat, 5, 1),
        wrk_seconds=pick(args.wrk_seconds, 2.0, 1.0),
        stream_mb=pick(args.stream_mb, 200, 50),
        ttfb_trials=pick(args.ttfb_trials, 40, 5),
        stall_mib=pick(args.stall_mib, 500, 100),
        stall_cap=args.stall_cap,
        close_trials=pick(args.close_trials, 50, 5),
        close_mib=args.close_mib,
        burst=pick(args.burst, 200, 200),
        sequential_503=50 if not quick else 10,
        nginx_workers=args.nginx_workers,
        nginx_buffer=args.nginx_buffer,
        loadgen=loadgen,
        floors=not args.no_floors,
    )
    notes: list[str] = []
    names = list(CONTENDERS)
    if args.no_nginx:
        names.remove(NGINX)
        notes.append("nginx left out (--no-nginx)")
    elif nginx_binary() is None:
        names.remove(NGINX)
        notes.append("nginx is not installed here: its column is skipped (apt-get install nginx)")
    if loadgen == "python":
        why = "--loadgen python" if args.loadgen == "python" else "wrk is not installed"
        notes.append(f"{why}: scenario 1 used the harness's own load generator, not wrk")
    notes.append(
        f"aistack-tts runs with --slots {GATEWAY_SLOTS} in scenarios 1-5 and 7 (also for one "
        "connection), so no request meets a 503; scenario 6 starts one with --slots 1"
    )
    notes.append(
        "logging as deployed: aistack-tts writes twist's default one JSON line per request "
        "(stdout is a file, as in the Dockerfile), twisted.web.proxy one text line, nginx its "
        f"access log; nginx: {settings.nginx_workers} worker, proxy_buffer_size "
        f"{settings.nginx_buffer}"
    )

    today = datetime.date.today().isoformat()
    stem = f"{today}-quick" if quick else today
    report: dict[str, Any] = {
        "date": today,
        "machine": machine() | versions(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings": vars(settings),
        "scenarios": sorted(wanted),
        "contenders": names,
        "notes": notes,
        "loadavg_start": loadavg(),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aistack-bench-") as tmp:
        bench = Bench(settings, Path(tmp), names)
        try:
            if "1" in wanted:
                bench.voices()
            if wanted & {"2", "7"}:
                bench.throughput()
                if "2" not in wanted:
                    bench.results.pop("2")
                if "7" not in wanted:
                    bench.results.pop("7")
            if "3" in wanted:
                bench.first_bytes()
            if "5" in wanted:
                bench.disconnects()
            for contender in bench.contenders.values():
                contender.stop()
            bench.contenders.clear()
            if "4" in wanted:
                bench.stalls()
            if "6" in wanted:
                bench.busy()
        finally:
            bench.stop()
    report["loadavg_end"] = loadavg()
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["results"] = bench.results
    rows, targets = build(bench.results, names)
    report["targets"] = [vars(t) for t in targets]
    table = render(rows, names)
    m = report["machine"]
    heading = [
        f"aistack-tts benchmarks, {today}{' (--quick)' if quick else ''}",
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['kernel']}, Python {m['python']}, "
        f"Twisted {m['twisted']}, nginx {m['nginx'] or 'absent'}, {m['wrk'] or 'no wrk'}",
        f"command: {report['command']}",
        f"took {report['duration_s']:.0f} s; load average {report['loadavg_start']} at the "
        f"start, {report['loadavg_end']} at the end",
    ]
    text = "\n".join([*heading, *(f"note: {n}" for n in notes), "", table])
    if targets:
        passed = sum(t.passed for t in targets)
        text += f"\n\naistack-tts meets {passed} of {len(targets)} targets"
        missed = [t for t in targets if not t.passed]
        for t in missed:
            text += f"\n  missed: scenario {t.scenario}, {t.target}: {t.value}"
    if floors := render_floors(bench.results):
        text += f"\n\n{floors}"
    report["table"] = text
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    print(chart(report, args.results / f"{stem}.png"))


if __name__ == "__main__":
    main()
