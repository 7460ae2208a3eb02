"""README.rst's embedding example, run for real: its ``asr_service.py`` beside the demo upstream.

The service's code is taken from the README as it stands (only its two addresses changed to
ephemeral ports), run with this interpreter, and driven as the README says: the shown curl
session must print what the README shows, the GPU slot must be shared as described, and a
``SIGTERM`` must drain and stop it.
"""

from __future__ import annotations

import http.client
import re
import shlex
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

from testbed.processes import stop_process, wait_listening

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()
TWIST = str(Path(sys.executable).with_name("twist"))

pytestmark = pytest.mark.real_sockets


def literal_blocks() -> list[str]:
    """The ``::`` literal blocks of README.rst, dedented."""
    return [
        "\n".join(line[4:] for line in match.group(1).splitlines()).strip("\n")
        for match in re.finditer(r"::\n\n((?:    .*\n|\n)+)", README)
    ]


def example() -> str:
    """The README's ``asr_service.py``."""
    return next(b for b in literal_blocks() if b.startswith('"""asr_service.py'))


def session() -> list[tuple[str, str]]:
    """The README's curl session: each ``$ command`` and the output shown below it."""
    block = next(b for b in literal_blocks() if b.startswith("$ curl") and "/asr" in b)
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [(command, "\n".join(out) + "\n") for command, out in steps]


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    cwd: Path

    def post(
        self, path: str, body: bytes = b"", timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if path.startswith("/v1/") else {}
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def slot_in_use(self) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        found = re.search(r"^aistack_tts_slot_in_use (\S+)$", text, re.M)
        assert found, text
        return float(found.group(1))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """The demo upstream, and the README's service in front of it (ports made ephemeral)."""
    demo = subprocess.Popen(
        [TWIST, "aistack-tts-demo-upstream", "--listen", "tcp:0:interface=127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process = None
    try:
        demo_port = wait_listening(demo, "the demo upstream")
        code = example()
        assert code.count('"http://127.0.0.1:8091"') == 1
        assert code.count('"tcp:8000:interface=127.0.0.1"') == 1
        code = code.replace('"http://127.0.0.1:8091"', f'"http://127.0.0.1:{demo_port}"')
        code = code.replace('"tcp:8000:', '"tcp:0:')
        (tmp_path / "asr_service.py").write_text(code)
        log = tmp_path / "service.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "asr_service.py"],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        port = wait_listening(process, "asr_service.py")
        yield Service(process, port, log, tmp_path)
    finally:
        if process is not None:
            stop_process(process)
        stop_process(demo)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_session_prints_what_the_readme_shows(service: Service) -> None:
    """Each curl command of the README's session prints the output shown under it."""
    steps = session()
    assert len(steps) >= 3
    for command, shown in steps:
        argv = shlex.split(command.replace("127.0.0.1:8000", f"127.0.0.1:{service.port}"))
        result = subprocess.run(argv, cwd=service.cwd, capture_output=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        # (a JSON body ends without a newline: the shell's prompt follows it on that line)
        assert result.stdout.decode().rstrip("\n") == shown.rstrip("\n"), command
    assert (service.cwd / "hello.wav").read_bytes()[:4] == b"RIFF"
    time.sleep(1.5)  # Twisted's access lines are written by the legacy log, a little later
    log = service.log.read_text()
    assert '"POST /asr HTTP/1.1" 200' in log
    assert "POST /v1/audio/speech -> 200 ok" in log


def test_the_gpu_slot_is_shared_as_the_readme_says(service: Service) -> None:
    """While /asr holds the GPU: /asr/now is 503 at once, a TTS call waits, then is served."""
    results: dict[str, tuple[float, int]] = {}

    def call(name: str, path: str, body: bytes) -> None:
        status, _, _ = service.post(path, body)
        results[name] = (time.monotonic(), status)

    speech = b'{"model": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "voice": "Vivian", "input": "Hi."}'
    asr = threading.Thread(target=call, args=("asr", "/asr", b"pretend audio"))
    asr.start()
    deadline = time.monotonic() + 5
    while service.slot_in_use() < 1:
        assert time.monotonic() < deadline, "/asr never took the slot"
        time.sleep(0.02)
    tts = threading.Thread(target=call, args=("tts", "/v1/audio/speech", speech))
    tts.start()
    began = time.monotonic()
    status, headers, body = service.post("/asr/now", b"x")
    assert (status, body) == (503, b"GPU busy, retry later\n")
    assert int(headers["Retry-After"]) >= 1
    assert time.monotonic() - began < 0.4  # at once, not after the 0.5 s ASR call
    asr.join(30)
    tts.join(30)
    assert results["asr"][1] == 200
    assert results["tts"][1] == 200
    assert results["tts"][0] > results["asr"][0]
    status, _, body = service.post("/asr/now", b"x")
    assert (status, body) == (200, b'{"text": "(1 bytes of audio)"}')


def test_the_body_limit_covers_the_services_own_route(service: Service) -> None:
    """An upload to /asr over --max-body (25 MiB) is refused before it is sent."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /asr HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % (26 * 1024 * 1024)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")


def test_sigterm_lets_the_call_under_way_finish_then_stops(service: Service) -> None:
    """SIGTERM runs the service's stop: the /asr under way gets its answer, then it exits 0."""
    results: list[int] = []
    asr = threading.Thread(target=lambda: results.append(service.post("/asr", b"ab")[0]))
    asr.start()
    deadline = time.monotonic() + 5
    while service.slot_in_use() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(10) == 0
    asr.join(10)
    assert results == [200]
    log = service.log.read_text()
    assert "Main loop terminated." in log
    assert "Traceback" not in log
