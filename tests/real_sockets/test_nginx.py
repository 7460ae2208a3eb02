"""Scale-out: deploy/nginx.conf in front of two gateways, each with its own demo GPU.

Real processes on loopback: nginx (from the shipped config, hosts and ports swapped for local
ones), two `twist aistack-tts` gateways and two `twist aistack-tts-demo-upstream` servers.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.processes import inherited_listener, stop_process, wait_listening

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
#: About 4 s of audio: at the demo's pace (rtf 0.5) about 2 s of generation.
TEXT = "Scale out across machines, one gateway per GPU, with nginx in front of them all."

LISTEN = "tcp:0:interface=127.0.0.1"

pytestmark = [
    pytest.mark.real_sockets,
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed"),
]


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path
    #: Where it listens (it was told port 0; read back from ``/proc``).
    port: int = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start(argv: list[str], log: Path, started: list[Process]) -> Process:
    """Start ``argv`` listening on port 0, registered in ``started`` (for clean-up) at once."""
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    process = Process(popen, log)
    started.append(process)
    try:
        process.port = wait_listening(popen, " ".join(argv[1:3]))
    except (RuntimeError, TimeoutError) as e:
        raise AssertionError(f"{e}: {log.read_text()}") from None
    return process


def nginx_config(gateway_ports: list[int], port: int, workdir: Path) -> str:
    """The shipped deploy/nginx.conf with local gateways, port and log paths."""
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=0;\n" for p in gateway_ports)
    config, n = re.subn(r"(        server gpu-host-\d:8000 max_fails=0;\n)+", servers, config)
    assert n == 1
    config = config.replace("listen 80;", f"listen 127.0.0.1:{port};")
    config = config.replace("/var/log/nginx/aistack-tts.access.log", str(workdir / "access.log"))
    return config


@dataclass
class Cluster:
    nginx_port: int
    gateways: list[Process]
    demos: list[Process]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    twist = str(Path(sys.executable).with_name("twist"))
    processes: list[Process] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        demos, gateways = [], []
        for i in range(2):
            # debug: the demo logs each speech request as it starts generating.
            demo = start(
                [twist, "--log-level=debug", "aistack-tts-demo-upstream", "--listen", LISTEN],
                tmp_path / f"demo{i}.log",
                processes,
            )
            demos.append(demo)
            gateways.append(
                start(
                    [
                        twist,
                        "aistack-tts",
                        "--listen",
                        LISTEN,
                        "--upstream",
                        f"http://127.0.0.1:{demo.port}",
                        # As deploy/nginx.conf says: a busy GPU answers at once, so nginx
                        # tries the next gateway.
                        "--queue-timeout",
                        "0",
                    ],
                    tmp_path / f"gateway{i}.log",
                    processes,
                )
            )
        # nginx cannot listen on port 0 and say where: it inherits a socket that does.
        listener = inherited_listener()
        nginx_port = listener.getsockname()[1]
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_config([g.port for g in gateways], nginx_port, tmp_path))
        nginx = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(tmp_path),
                "-c",
                str(conf),
                "-g",
                f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NGINX": f"{listener.fileno()};"},
            pass_fds=(listener.fileno(),),
        )
        listener.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", nginx_port), timeout=1).close()
                break
            except OSError:
                assert nginx.poll() is None, (tmp_path / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.02)
        yield Cluster(nginx_port, gateways, demos)
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            stop_process(nginx)
        for process in processes:
            stop_process(process.popen)


def speak(port: int, results: list[tuple[int, dict[str, str], bytes]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"model": MODEL, "voice": "Vivian", "input": TEXT})
    conn.request("POST", "/v1/audio/speech", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    results.append((response.status, dict(response.getheaders()), data))
    conn.close()


def served(gateway: Process) -> int:
    """How many speech calls this gateway completed, from its JSON access log."""
    count = 0
    for line in gateway.text().splitlines():
        if '"aistack_tts.access"' in line:
            event = json.loads(line)
            if event["path"] == "/v1/audio/speech" and event["outcome"] == "ok":
                count += 1
    return count


def test_two_gpus_serve_two_requests_and_a_third_gets_the_envelope(cluster: Cluster) -> None:
    """Two concurrent calls go to the two GPUs; a third, with both busy, gets the 503 envelope."""
    results: list[tuple[int, dict[str, str], bytes]] = []
    first = [threading.Thread(target=speak, args=(cluster.nginx_port, results)) for _ in range(2)]
    for thread in first:
        thread.start()
    # Wait until both gateways hold their slot (each demo has started generating).
    deadline = time.monotonic() + 10
    while not all("speech request" in d.text() for d in cluster.demos):
        assert time.monotonic() < deadline, "the two calls did not reach both GPUs"
        time.sleep(0.02)
    third: list[tuple[int, dict[str, str], bytes]] = []
    speak(cluster.nginx_port, third)
    for thread in first:
        thread.join(30)
    [(status, headers, body)] = third
    assert status == 503
    error = json.loads(body)["error"]
    assert (error["type"], error["provider"]) == ("gpu_busy", "aistack")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert sorted(r[0] for r in results) == [200, 200]
    assert all(r[2][:4] == b"RIFF" for r in results)
    # The gateway sends the last bytes before it logs the call: its line may come a moment later.
    deadline = time.monotonic() + 5
    while [served(g) for g in cluster.gateways] != [1, 1] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [served(g) for g in cluster.gateways] == [1, 1]


def test_client_disconnect_at_nginx_aborts_generation(cluster: Cluster) -> None:
    """A client that leaves nginx mid-stream makes the demo upstream stop generating."""
    request = json.dumps(
        {
            "model": MODEL,
            "voice": "Ryan",
            "input": TEXT * 4,
            "stream": True,
            "response_format": "pcm",
        }
    ).encode()
    with socket.create_connection(("127.0.0.1", cluster.nginx_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: tts\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(request), request)
        )
        data = b""
        while len(data) < 20000:
            more = sock.recv(65536)
            assert more
            data += more
        assert data.startswith(b"HTTP/1.1 200 ")
    deadline = time.monotonic() + 5
    while not any("speech generation aborted" in d.text() for d in cluster.demos):
        assert time.monotonic() < deadline, "no demo upstream saw the client leave"
        time.sleep(0.02)
