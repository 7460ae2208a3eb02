"""Issue 23, items 1-4, measured: aistack-tts beside nginx (with and without upstream keepalive)
and HAProxy, on the same scripted upstreams.

    .venv/bin/python -m bench.slot_integrity [--only N] [--json PATH] [--serial]

Everything runs on 127.0.0.1. For each scenario and contender the bench starts a fresh
scripted upstream (``bench/slot_integrity_upstreams.py``: a thread per connection, in this
process, on a port the kernel picks) and a fresh contender process in front of it:

- ``aistack-tts``: ``twist aistack-tts --listen tcp:0:interface=127.0.0.1 --upstream URL
  --idle-timeout T`` (one slot, the default);
- ``nginx keepalive``: ``proxy_pass`` to an ``upstream`` block with ``keepalive 16``,
  HTTP/1.1 and ``Connection: ""`` upstream; ``nginx no keepalive``: the same without
  ``keepalive`` (nginx then sends ``Connection: close``). Both with ``proxy_buffering off``,
  ``proxy_request_buffering off`` (streamed both ways, as the gateway does),
  ``proxy_read_timeout``, ``proxy_send_timeout`` and ``send_timeout`` T, and the WebSocket
  location (``Upgrade``/``Connection: upgrade``) at ``/v1/audio/speech/stream``;
- ``HAProxy``: ``mode http``, ``timeout client``, ``server`` and ``tunnel`` T, defaults
  otherwise (``http-reuse safe``).

T is 5 s (the stall timeout) in scenarios 1, 3 and 4 and 60 s in scenario 2 (so that what is
measured there is the departure, not a timeout). nginx and HAProxy listen on a port picked at
random below the ephemeral range, another one tried when it is taken.

1. *An early answer poisons the pool*: the upstream answers a 3 MB (and a 20 MB) ``POST`` with
   ``200``, ``Content-Length`` and ``Connection: keep-alive`` as soon as its head is in (and,
   for 3 MB, also 0.3 s after it, by when the proxy has handed the whole body to its socket),
   never reads the body and keeps the connection open. The client sends the whole body it can
   (as ``requests`` does), reads the answer, and closes; then an unrelated ``GET``. Measured:
   the GET's status and time, how long the upstream connection of the upload stays open after
   the client left (bounded at 15 s), and the proxy's end of it at +2 s (``/proc/net/tcp``: its
   state and send queue; an orphan the kernel still flushes after ``close()`` counts).
2. *A client leaves while the upstream is not reading*: (a) a ``POST`` the upstream answers
   after 10 s, then ~1 MB of pipelined ``GET``s (the proxy stops reading the client), then a
   reset (``SO_LINGER`` 0); (b) a WebSocket the upstream accepts (101) and never reads, frames
   sent until the proxy takes no more, then a reset. Measured: how long the upstream connection
   stays open after the reset (bounded at 15 s); for aistack-tts, a second request at +0.5 s
   (503: the slot is still held).
3. *A client reading at audio speed*: the upstream streams 30 MB chunked as fast as it is
   taken; a client (32 KiB receive buffer) reads 48 KiB/s for 20 s: cut or not, when, bytes
   received. Then a client that reads the head and nothing more: when the proxy closes the
   upstream connection (the call ends), from its last read.
4. *POSTs on a connection the upstream is closing*: the upstream answers one request per
   connection with ``Connection: keep-alive`` and closes it 60 ms later, reading nothing more.
   50 small POSTs, each sent 0, 25, 50, 75 or 100 ms (in turn) after the previous answer: (a)
   on one client connection (a new one only where the proxy closed it), (b) each on a new
   client connection. Counted: failures (non-2xx, or the connection closed or reset with no
   answer).

Scenarios 1-3 run the four contenders at once (each its own upstream and process; ``--serial``:
one after another); scenario 4, which is a race, runs them one at a time. Prints one table
(stdout; progress on stderr) and, with ``--json``, writes the facts. Every process started is
stopped at the end (and on SIGTERM, SIGINT or the run's own 8-minute alarm).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import pwd
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.slot_integrity_upstreams import (
    KEEP_ALIVE_SECONDS,
    UPLOAD,
    Conn,
    Script,
    ScriptedUpstream,
    content_length,
    early_answer,
    proc_tcp,
    quick,
    scripted_upstream,
    short_keep_alive,
    slow_answer,
    stream,
    switch_and_hold,
)
from testbed.processes import ROOT, aistack_command, listening_ports, stop_process

AISTACK = "aistack-tts"
NGINX_KEEPALIVE = "nginx keepalive"
NGINX_PLAIN = "nginx no keepalive"
HAPROXY = "HAProxy"
CONTENDERS = (AISTACK, NGINX_KEEPALIVE, NGINX_PLAIN, HAPROXY)

KiB = 1024
MB = 1000 * 1000
#: The stall timeout of scenarios 1, 3 and 4; scenario 2's (long: the departure is measured).
STALL = 5.0
LONG = 60.0
#: How long scenario 1 watches the upload's upstream connection, scenario 2 the departed one.
EARLY_BOUND = 15.0
GONE_BOUND = 15.0
#: Scenario 3.
READ_RATE = 48 * KiB
READ_SECONDS = 20.0
NON_READER_BOUND = 15.0
#: Scenario 4.
POSTS = 50
PAUSES = (0.0, 0.025, 0.05, 0.075, 0.1)
#: The whole run's alarm.
WATCHDOG_SECONDS = 480


def log(message: str) -> None:
    sys.stderr.write(f"[slot_integrity {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# Processes: every one started is registered the moment it exists, and stopped at the end.


class Processes:
    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def spawn(self, command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}
        with log_path.open("wb") as out, self._lock:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # a ^C in the terminal reaches this process only
            )
            self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process, grace=5)

    def stop_all(self) -> None:
        with self._lock:
            started = list(self._started)
        for process in started:
            with contextlib.suppress(OSError):
                stop_process(process, grace=5)


PROCESSES = Processes()


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path


def wait_listening(
    process: subprocess.Popen[bytes], port: int | None, workers: int = 0, timeout: float = 20
) -> int | None:
    """The port ``process`` listens on (``port`` if given) once it does and has ``workers``
    children; None if it exited first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return None
        with contextlib.suppress(OSError):
            ports = listening_ports(process.pid)
            if (port in ports if port is not None else ports) and (
                workers == 0 or len(child_pids(process.pid)) >= workers
            ):
                return port if port is not None else min(ports)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.args!r} did not listen in {timeout:.0f} s")
        time.sleep(0.02)


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def config_port() -> int:
    """A port for a config file: at random below the kernel's ephemeral range (so no client
    socket of this run takes it meanwhile); the caller tries another if it is taken."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return random.randrange(max(1024, low - 12000), low)


def in_use(log_path: Path, *others: Path) -> bool:
    text = "".join(p.read_text(errors="replace") for p in (log_path, *others) if p.exists())
    return "Address already in use" in text


NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    client_max_body_size 64m;
    upstream tts {{
        server 127.0.0.1:{upstream};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout {timeout}s;
        proxy_send_timeout {timeout}s;
        send_timeout {timeout}s;
        location /v1/audio/speech/stream {{
            proxy_pass http://tts;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
        location / {{
            proxy_pass http://tts;
            {connection}
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client {timeout}s
    timeout server {timeout}s
    timeout tunnel {timeout}s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server up 127.0.0.1:{upstream}
"""


