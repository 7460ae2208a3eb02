"""Issue 23 item 5, measured: the gateway, nginx (with and without upstream keepalive) and HAProxy.

    python -m bench.channel_rules [--json PATH]

Starts ``testbed/upstream_server.py``, then in front of it on 127.0.0.1: ``twist aistack-tts``
(``--client-timeout 3 --max-body 100000``), nginx twice and HAProxy, each set up alike: the same
3 s client timeouts, a 100,000-byte body limit (nginx's ``client_max_body_size``; HAProxy has
none for a streamed body) and one GPU slot in the proxy's own way (nginx: ``limit_conn`` 1 per
client address, every client here being 127.0.0.1, with ``limit_conn_status 503``; HAProxy:
``maxconn 1`` on the server, ``timeout queue 100ms``). Each input goes over a raw socket; the
table says what the client got (and what reached the upstream, or what the proxy logged). It
runs for about half a minute, then stops everything. With ``PYTHONPATH=<other checkout>/src``
the gateway is that checkout's.

The inputs: ``Connection: keep-alive,close``; a folded ``Content-Length`` whose body is a
second request; chunk sizes ``ffffffffffffffffffff`` and ``fffff`` (over the body limit: the
size line alone, then with 10 bytes of the chunk); ``Expect: 100-continue`` while a slow call
holds the slot; an upload of 30,000 of 100,000 declared bytes, then a close.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import nginx_binary
from testbed.processes import GatewayProcess, UpstreamProcess, listening_ports, stop_process

HAPROXY = "/usr/sbin/haproxy"
MAX_BODY = 100_000
CLIENT_TIMEOUT = 3
#: How long a client waits for what should come at once (the client timeouts are 3 s).
PATIENCE = CLIENT_TIMEOUT + 3.0

NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format rules '$status $request_length $bytes_sent "$request"';
    access_log {dir}/access.log rules;
    client_max_body_size {max_body};
    client_header_timeout {timeout}s;
    client_body_timeout {timeout}s;
    limit_conn_zone $binary_remote_addr zone=gpu:1m;
    limit_conn_status 503;
    upstream tts {{
        server 127.0.0.1:{upstream};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_conn gpu 1;
            proxy_pass http://tts;
            {http11}
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    log stdout format raw local0 info
defaults
    mode http
    log global
    log-format "%ST %ts uploaded=%U %{{+Q}}r"
    timeout connect 5s
    timeout client {timeout}s
    timeout http-request {timeout}s
    timeout server 30s
    timeout queue 100ms
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server up 127.0.0.1:{upstream} maxconn 1
"""


@dataclass
class Proxy:
    """One contender: its name, port, process and where its log of requests is."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _listen_with_retry(
    name: str, start: Callable[[int], subprocess.Popen[bytes]], errors: Callable[[], str]
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start a server on a random port until it listens; another port if that one is taken.

    nginx and HAProxy cannot listen on port 0 and say which they got, and a port bound and
    released to learn a free one could be taken again before they bind it.
    """
    for _ in range(20):
        port = random.randint(20_000, 60_999)
        process = start(port)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            if port in listening_ports(process.pid):
                return port, process
            time.sleep(0.02)
        stop_process(process)
        if "in use" not in errors():
            raise RuntimeError(f"{name} did not start: {errors()[-2000:]}")
    raise RuntimeError(f"{name}: no free port in 20 tries")


def start_nginx(workdir: Path, upstream: int, keepalive: bool) -> Proxy:
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed"
    directory = workdir / ("nginx-keepalive" if keepalive else "nginx")
    directory.mkdir()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    error_log = directory / "error.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        conf = directory / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                user=user,
                dir=directory,
                max_body=MAX_BODY,
                timeout=CLIENT_TIMEOUT,
                upstream=upstream,
                port=port,
                keepalive="keepalive 16;" if keepalive else "",
                http11=(
                    'proxy_http_version 1.1; proxy_set_header Connection "";' if keepalive else ""
                ),
            )
        )
        command = [binary, "-e", str(error_log), "-p", str(directory), "-c", str(conf)]
        return subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def errors() -> str:
        return error_log.read_text(errors="replace") if error_log.exists() else ""

    port, process = _listen_with_retry("nginx", start, errors)
    name = "nginx (keepalive)" if keepalive else "nginx (no keepalive)"
    return Proxy(name, port, process, directory / "access.log")


