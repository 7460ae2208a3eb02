"""Hostile clients beside an honest one: what they cost the honest client, on a real gateway.

    python -m bench.edges [--seconds 4] [-- GATEWAY OPTIONS...]

``twist aistack-tts`` (a real process) in front of ``testbed/upstream_server.py``; two rounds,
each with one honest client sending ``GET /healthz`` every 50 ms and timing it:

1. *chunk floods*: four clients each send chunked request bodies of one-byte chunks
   (``1\\r\\nx\\r\\n`` over and over, 6 MB a connection), reconnecting when cut.
2. *slowloris*: 300 clients each send a request head one byte every 0.25 s; the round
   reports how many of them the gateway still holds at its end.

Run it against another checkout's gateway with ``PYTHONPATH=OTHER/src`` (the ``twist``
plugin is found the same way), to compare before and after. Prints one line per round.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testbed.clients import read_to_close
from testbed.processes import GatewayProcess, UpstreamProcess

FLOOD = b"1\r\nx\r\n" * 20_000
CHUNKED_HEAD = b"POST /v1/audio/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"


def honest(port: int, seconds: float) -> list[float]:
    """``GET /healthz`` every 50 ms for ``seconds``; each answer's time in ms."""
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            read_to_close(sock)
        times.append((time.monotonic() - started) * 1000)
        time.sleep(0.05)
    return times


def chunk_flood(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(CHUNKED_HEAD)
            for _ in range(50):
                if stop.is_set():
                    break
                sock.sendall(FLOOD)


def slowloris(port: int, stop: threading.Event, held: list[int]) -> None:
    socks = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    while not stop.is_set():
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"X")
        time.sleep(0.25)
    alive = 0
    for sock in socks:
        # Held: nothing to read. An answer (the 408), an EOF or a reset: let go.
        try:
            sock.recv(65536)
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        sock.close()
    held.append(alive)


def round_(port: int, seconds: float, attacks: list[Callable[[threading.Event], None]]) -> str:
    """Run ``attacks`` while the honest client measures; its times, summed up."""
    stop = threading.Event()
    threads = [threading.Thread(target=attack, args=(stop,), daemon=True) for attack in attacks]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    times = honest(port, seconds)
    stop.set()
    for thread in threads:
        thread.join(30)
    return f"/healthz median {statistics.median(times):.1f} ms, max {max(times):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("options", nargs="*", help="options for twist aistack-tts")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aistack-edges-"))
    upstream = UpstreamProcess.start(workdir)
    port = int(upstream.url.rsplit(":", 1)[1])
    gateway = GatewayProcess.start("aistack-tts", port, workdir, options=args.options)
    try:
        flood = round_(gateway.port, args.seconds, [lambda s: chunk_flood(gateway.port, s)] * 4)
        print(f"4 one-byte-chunk floods: {flood}")
        held: list[int] = []
        slow = round_(gateway.port, args.seconds, [lambda s: slowloris(gateway.port, s, held)])
        print(f"300 slowloris clients: {slow}; still held at the end: {held[0]} of 300")
    finally:
        gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