def binary(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


def start_contender(name: str, upstream_port: int, workdir: Path, timeout: float) -> Running:
    directory = Path(tempfile.mkdtemp(prefix=name.replace(" ", "-") + "-", dir=workdir))
    log_path = directory / "output.log"
    if name == AISTACK:
        command = aistack_command(
            f"http://127.0.0.1:{upstream_port}",
            *("--idle-timeout", f"{timeout:g}", "--drain-timeout", "1", "--queue-timeout", "0"),
        )
        process = PROCESSES.spawn(command, log_path)
        port = wait_listening(process, None)
        if port is None:
            raise RuntimeError(f"{name} exited: {log_path.read_text(errors='replace')}")
        return Running(name, port, process, log_path)
    for _ in range(20):
        port = config_port()
        conf = directory / "proxy.conf"
        if name == HAPROXY:
            conf.write_text(
                HAPROXY_CONF.format(timeout=f"{timeout:g}", port=port, upstream=upstream_port)
            )
            command = [binary("haproxy"), "-db", "-f", str(conf)]
            workers = 0
        else:
            keepalive = name == NGINX_KEEPALIVE
            # As root, the workers would otherwise switch to "nobody": keep them this user.
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
            conf.write_text(
                NGINX_CONF.format(
                    user=user,
                    dir=directory,
                    upstream=upstream_port,
                    keepalive="keepalive 16;" if keepalive else "",
                    port=port,
                    timeout=f"{timeout:g}",
                    connection='proxy_set_header Connection "";' if keepalive else "",
                )
            )
            command = [binary("nginx"), "-e", str(directory / "error.log"), "-p", str(directory)]
            command += ["-c", str(conf), "-g", "daemon off;"]
            workers = 1
        process = PROCESSES.spawn(command, log_path)
        if wait_listening(process, port, workers) is not None:
            return Running(name, port, process, log_path)
        if not in_use(log_path, directory / "error.log"):
            raise RuntimeError(f"{name} exited: {log_path.read_text(errors='replace')}")
    raise RuntimeError(f"{name}: no free port found in 20 tries")


@contextlib.contextmanager
def setup(
    name: str, script: Script, workdir: Path, timeout: float
) -> Iterator[tuple[ScriptedUpstream, Running]]:
    """A fresh scripted upstream and, in front of it, a fresh ``name``; both stopped after."""
    with scripted_upstream(script) as upstream:
        proxy = start_contender(name, upstream.port, workdir, timeout)
        try:
            yield upstream, proxy
        finally:
            PROCESSES.stop(proxy.process)


# Raw-socket clients.


def connect(port: int, timeout: float = 5, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a reset (``SO_LINGER`` 0), as a client that crashed or was killed."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: gw",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


GET_VOICES = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
QUICK = post(b"/v1/audio/speech", b"{}", b"X-Quick: 1")
HANDSHAKE = (
    b"GET /v1/audio/speech/stream HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def chunked_end(buf: bytes, start: int) -> int | None:
    """Where a chunked body starting at ``start`` ends (after its trailer), if it is whole."""
    at = start
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buf[at:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer = buf.find(b"\r\n\r\n", line_end)
            if buf[line_end : line_end + 4] == b"\r\n\r\n":
                return line_end + 4
            return None if trailer < 0 else trailer + 4
        at = line_end + 2 + size + 2
        if at > len(buf):
            return None


def response_end(buf: bytes) -> tuple[int, bytes, int | None] | None:
    """``(status, head, end)`` once ``buf`` holds a response head; ``end`` is where the whole
    response ends (None: not yet, or it is delimited by the close)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end]
    status = int(head.split(b" ", 2)[1])
    start = head_end + 4
    lower = head.lower()
    if 100 <= status < 200 or status in (204, 304):
        return status, head, start
    if b"\r\ntransfer-encoding: chunked" in lower:
        return status, head, chunked_end(buf, start)
    if b"\r\ncontent-length:" in lower:
        end = start + content_length(head + b"\r\n")
        return status, head, end if len(buf) >= end else None
    return status, head, None


class Reader:
    """Reads whole responses, one after another, from one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def response(self, timeout: float) -> tuple[int, bytes]:
        """The next response's status and head; raises on a close, a reset or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = response_end(self.buffer)
            if found is not None and found[2] is not None:
                self.buffer = self.buffer[found[2] :]
                return found[0], found[1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole response in {timeout:g} s")
            self.sock.settimeout(left)
            more = self.sock.recv(65536)
            if not more:
                if found is not None:  # delimited by the close
                    self.buffer = b""
                    return found[0], found[1]
                raise ConnectionError("closed before a response")
            self.buffer += more


def timed_call(port: int, raw: bytes, timeout: float) -> dict[str, Any]:
    """One request on a fresh connection: status (or the error) and seconds to the answer."""
    started = time.monotonic()
    try:
        with connect(port, timeout) as sock:
            sock.sendall(raw)
            status, _ = Reader(sock).response(timeout)
            return {"status": status, "seconds": time.monotonic() - started}
    except (OSError, ConnectionError) as error:
        return {
            "status": None,
            "error": type(error).__name__,
            "seconds": time.monotonic() - started,
        }


def gone_after(conn: Conn | None, since: float, bound: float) -> float | None:
    """Seconds from ``since`` until the upstream saw ``conn`` closed; None if not in ``bound``."""
    if conn is None:
        return None
    conn.closed.wait(max(0.0, since + bound - time.monotonic()))
    if conn.closed_at is None or conn.closed_at - since > bound:
        return None
    return conn.closed_at - since  # < 0: closed before ``since``


# 1. An early answer poisons the pool.


def upload(port: int, size: int, limit: float = 10) -> dict[str, Any]:
    """A ``POST`` of ``size`` bytes sent whole (as far as it goes) while its answer is read;
    returned once answered and sent, or stuck for 1 s after the answer, then closed."""
    head = b"POST /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n"
    head += b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
    data = memoryview(head + b"v" * size)
    sock = connect(port)
    sock.setblocking(False)
    started = last_progress = time.monotonic()
    sent = 0
    answer = b""
    found: tuple[int, bytes, int | None] | None = None
    error = None
    answered_at = started
    while time.monotonic() < started + limit:
        answered = found is not None and found[2] is not None
        if answered and (sent == len(data) or time.monotonic() - last_progress > 1.0):
            break
        want = [sock] if sent < len(data) else []
        readable, writable, _ = select.select([] if answered else [sock], want, [], 0.05)
        try:
            if writable:
                sent += sock.send(data[sent : sent + (1 << 20)])
                last_progress = time.monotonic()
            if readable:
                more = sock.recv(65536)
                if not more:
                    error = "closed"
                    break
                answer += more
                found = response_end(answer)
                if found is not None and found[2] is not None:
                    answered_at = time.monotonic()
        except BlockingIOError:
            continue
        except OSError as exc:
            error = type(exc).__name__
            break
    sock.close()
    closed = time.monotonic()
    result: dict[str, Any] = {
        "status": found[0] if found else None,
        "body_sent": max(0, sent - len(head)),
        "closed_at": closed,
        "error": error,
    }
    if found is not None and found[2] is not None:
        result["seconds"] = answered_at - started
    return result


def early_answer_trial(name: str, workdir: Path, size: int, delay: float) -> dict[str, Any]:
    with setup(name, early_answer(delay), workdir, STALL) as (upstream, proxy):
        posted = upload(proxy.port, size)
        left = posted.pop("closed_at")
        got: dict[str, Any] = {}
        getter = threading.Thread(
            target=lambda: got.update(timed_call(proxy.port, GET_VOICES, 12)), daemon=True
        )
        getter.start()
        early = upstream.first(lambda c: bool(c.heads) and content_length(c.heads[0]) > UPLOAD, 0.5)
        time.sleep(max(0.0, left + 2 - time.monotonic()))
        at_2s = early.proxy_side() if early is not None else None
        unread = early.unread() if early is not None else 0
        held = gone_after(early, left, EARLY_BOUND)
        getter.join(15)
        reached = any(
            h.startswith(b"GET /v1/audio/voices") for c in upstream.conns for h in c.heads
        )
        return {
            "post": posted,
            "get": got,
            "get_reached_upstream": reached,
            "upstream_closed_after_s": held,
            "proxy_socket_at_2s": None if at_2s is None else vars(at_2s),
            "upstream_unread_at_2s": unread,
            "upstream_connections": len(upstream.conns),
        }


# 2. A client leaves while the upstream is not reading.


def send_until_stuck(
    sock: socket.socket, data: bytes, total: int, stuck: float, limit: float
) -> int:
    """Send ``data`` over and over (non-blocking) until ``total`` bytes went, or nothing was
    taken for ``stuck`` s, or ``limit`` s passed; the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(data)
    started = time.monotonic()
    since: float | None = None
    while sent < total and time.monotonic() - started < limit:
        try:
            n = sock.send(view)
        except BlockingIOError:
            since = since or time.monotonic()
            if time.monotonic() - since >= stuck:
                break
            time.sleep(0.01)
            continue
        since = None
        sent += n
        view = view[n:] or memoryview(data)
    return sent


def probe_slot(name: str, port: int, left: float) -> dict[str, Any] | None:
    """aistack-tts only: a quick call 0.5 s after the client left (503: slot still held)."""
    if name != AISTACK:
        return None
    time.sleep(max(0.0, left + 0.5 - time.monotonic()))
    return timed_call(port, QUICK, 5)


def pipelined_reset_trial(name: str, workdir: Path) -> dict[str, Any]:
    with setup(name, slow_answer, workdir, LONG) as (upstream, proxy):
        sock = connect(proxy.port)
        sock.sendall(post(b"/v1/audio/speech", b'{"input": "a long text"}'))
        call = upstream.first(lambda c: any(not quick(h) for h in c.heads), 5)
        if call is None:
            reset(sock)
            return {"error": "the call never reached the upstream"}
        pipelined = send_until_stuck(sock, GET_VOICES * 1000, MB, stuck=0.3, limit=5)
        time.sleep(0.3)
        left = time.monotonic()
        reset(sock)
        probe = probe_slot(name, proxy.port, left)
        held = gone_after(call, left, GONE_BOUND)
        return {
            "pipelined_bytes": pipelined,
            "upstream_closed_after_s": held,
            "upstream_answered_after_s": call.answered[0] - left if call.answered else None,
            "slot_probe": probe,
        }


def masked_frame(size: int) -> bytes:
    """A masked binary frame of ``size`` zero bytes (mask 0: the payload is unchanged)."""
    return b"\x82\xff" + struct.pack(">Q", size) + b"\0\0\0\0" + b"\0" * size


def websocket_reset_trial(name: str, workdir: Path) -> dict[str, Any]:
    with setup(name, switch_and_hold, workdir, LONG) as (upstream, proxy):
        sock = connect(proxy.port)
        sock.sendall(HANDSHAKE)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                more = sock.recv(4096)
                if not more:
                    break
                head += more
        except OSError as error:
            reset(sock)
            return {"error": f"handshake: {type(error).__name__}"}
        status = int(head.split(b" ", 2)[1]) if b" " in head else None
        if status != 101:
            reset(sock)
            return {"status": status}
        sent = send_until_stuck(sock, masked_frame(65536), 256 * MB, stuck=0.5, limit=10)
        left = time.monotonic()
        reset(sock)
        probe = probe_slot(name, proxy.port, left)
        tunnel = upstream.first(
            lambda c: any(b"upgrade: websocket" in h.lower() for h in c.heads), 0
        )
        held = gone_after(tunnel, left, GONE_BOUND)
        return {
            "status": status,
            "frame_bytes_sent": sent,
            "upstream_closed_after_s": held,
            "slot_probe": probe,
        }


# 3. A client reading at audio speed; one reading nothing.

SPEECH = b"GET /v1/audio/speech HTTP/1.1\r\nHost: gw\r\n\r\n"


def steady_reader_trial(name: str, workdir: Path) -> dict[str, Any]:
    with setup(name, stream, workdir, STALL) as (upstream, proxy):
        sock = connect(proxy.port, rcvbuf=32 * KiB)
        sock.sendall(SPEECH)
        started = time.monotonic()
        received = 0
        cut: float | None = None
        how = None
        first = b""
        sock.settimeout(1)
        while time.monotonic() - started < READ_SECONDS:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError as error:
                cut, how = time.monotonic() - started, type(error).__name__
                break
            if not data:
                cut, how = time.monotonic() - started, "closed"
                break
            if len(first) < 64:
                first += data
            received += len(data)
            ahead = received / READ_RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        sock.close()
        conn = upstream.conns[0] if upstream.conns else None
        closed = None
        if conn is not None and conn.closed_at is not None:
            closed = conn.closed_at - started
        return {
            "status": int(first.split(b" ", 2)[1]) if first.count(b" ") >= 2 else None,
            "cut_after_s": cut,
            "cut_how": how,
            "bytes_received": received,
            "read_for_s": READ_SECONDS if cut is None else cut,
            "upstream_closed_after_s": closed if closed is None or closed < READ_SECONDS else None,
        }


def non_reader_trial(name: str, workdir: Path) -> dict[str, Any]:
    with setup(name, stream, workdir, STALL) as (upstream, proxy):
        sock = connect(proxy.port, rcvbuf=32 * KiB)
        sock.sendall(SPEECH)
        first = sock.recv(4096)
        last_read = time.monotonic()
        conn = upstream.first(lambda c: bool(c.heads), 5)
        cut = gone_after(conn, last_read, NON_READER_BOUND)
        client_side = proc_tcp(sock.getsockname()[1], proxy.port)
        sock.close()
        return {
            "status": int(first.split(b" ", 2)[1]) if first.count(b" ") >= 2 else None,
            "upstream_closed_after_s": cut,
            "client_socket_at_end": None if client_side is None else client_side.state,
            "upstream_streamed_bytes": conn.streamed if conn is not None else 0,
        }


# 4. POSTs on a connection the upstream is closing.


def closing_keep_alive_trial(name: str, workdir: Path, fresh: bool) -> dict[str, Any]:
    """50 POSTs, on one client connection (a new one only where the proxy closed it) or, with
    ``fresh``, each on a new client connection."""
    with setup(name, short_keep_alive, workdir, STALL) as (upstream, proxy):
        outcomes: list[dict[str, Any]] = []
        reader: Reader | None = None
        for i in range(POSTS):
            pause = PAUSES[i % len(PAUSES)]
            time.sleep(pause)
            if reader is not None and (fresh or proxy_closed(reader.sock)):
                reader.sock.close()
                reader = None
            current = reader = reader or Reader(connect(proxy.port))
            outcome: dict[str, Any] = {"pause_ms": round(pause * 1000)}
            try:
                current.sock.sendall(post(b"/v1/audio/speech", b'{"n": %d}' % i))
                status, head = current.response(5)
                outcome["status"] = status
                if b"\r\nconnection: close" in head.lower():
                    current.sock.close()
                    reader = None
            except (OSError, ConnectionError) as error:
                outcome["status"] = None
                outcome["error"] = type(error).__name__
                current.sock.close()
                reader = None
            outcomes.append(outcome)
        if reader is not None:
            reader.sock.close()
        failed = [o for o in outcomes if not (o["status"] and 200 <= o["status"] < 300)]
        by_pause = {
            f"{round(p * 1000)} ms": sum(1 for o in failed if o["pause_ms"] == round(p * 1000))
            for p in PAUSES
        }
        return {
            "failed": len(failed),
            "of": POSTS,
            "failed_by_pause": by_pause,
            "failures": failed,
            "upstream_connections": len(upstream.conns),
        }


def proxy_closed(sock: socket.socket) -> bool:
    """Whether the proxy closed this idle client connection (then a new one is opened; not a
    failure)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


# The run.

Trial = Callable[[str, Path], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    number: int
    key: str
    title: str
    trial: Trial
    parallel: bool = True


SCENARIOS = (
    Scenario(
        1,
        "1_early_answer_3MB",
        "1. 3 MB upload, answered at its head",
        lambda n, w: early_answer_trial(n, w, 3 * MB, 0.0),
    ),
    Scenario(
        1,
        "1_early_answer_3MB_after_0.3s",
        "1. 3 MB upload, answered 0.3 s after its head",
        lambda n, w: early_answer_trial(n, w, 3 * MB, 0.3),
    ),
    Scenario(
        1,
        "1_early_answer_20MB",
        "1. 20 MB upload, answered at its head",
        lambda n, w: early_answer_trial(n, w, 20 * MB, 0.0),
    ),
    Scenario(2, "2a_pipelined_reset", "2a. reset behind pipelined bytes", pipelined_reset_trial),
    Scenario(2, "2b_websocket_reset", "2b. WebSocket reset", websocket_reset_trial),
    Scenario(3, "3_steady_reader", "3. 48 KiB/s reader", steady_reader_trial),
    Scenario(3, "3_non_reader", "3. non-reader", non_reader_trial),
    Scenario(
        4,
        "4a_closing_keep_alive",
        "4a. 50 POSTs on one client connection",
        lambda n, w: closing_keep_alive_trial(n, w, fresh=False),
        parallel=False,
    ),
    Scenario(
        4,
        "4b_closing_keep_alive_fresh",
        "4b. 50 POSTs, a new client connection each",
        lambda n, w: closing_keep_alive_trial(n, w, fresh=True),
        parallel=False,
    ),
)


def guarded(trial: Trial, name: str, workdir: Path, into: dict[str, Any]) -> None:
    try:
        into[name] = trial(name, workdir)
    except Exception as error:
        into[name] = {"error": f"{type(error).__name__}: {error}"}


def run_scenario(scenario: Scenario, workdir: Path, serial: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if serial or not scenario.parallel:
        for name in CONTENDERS:
            guarded(scenario.trial, name, workdir, results)
        return results
    threads = [
        threading.Thread(target=guarded, args=(scenario.trial, name, workdir, results), daemon=True)
        for name in CONTENDERS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name in CONTENDERS:
        results.setdefault(name, {"error": "did not finish in 120 s"})
    return results


# The table.


def seconds(value: float | None, bound: float) -> str:
    if value is None:
        return f"> {bound:g} s"
    if value < 0:
        return f"{-value * 1000:.0f} ms before"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def status_cell(result: dict[str, Any]) -> str:
    if result.get("status") is None:
        return f"{result.get('error') or 'no answer'} after {result.get('seconds', 0):.1f} s"
    return f"{result['status']} in {result['seconds']:.2f} s"


def socket_cell(state: dict[str, Any] | None) -> str:
    if state is None:
        return "gone"
    return f"{state['state']}, send-q {state['tx_queue'] / MB:.2f} MB"


def answered(after: float | None) -> str:
    return "" if after is None else f"; answered the gone client at +{after:.1f} s"


def probe_cell(probe: dict[str, Any] | None) -> str:
    return "n/a (no slot)" if probe is None else str(probe.get("status") or probe.get("error"))


def rows_of(
    key: str, title: str, by: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, str]]]:
    def cells(render: Callable[[dict[str, Any]], str]) -> dict[str, str]:
        out = {}
        for name in CONTENDERS:
            result = by.get(name, {})
            if "error" in result and len(result) == 1:
                out[name] = "error: " + str(result["error"])[:40]
            else:
                try:
                    out[name] = render(result)
                except (KeyError, TypeError, ValueError) as error:
                    out[name] = f"? {type(error).__name__}"
        return out

    if key.startswith("1_"):
        rows = [
            (
                f"{title}: POST",
                cells(
                    lambda r: (
                        status_cell(r["post"]) + f", {r['post']['body_sent'] / MB:.1f} MB sent"
                    )
                ),
            ),
            (
                f"{title}: next GET",
                cells(
                    lambda r: (
                        status_cell(r["get"])
                        + ("" if r["get_reached_upstream"] else " (never reached upstream)")
                    )
                ),
            ),
            (
                f"{title}: its upstream conn closed, after client left",
                cells(lambda r: seconds(r["upstream_closed_after_s"], EARLY_BOUND)),
            ),
        ]
        rows.append(
            (
                f"{title}: proxy's socket to upstream at +2 s",
                cells(lambda r: socket_cell(r["proxy_socket_at_2s"])),
            )
        )
        return rows
    if key.startswith("2"):
        what = "pipelined" if key.startswith("2a") else "frames"
        field = "pipelined_bytes" if key.startswith("2a") else "frame_bytes_sent"
        return [
            (
                f"{title}: upstream conn closed, after reset",
                cells(
                    lambda r: (
                        seconds(r["upstream_closed_after_s"], GONE_BOUND)
                        + f" ({r[field] / MB:.1f} MB {what} sent"
                        + answered(r.get("upstream_answered_after_s"))
                        + ")"
                    )
                ),
            ),
            (
                f"{title}: a call at +0.5 s (503: slot held)",
                cells(lambda r: probe_cell(r["slot_probe"])),
            ),
        ]
    if key == "3_steady_reader":
        return [
            (
                f"{title} for {READ_SECONDS:g} s: cut?",
                cells(
                    lambda r: (
                        (
                            "not cut"
                            if r["cut_after_s"] is None
                            else f"cut at {r['cut_after_s']:.1f} s ({r['cut_how']})"
                        )
                        + f", {r['bytes_received'] / KiB:.0f} KiB read"
                    )
                ),
            )
        ]
    if key == "3_non_reader":
        return [
            (
                f"{title}: upstream conn closed, after last read",
                cells(lambda r: seconds(r["upstream_closed_after_s"], NON_READER_BOUND)),
            )
        ]
    return [
        (f"{title}: failed (non-2xx or no answer)", cells(lambda r: f"{r['failed']} / {r['of']}"))
    ]


def render(rows: list[tuple[str, dict[str, str]]]) -> str:
    header = ("scenario", *CONTENDERS)
    table = [header, *((label, *(cells[n] for n in CONTENDERS)) for label, cells in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for k, line in enumerate(table):
        lines.append(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def versions() -> dict[str, str]:
    def out(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except OSError as error:
            return str(error)
        return (
            (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""
        )

    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT
    ).stdout.count("\n")
    return {
        "git_head": out(["git", "rev-parse", "HEAD"]),
        "src_files_changed_in_work_tree": str(dirty),
        "nginx": out([binary("nginx"), "-v"]),
        "haproxy": out([binary("haproxy"), "-v"]),
        "python": sys.version.split()[0],
    }


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, choices=(1, 2, 3, 4), help="run one scenario")
    parser.add_argument("--json", type=Path, help="write the facts here")
    parser.add_argument(
        "--serial", action="store_true", help="one contender at a time in every scenario"
    )
    parser.add_argument(
        "--keep", type=Path, help="keep the contenders' configs and logs in this directory"
    )
    args = parser.parse_args()
    for name in ("nginx", "haproxy"):
        binary(name)
    atexit.register(PROCESSES.stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(WATCHDOG_SECONDS)
    started = time.monotonic()
    results: dict[str, Any] = {}
    rows: list[tuple[str, dict[str, str]]] = []
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slot-")))
        try:
            for scenario in SCENARIOS:
                if args.only is not None and scenario.number != args.only:
                    continue
                log(f"{scenario.title} ...")
                t0 = time.monotonic()
                results[scenario.key] = run_scenario(scenario, workdir, args.serial)
                log(f"{scenario.title}: {time.monotonic() - t0:.1f} s")
                rows += rows_of(scenario.key, scenario.title, results[scenario.key])
        finally:
            PROCESSES.stop_all()
    signal.alarm(0)
    elapsed = time.monotonic() - started
    print(render(rows))
    print(f"\n({elapsed:.0f} s; stall timeout {STALL:g} s in 1, 3, 4; {LONG:g} s in 2)")
    if args.json is not None:
        report = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": [sys.executable, "-m", "bench.slot_integrity", *sys.argv[1:]],
            "seconds": round(elapsed, 1),
            "versions": versions(),
            "settings": {
                "stall_timeout_s": STALL,
                "scenario_2_timeout_s": LONG,
                "keep_alive_close_s": KEEP_ALIVE_SECONDS,
                "pauses_s": PAUSES,
                "read_rate_bytes_s": READ_RATE,
            },
            "results": results,
            "table": [{"scenario": label, **cells} for label, cells in rows],
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
