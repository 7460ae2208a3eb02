"""README.rst's quick start, run for real: `twist aistack-tts --demo`, then its curl command."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.processes import start_demo_gateway, stop_process

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.rst").read_text()

pytestmark = pytest.mark.real_sockets


def literal_blocks() -> list[str]:
    """The ``::`` literal blocks of README.rst, dedented, continuation lines joined."""
    blocks = []
    for match in re.finditer(r"::\n\n((?:    .*\n|\n)+)", README):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip().replace("\\\n", " "))
    return blocks


def quick_start() -> tuple[str, str]:
    run = next(b for b in literal_blocks() if "twist aistack-tts --demo" in b)
    curl = next(b for b in literal_blocks() if b.startswith("curl") and "/v1/audio/speech" in b)
    return run, curl


@pytest.fixture
def demo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The README's run command (its last step), on an ephemeral port instead of 8000."""
    run, _ = quick_start()
    twist_part = run.split("&&")[-1].strip()
    argv = shlex.split(twist_part)
    assert argv[0].endswith("twist")
    assert argv[1:] == ["aistack-tts", "--demo"]
    process, port = start_demo_gateway(tmp_path_factory.mktemp("readme") / "gateway.log")
    try:
        yield port
    finally:
        stop_process(process)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_quick_start_curl_returns_a_wav(demo_gateway: int, tmp_path: Path) -> None:
    """The README's curl command, against the README's run command, writes a 24 kHz WAV."""
    _, curl = quick_start()
    argv = shlex.split(curl.replace("127.0.0.1:8000", f"127.0.0.1:{demo_gateway}"))
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    output = tmp_path / argv[argv.index("-o") + 1]
    data = output.read_bytes()
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as audio:
        assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (24000, 1, 2)
        assert audio.getnframes() > 24000 * 0.5
