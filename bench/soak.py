"""Soak: many requests through a real gateway process, with upstream faults and client aborts.

    python -m bench.soak [--requests 10000] [--concurrency 4] [--seed 1] [--json PATH]

Starts ``testbed/upstream_server.py`` (with connection events) and ``twist aistack-tts
--idle-timeout 0.3`` in front of it, both on 127.0.0.1, then sends ``--requests`` requests
from ``--concurrency`` concurrent raw-socket clients. Each request is drawn (from ``--seed``)
as an upstream behaviour (healthy most of the time; else one of the faults of
``tests/real_sockets/test_faults.py``: reset before headers, reset mid-body, hang before
headers, hang mid-body, bytes that are not HTTP, a 500 with a body, close after headers,
Content-Length with fewer bytes) and a client behaviour (reads; aborts before headers; aborts
mid-body with a reset; closes mid-body; reads slowly). With one GPU slot and several clients,
some requests find the slot taken and get ``503 gpu_busy``. (An upstream that refuses
connections needs another upstream address: the fault-matrix tests cover it.)

Every response is checked against what its fault allows (an envelope, the upstream's 500
verbatim, or, after the gateway committed to a 200, a connection that is not ended cleanly);
anything else is a violation. Then, with nothing in flight, it reports:

- slot leaks: ``--leak-check`` (20) sequential healthy requests must all get their 200; one
  ``503 gpu_busy`` among them means the slot was not given back;
- the gateway's open file descriptors (``/proc/<pid>/fd``) at rest, before and after: no growth;
- its RSS at rest, before and after: at most 10 MiB growth;
- upstream connections still open (the upstream reports each CONNECTED and DISCONNECTED): 0.

"At rest" is after a warm-up (or the run) once the gateway holds no connection but its
listening socket (idle pooled upstream connections expire after 4 s). Prints a report, writes
it as JSON with ``--json``, and exits 1 if any property fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shlex
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.processes import AISTACK_TTS, LISTEN, GatewayProcess, UpstreamProcess, tcp_sockets

MiB = 1024 * 1024
IDLE_TIMEOUT = 0.3
RSS_LIMIT = 10 * MiB
#: A client gives up on a request after this long (a hang is cut by the gateway in 0.3 s).
CLIENT_PATIENCE = 10.0
#: Upstream behaviours, with weights and the outcomes a reading client may see.
BUSY = "503 gpu_busy"
TRUNCATED = "200 truncated, then reset"
NO_ANSWER = "no answer, reset"
LEFT = "client left"
FAULTS: dict[str, tuple[float, frozenset[str]]] = {
    "healthy": (62, frozenset({"200 whole", BUSY})),
    "500_with_body": (8, frozenset({"500 verbatim", BUSY})),
    "reset_before_headers": (4, frozenset({"502 upstream_error", BUSY})),
    "not_http": (4, frozenset({"502 upstream_error", BUSY})),
    "close_after_headers": (4, frozenset({NO_ANSWER, TRUNCATED, BUSY})),
    "short_content_length": (5, frozenset({TRUNCATED, NO_ANSWER, BUSY})),
    "reset_mid_body": (5, frozenset({TRUNCATED, NO_ANSWER, BUSY})),
    "hang_before_headers": (0.5, frozenset({"504 upstream_timeout", BUSY})),
    "hang_mid_body": (0.5, frozenset({TRUNCATED, NO_ANSWER, BUSY})),
}
CLIENTS: dict[str, float] = {
    "reads": 82,
    "aborts_before_headers": 5,
    "aborts_mid_body": 5,
    "closes_mid_body": 4,
    "reads_slowly": 4,
}


@dataclass(frozen=True)
class Plan:
    """One request: what the upstream does and what the client does."""

    n: int
    fault: str
    client: str
    request: bytes
    #: aborts_before_headers: how long after sending the client leaves.
    leave_after: float


def _query(fault: str, client: str, rng: random.Random) -> tuple[bytes, bytes]:
    """The method and target for ``fault``; mid-body leavers get a long, paced body to leave."""
    size = rng.randrange(1024, 64 * 1024)
    length = "&length=1" if rng.random() < 0.5 else ""
    paced = client in ("aborts_mid_body", "closes_mid_body")
    stream = f"bytes={256 * 1024}&chunk=8192&rate=4000000" if paced else f"bytes={size}"
    # Mid-body faults strike after 16 KiB, paced so that the headers and the first chunks
    # have left the upstream before (an abort discards what is still in its send buffer).
    broken = "bytes=262144&chunk=4096&rate=8000000"
    mid = 16384
    if fault == "healthy":
        if not paced and rng.random() < 0.3:
            return b"POST", b"/v1/audio/echo"
        query = f"{stream}{length}"
    elif fault == "500_with_body":
        query = f"status=500&length=1&{stream}"
    elif fault == "reset_before_headers":
        query = "reset_before_headers=1"
    elif fault == "not_http":
        query = "garbage=1"
    elif fault == "close_after_headers":
        query = "close_after_headers=1"
    elif fault == "short_content_length":
        query = f"{broken}&length=1&short={mid}"
    elif fault == "reset_mid_body":
        query = f"{broken}&reset={mid}"
    elif fault == "hang_before_headers":
        query = "delay=30"
    elif fault == "hang_mid_body":
        query = f"{broken}&hang={mid}"
    else:
        raise ValueError(fault)
    return b"POST", b"/v1/audio/stream?" + query.encode()


def plans(count: int, seed: int, start: int = 0) -> list[Plan]:
    """``count`` requests drawn from ``seed``."""
    rng = random.Random(seed)
    fault_names = list(FAULTS)
    fault_weights = [FAULTS[f][0] for f in fault_names]
    client_names = list(CLIENTS)
    client_weights = list(CLIENTS.values())
    out = []
    for n in range(start, start + count):
        fault = rng.choices(fault_names, fault_weights)[0]
        client = rng.choices(client_names, client_weights)[0]
        method, target = _query(fault, client, rng)
        body = json.dumps({"input": "soak", "n": n}).encode()
        request = (
            method + b" " + target + b" HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        out.append(Plan(n, fault, client, request, rng.uniform(0, 0.003)))
    return out


# One request, over a raw socket.


def _dechunk_complete(data: bytes) -> bool:
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return False
        try:
            size = int(data[pos:eol].split(b";")[0], 16)
        except ValueError:
            return False
        start = eol + 2
        if size == 0:
            return data.startswith(b"\r\n", start)
        if len(data) < start + size + 2:
            return False
        pos = start + size + 2


def classify(raw: bytes, ended: str) -> str:
    """What a reading client got: ``ended`` is ``eof``, ``reset`` or ``left``."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        if ended == "left":
            return LEFT
        return NO_ANSWER if ended == "reset" and not raw else f"unparseable ({ended})"
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        complete = _dechunk_complete(rest)
    elif b"content-length" in headers:
        complete = len(rest) >= int(headers[b"content-length"])
    else:
        complete = ended == "eof"
    if not complete:
        if ended == "left":
            return LEFT
        if status == 200 and ended == "reset":
            return TRUNCATED
        return f"{status} incomplete, {ended}"  # a violation whatever the fault
    if headers.get(b"content-type") == b"application/json" and status >= 400 and status != 500:
        try:
            kind = json.loads(rest)["error"]["type"]
        except (ValueError, KeyError, TypeError):
            kind = "not-an-envelope"
        return f"{status} {kind}"
    if status == 500:
        return "500 verbatim" if headers.get(b"x-upstream-error") == b"yes" else "500 other"
    return f"{status} whole"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Leave with a reset (RST), not a close."""
    if writer.transport.is_closing():
        return  # the gateway closed it first
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):  # already gone: there is nothing left to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def run_one(port: int, plan: Plan) -> str:
    """Send ``plan``'s request and behave as its client; return the outcome."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = bytearray()
    ended = "eof"
    try:
        writer.write(plan.request)
        if plan.client == "aborts_before_headers":
            await asyncio.sleep(plan.leave_after)
            _reset(writer)
            return LEFT
        while True:
            try:
                data = await reader.read(8192 if plan.client == "reads_slowly" else 65536)
            except (ConnectionResetError, BrokenPipeError):
                ended = "reset"
                break
            if not data:
                break
            raw += data
            head_end = raw.find(b"\r\n\r\n")
            leaving = plan.client in ("aborts_mid_body", "closes_mid_body")
            # Leave once some body is in, unless the response is already whole.
            if leaving and 0 <= head_end < len(raw) - 4 and classify(bytes(raw), "left") == LEFT:
                if plan.client == "aborts_mid_body":
                    _reset(writer)
                else:
                    writer.close()
                ended = "left"
                break
            if plan.client == "reads_slowly":
                await asyncio.sleep(0.005)
    finally:
        if not writer.transport.is_closing():
            writer.close()
    return classify(bytes(raw), ended)


