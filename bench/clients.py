"""The clients: raw-socket requests, ``wrk`` and the harness's own load generator.

No HTTP library: each client writes the request bytes and reads the answer with ``recv`` (or
``recv_into`` a reused buffer), so that what is measured is the contender, not the client.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from bench.common import MiB
from bench.stall_and_disconnect import percentile

SPEECH_BODY = json.dumps(
    {
        "model": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice",
        "voice": "vivian",
        "input": "The gateway streams audio as it is made.",
        "response_format": "pcm",
        "stream": True,
    }
).encode()


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

    As ``testbed.clients.open_stream`` does: its receive buffer is fixed before it
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


# Load generators (scenario 1) and the burst (scenario 6)


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