def start_haproxy(workdir: Path, upstream: int) -> Proxy:
    directory = workdir / "haproxy"
    directory.mkdir()
    log = directory / "haproxy.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        conf = directory / "haproxy.cfg"
        conf.write_text(HAPROXY_CONF.format(timeout=CLIENT_TIMEOUT, port=port, upstream=upstream))
        with log.open("ab") as out:
            return subprocess.Popen(
                [HAPROXY, "-db", "-f", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    port, process = _listen_with_retry("HAProxy", start, lambda: log.read_text(errors="replace"))
    return Proxy("HAProxy", port, process, log)


# The client side.


@dataclass
class Got:
    """What a client got: the bytes, whether the connection closed, and when (s after sending)."""

    data: bytes
    closed: bool
    first: float | None
    end: float

    def statuses(self) -> list[str]:
        return re.findall(r"HTTP/1\.[01] (\d{3})", self.data.decode("latin-1"))


def receive(sock: socket.socket, sent: float, within: float, stop_at_head: bool = False) -> Got:
    """Read until the peer closes, ``within`` s pass, or (``stop_at_head``) a head is in."""
    data, first = b"", None
    deadline = sent + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Got(data, True, first, time.monotonic() - sent)
        if not more:
            return Got(data, True, first, time.monotonic() - sent)
        first = time.monotonic() - sent if first is None else first
        data += more
        if stop_at_head and b"\r\n\r\n" in data:
            break
    return Got(data, False, first, time.monotonic() - sent)


@contextlib.contextmanager
def client(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        yield sock


def send(port: int, raw: bytes, within: float = PATIENCE) -> Got:
    with client(port) as sock:
        sock.sendall(raw)
        return receive(sock, time.monotonic(), within)


def describe(got: Got, timed: bool = False) -> str:
    statuses = got.statuses()
    text = " then ".join(statuses) if statuses else "no answer"
    if timed and got.first is not None:
        text += f" after {got.first:.2f} s"
    if not statuses:
        text += f", closed after {got.end:.2f} s" if got.closed else f" in {got.end:.0f} s"
    return text


# The five inputs.


def keep_alive_close(proxy: Proxy, tag: str, upstream: UpstreamProcess) -> str:
    got = send(
        proxy.port,
        b"GET /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\n"
        b"Connection: keep-alive,close\r\n\r\n" % tag.encode(),
        within=2.0,
    )
    closed = "closed after the response" if got.closed else "kept open (2 s)"
    return f"{describe(got)}, {closed}"


def folded_length(proxy: Proxy, tag: str, upstream: UpstreamProcess) -> str:
    smuggled = b"GET /v1/audio/echo?id=%s-smuggled HTTP/1.1\r\nHost: gw\r\n\r\n" % tag.encode()
    got = send(
        proxy.port,
        b"POST /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\nX-Pad: x\r\n"
        b" Content-Length: %d\r\n\r\n%s" % (tag.encode(), len(smuggled), smuggled),
        within=2.0,
    )
    time.sleep(0.2)
    reached = upstream.events(f"{tag}-smuggled")
    return describe(got) + (", the body reached the upstream as a request" if reached else "")


def chunk_size(size: bytes, data: bytes = b"") -> Callable[[Proxy, str, UpstreamProcess], str]:
    """The size line alone, or followed by ``data`` (the first bytes of the chunk)."""

    def measure(proxy: Proxy, tag: str, upstream: UpstreamProcess) -> str:
        got = send(
            proxy.port,
            b"POST /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n%s\r\n%s" % (tag.encode(), size, data),
        )
        return describe(got, timed=True)

    return measure


def expect_busy(proxy: Proxy, tag: str, upstream: UpstreamProcess) -> str:
    holder_id = f"{tag}-holder"
    with client(proxy.port) as holder:
        holder.sendall(
            b"GET /v1/audio/stream?id=%s&bytes=1000&delay=3 HTTP/1.1\r\nHost: gw\r\n\r\n"
            % holder_id.encode()
        )
        upstream.wait(holder_id, {"START"}, timeout=10)
        with client(proxy.port) as sock:
            sock.sendall(
                b"POST /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\nContent-Length: 50000\r\n"
                b"Expect: 100-continue\r\n\r\n" % tag.encode()
            )
            sent = time.monotonic()
            first = receive(sock, sent, 2.0, stop_at_head=True)
            text = describe(first, timed=True)
            if first.statuses()[:1] == ["100"]:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a" * 50_000)
                rest = receive(sock, sent, PATIENCE)
                text = f"100 Continue after {first.first or 0:.2f} s, body sent, then " + (
                    " then ".join(rest.statuses()) or "no answer"
                )
    upstream.wait(holder_id, {"CLOSED", "DONE"}, timeout=10)
    return text


def upload_cut(proxy: Proxy, tag: str, upstream: UpstreamProcess) -> str:
    with client(proxy.port) as sock:
        sock.sendall(
            b"POST /v1/audio/echo?id=%s HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\n"
            % tag.encode()
            + b"a" * 30_000
        )
        time.sleep(0.3)
    time.sleep(1.0)
    lines = [line for line in proxy.log_text().splitlines() if tag in line]
    if proxy.name == "aistack-tts":
        events = [json.loads(line) for line in lines if line.startswith("{")]
        access = [e for e in events if e.get("namespace") == "aistack_tts.access"]
        if not access:
            return "no access event"
        e = access[0]
        return f"logged: {e['outcome']}, status {e['status']}, bytes_in {e.get('bytes_in')}"
    return "logged: " + (" / ".join(line.strip() for line in lines) or "nothing")


INPUTS: list[tuple[str, Callable[[Proxy, str, UpstreamProcess], str]]] = [
    ("Connection: keep-alive,close", keep_alive_close),
    ("folded Content-Length, body a request", folded_length),
    ("chunk size ffffffffffffffffffff", chunk_size(b"ffffffffffffffffffff")),
    ("chunk size fffff (over the body limit), line alone", chunk_size(b"fffff")),
    ("chunk size fffff, then 10 bytes of it", chunk_size(b"fffff", b"a" * 10)),
    ("Expect: 100-continue, slot busy", expect_busy),
    ("upload cut at 30,000 of 100,000 bytes", upload_cut),
]


def start_all(workdir: Path, upstream: UpstreamProcess) -> tuple[list[Proxy], list[GatewayProcess]]:
    gateway = GatewayProcess.start(
        "aistack-tts",
        upstream.port,
        workdir,
        options=["--client-timeout", str(CLIENT_TIMEOUT), "--max-body", str(MAX_BODY)],
    )
    proxies = [Proxy("aistack-tts", gateway.port, gateway.process, gateway.log_path)]
    try:
        proxies.append(start_nginx(workdir, upstream.port, keepalive=True))
        proxies.append(start_nginx(workdir, upstream.port, keepalive=False))
        proxies.append(start_haproxy(workdir, upstream.port))
    except BaseException:
        stop(proxies[1:], [gateway])
        raise
    return proxies, [gateway]


def stop(proxies: list[Proxy], gateways: list[GatewayProcess]) -> None:
    for proxy in proxies:
        if proxy.name.startswith("nginx") and proxy.process.poll() is None:
            proxy.process.send_signal(signal.SIGQUIT)
        stop_process(proxy.process)
    for gateway in gateways:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the table here as JSON")
    args = parser.parse_args()
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="channel-rules-") as tmp:
        workdir = Path(tmp)
        upstream = UpstreamProcess.start(workdir)
        try:
            proxies, gateways = start_all(workdir, upstream)
            try:
                for i, (name, measure) in enumerate(INPUTS):
                    row = results.setdefault(name, {})
                    for j, proxy in enumerate(proxies):
                        row[proxy.name] = measure(proxy, f"in{i}-p{j}", upstream)
            finally:
                stop(proxies, gateways)
        finally:
            upstream.stop()
    for name, row in results.items():
        print(f"* {name}")
        for proxy_name, answer in row.items():
            print(f"    {proxy_name:22} {answer}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