# The gateway process, and what /proc says about it.


def start_gateway(upstream_port: int, workdir: Path) -> tuple[GatewayProcess, str]:
    """``twist aistack-tts`` with a short idle timeout on an ephemeral port, and its command.

    No queue (``--queue-timeout 0``): a busy GPU is a 503 at once, one of the outcomes the
    soak checks is reached and allowed (with the default queue, calls would wait instead).
    """
    options = ["--idle-timeout", str(IDLE_TIMEOUT), "--queue-timeout", "0"]
    gateway = GatewayProcess.start(AISTACK_TTS, upstream_port, workdir, options=options)
    return gateway, shlex.join(gateway.command)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def busy_sockets(pid: int) -> int:
    """TCP sockets of ``pid`` that are not listening (client and upstream connections)."""
    return sum(1 for state, _ in tcp_sockets(pid) if state != LISTEN)


def wait_at_rest(pid: int, timeout: float = 15) -> float:
    """Wait until the gateway holds no connection; return how long that took."""
    start = time.monotonic()
    while busy_sockets(pid):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"the gateway still holds {busy_sockets(pid)} connection(s)")
        time.sleep(0.1)
    return time.monotonic() - start


# The run.


async def run_all(port: int, todo: list[Plan], concurrency: int) -> list[tuple[Plan, str]]:
    queue = collections.deque(todo)
    results: list[tuple[Plan, str]] = []
    pause = random.Random(len(todo))

    async def worker() -> None:
        while queue:
            plan = queue.popleft()
            try:
                outcome = await asyncio.wait_for(run_one(port, plan), CLIENT_PATIENCE)
            except TimeoutError:
                outcome = "client timed out"
            except OSError as e:
                outcome = f"client error {type(e).__name__}: {e}"
            results.append((plan, outcome))
            if outcome == BUSY:
                # As a client that honours Retry-After would, if a little less patiently.
                await asyncio.sleep(pause.uniform(0.005, 0.04))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def allowed(plan: Plan, outcome: str) -> bool:
    ok = FAULTS[plan.fault][1]
    if plan.client != "reads" and plan.client != "reads_slowly" and outcome == LEFT:
        return True
    return outcome in ok


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    upstream = UpstreamProcess.start(workdir, connection_events=True)
    gateway = None
    try:
        gateway, command = start_gateway(upstream.port, workdir)
        pid = gateway.pid
        warmup = plans(args.warmup, args.seed + 1_000_003, start=10**6)
        asyncio.run(run_all(gateway.port, warmup, args.concurrency))
        wait_at_rest(pid)
        fds_before, rss_before = fd_count(pid), gateway.rss()

        started = time.monotonic()
        results = asyncio.run(
            run_all(gateway.port, plans(args.requests, args.seed), args.concurrency)
        )
        duration = time.monotonic() - started

        # Nothing in flight: no client connection left, and every call's idle timeout passed.
        time.sleep(2 * IDLE_TIMEOUT)
        healthy = [
            Plan(
                -1,
                "healthy",
                "reads",
                b"GET /v1/audio/stream?bytes=4096 HTTP/1.1\r\nHost: soak.test\r\n"
                b"Connection: close\r\n\r\n",
                0,
            )
        ] * args.leak_check
        leak = asyncio.run(run_all(gateway.port, healthy, 1))
        leak_outcomes = collections.Counter(outcome for _, outcome in leak)
        settle = wait_at_rest(pid)
        fds_after, rss_after = fd_count(pid), gateway.rss()
        events = upstream.events()
        opened = {e.ident for e in events if e.kind == "CONNECTED"}
        closed = {e.ident for e in events if e.kind == "DISCONNECTED"}
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()

    by_outcome = collections.Counter(outcome for _, outcome in results)
    by_fault: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for plan, outcome in results:
        by_fault[plan.fault][outcome] += 1
    violations = [
        {"n": p.n, "fault": p.fault, "client": p.client, "outcome": o}
        for p, o in results
        if not allowed(p, o)
    ]
    report = {
        "requests": len(results),
        "concurrency": args.concurrency,
        "seed": args.seed,
        "duration_s": round(duration, 1),
        "gateway": command,
        "by_outcome": dict(by_outcome.most_common()),
        "by_client": dict(collections.Counter(p.client for p, _ in results).most_common()),
        "by_fault": {f: dict(c.most_common()) for f, c in by_fault.items()},
        "violations": len(violations),
        "violation_examples": violations[:10],
        "leak_check": dict(leak_outcomes),
        "slot_leaks": args.leak_check - leak_outcomes.get("200 whole", 0),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "upstream_connections_opened": len(opened),
        "upstream_connections_left_open": len(opened - closed),
        "settle_s": round(settle, 1),
    }
    report["passed"] = (
        report["violations"] == 0
        and report["slot_leaks"] == 0
        and leak_outcomes.get(BUSY, 0) == 0
        and fds_after <= fds_before
        and rss_after - rss_before <= RSS_LIMIT
        and report["upstream_connections_left_open"] == 0
    )
    return report


