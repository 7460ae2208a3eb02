"""The ``twist aistack-tts`` plugin: lazy, listed, installable from a plain wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )


def test_plugin_import_is_lazy() -> None:
    """Listing plugins imports neither klein nor the reactor (twist picks the reactor later)."""
    code = (
        "import sys, twisted.plugins.aistack_tts_plugin as p;"
        "bad = [m for m in ('klein', 'twisted.internet.reactor', 'aistack_tts._service',"
        " 'aistack_tts_demo')"
        " if m in sys.modules];"
        "print(p.aistack_tts.tapname, bad)"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "aistack-tts []"


def test_twist_lists_and_describes_the_plugin() -> None:
    """`twist --help` lists aistack-tts; its --help shows every contract option."""
    listing = run(str(BIN / "twist"), "--help")
    assert "aistack-tts" in listing.stdout
    helptext = run(str(BIN / "twist"), "aistack-tts", "--help").stdout
    for option in (
        "--listen",
        "--upstream",
        "--connect-timeout",
        "--idle-timeout",
        "--max-body",
        "--slots",
        "--ws-idle-timeout",
        "--client-timeout",
        "--keepalive-timeout",
        "--max-connections",
        "--demo",
    ):
        assert option in helptext


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--listen", "tcp:notaport"], "--listen 'tcp:notaport' is not a valid endpoint"),
        (["--connect-timeout", "-3"], "connect-timeout must be a positive number"),
        (["--upstream", "127.0.0.1:8091"], "must look like http://HOST:PORT"),
        (["--upstream", "http://127.0.0.1:8091/v1"], "e.g. http://127.0.0.1:8091 (requests"),
        (["--client-timeout", "0"], "client-timeout must be a positive number"),
    ],
)
def test_bad_values_exit_with_one_line(argv: list[str], fragment: str) -> None:
    """`twist aistack-tts` with a bad value prints one clear line and exits non-zero."""
    result = run(str(BIN / "twist"), "aistack-tts", *argv, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_wheel_installs_plugin_in_fresh_venv(tmp_path: Path) -> None:
    """A plain (non-editable) `pip install` of the wheel makes `twist aistack-tts` available."""
    wheels = tmp_path / "wheels"
    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        str(wheels),
        str(ROOT),
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("aistack_tts-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/aistack_tts_plugin.py" in names
    assert "twisted/plugins/aistack_tts_demo_plugin.py" in names
    assert "aistack_tts/__init__.py" in names
    assert "aistack_tts_demo/__init__.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")]

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = run(
        str(python), "-m", "pip", "install", "-q", str(wheel), env=clean_env, timeout=600
    )
    assert installed.returncode == 0, installed.stderr
    # Run from a directory without the source tree, so only the installed copy can be found.
    twist = str(env_dir / "bin" / "twist")
    listing = run(twist, "--help", env=clean_env, cwd=tmp_path)
    assert "aistack-tts" in listing.stdout, listing.stdout + listing.stderr
    helptext = run(twist, "aistack-tts", "--help", env=clean_env, cwd=tmp_path)
    assert "--upstream" in helptext.stdout, helptext.stderr
    # A plain install leaves the demo extra out: the gateway runs, --demo says what to install.
    demo = run(twist, "aistack-tts", "--demo", "--listen", "tcp:0", env=clean_env, cwd=tmp_path)
    assert demo.returncode == 64, demo.stderr
    assert "the demo extra, e.g. pip install -e '.[demo]'" in demo.stderr
    assert demo.stderr.strip().count("\n") == 0, demo.stderr


def test_port_in_use_exits_with_one_line() -> None:
    """A --listen port that is taken stops the gateway at start with one line, not a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(
            str(BIN / "twist"),
            "aistack-tts",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            timeout=60,
        )
    assert result.returncode == 64
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