def render(report: dict[str, Any]) -> str:
    n = report["requests"]
    lines = [
        f"aistack-tts soak: {n} requests, concurrency {report['concurrency']}, "
        f"seed {report['seed']}, {report['duration_s']} s "
        f"({n / max(report['duration_s'], 0.001):.0f} requests/s)",
        f"gateway: {report['gateway']}",
        "",
        "requests by outcome:",
    ]
    lines += [f"  {name:<28}{count:>7}" for name, count in report["by_outcome"].items()]
    lines += ["", "requests by upstream behaviour:"]
    for fault, outcomes in sorted(report["by_fault"].items(), key=lambda kv: -sum(kv[1].values())):
        detail = ", ".join(f"{o} {c}" for o, c in outcomes.items())
        lines.append(f"  {fault:<22}{sum(outcomes.values()):>6}  ({detail})")
    lines += ["", "requests by client behaviour:"]
    lines += [f"  {name:<28}{count:>7}" for name, count in report["by_client"].items()]
    leak = ", ".join(f"{c} x {o}" for o, c in report["leak_check"].items())
    rss_growth = (report["rss_after"] - report["rss_before"]) / MiB
    lines += [
        "",
        f"violations (outcome not allowed for its fault): {report['violations']}",
        f"slot leaks: {report['slot_leaks']}  "
        f"({sum(report['leak_check'].values())} sequential requests after the run: {leak})",
        f"gateway open fds at rest: {report['fds_before']} before, {report['fds_after']} after",
        f"gateway RSS at rest: {report['rss_before'] / MiB:.1f} MiB before, "
        f"{report['rss_after'] / MiB:.1f} MiB after ({rss_growth:+.1f} MiB; limit +10 MiB)",
        f"upstream connections: {report['upstream_connections_opened']} opened, "
        f"{report['upstream_connections_left_open']} left open",
        "PASS" if report["passed"] else "FAIL",
    ]
    for example in report["violation_examples"]:
        lines.append(f"  violation: {example}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=300, help="requests before the baseline")
    parser.add_argument("--leak-check", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aistack-soak-") as workdir:
        report = soak(args, Path(workdir))
    print(render(report), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
