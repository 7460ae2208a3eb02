"""Configuration and ``twist aistack-tts`` options: one clear line for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import aistack_tts
from aistack_tts import ConfigError, GatewayConfig
from aistack_tts._options import Options


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"upstream": "localhost:8091"}, "http://HOST:PORT"),
        ({"upstream": "ftp://x"}, "http://HOST:PORT"),
        ({"upstream": "http://x:99999"}, "not a valid URL"),
        ({"upstream": "http://x/?a=1"}, "query"),
        ({"upstream": "http://127.0.0.1:8091/v1"}, "give the server's origin only"),
        ({"upstream": "http://127.0.0.1:8091/v1/"}, "e.g. http://127.0.0.1:8091 "),
        ({"connect_timeout": -1}, "connect-timeout"),
        ({"idle_timeout": 0}, "idle-timeout"),
        ({"idle_timeout": float("nan")}, "idle-timeout"),
        ({"max_body": -5}, "max-body"),
        ({"slots": 0}, "slots"),
        ({"listen": ()}, "listen"),
        ({"client_timeout": 0}, "client-timeout"),
        ({"keepalive_timeout": -1}, "keepalive-timeout"),
        ({"max_connections": 0}, "max-connections"),
    ],
)
def test_bad_config_fails_with_one_line(kwargs: dict[str, object], fragment: str) -> None:
    """Bad values fail at construction with one clear line."""
    with pytest.raises(ConfigError) as info:
        GatewayConfig(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_options_precedence_command_line_over_environment() -> None:
    """Each option comes from the command line, else its environment variable, else default."""
    env = {
        "AISTACK_TTS_UPSTREAM": "http://10.0.0.5:8091",
        "AISTACK_TTS_SLOTS": "2",
        "AISTACK_TTS_LISTEN": "tcp:1 tcp:2",
        "AISTACK_TTS_MAX_BODY": "100",
        "AISTACK_TTS_CLIENT_TIMEOUT": "12",
        "AISTACK_TTS_KEEPALIVE_TIMEOUT": "9",
    }
    options = Options(environ=env)
    argv = ["--slots", "3", "--idle-timeout", "7.5", "--keepalive-timeout", "4"]
    argv += ["--max-connections", "300"]
    options.parseOptions(argv)  # type: ignore[no-untyped-call]
    config = options.config
    assert config.upstream == ("http://10.0.0.5:8091",)
    assert config.slots == 3
    assert config.idle_timeout == 7.5
    assert config.listen == ("tcp:1", "tcp:2")
    assert config.max_body == 100
    assert config.connect_timeout == 5.0
    assert (config.client_timeout, config.keepalive_timeout) == (12.0, 4.0)
    assert config.max_connections == 300
    assert not config.demo


def test_options_repeatable_listen() -> None:
    """--listen may repeat; the command line replaces the environment's list."""
    options = Options(environ={"AISTACK_TTS_LISTEN": "tcp:9"})
    options.parseOptions(["--listen", "tcp:1", "--listen", "unix:/tmp/s"])  # type: ignore[no-untyped-call]
    assert options.config.listen == ("tcp:1", "unix:/tmp/s")


def test_options_defaults() -> None:
    """With nothing set, the contract's defaults."""
    options = Options(environ={})
    options.parseOptions([])  # type: ignore[no-untyped-call]
    assert options.config == GatewayConfig()
    assert options.config.listen == ("tcp:8000:interface=127.0.0.1",)
    assert options.config.max_body == 26214400
    assert (options.config.client_timeout, options.config.keepalive_timeout) == (60.0, None)


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--slots", "many"], {}, "--slots: 'many' is not a valid int"),
        ([], {"AISTACK_TTS_IDLE_TIMEOUT": "soon"}, "AISTACK_TTS_IDLE_TIMEOUT: 'soon'"),
        (["--upstream", "nope"], {}, "upstream URL 'nope'"),
    ],
)
def test_bad_option_exits_with_one_line(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value ends the program with one line on stderr and a non-zero status."""
    with pytest.raises(SystemExit) as info:
        Options(environ=env).parseOptions(argv)  # type: ignore[no-untyped-call]
    assert info.value.code == 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert fragment in err


def test_public_names_are_reexported() -> None:
    """Everything in __all__ is importable from the package."""
    for name in aistack_tts.__all__:
        assert hasattr(aistack_tts, name)


def test_version_is_the_gateways(capsys: pytest.CaptureFixture[str]) -> None:
    """``twist aistack-tts --version``: the gateway's version, then Twisted's; status 0."""
    from twisted.copyright import version as twisted_version

    with pytest.raises(SystemExit) as info:
        Options(environ={}).parseOptions(["--version"])  # type: ignore[no-untyped-call]
    assert info.value.code == 0
    assert capsys.readouterr().out == (
        f"aistack-tts {aistack_tts.__version__}\nTwisted {twisted_version}\n"
    )


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [
        (["--demo", "--upstream", "http://10.0.0.5:8091"], {}, "--upstream"),
        (["--demo"], {"AISTACK_TTS_UPSTREAM": "http://10.0.0.5:8091"}, "AISTACK_TTS_UPSTREAM"),
    ],
)
def test_demo_with_an_upstream_is_refused(
    argv: list[str], env: dict[str, str], source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--demo`` runs its own upstream: one given too (option or environment) is refused with
    one line and status 64, rather than silently ignored."""
    with pytest.raises(SystemExit) as info:
        Options(environ=env).parseOptions(argv)  # type: ignore[no-untyped-call]
    assert info.value.code == 64
    err = capsys.readouterr().err
    assert err == f"aistack-tts: error: --demo runs its own upstream: leave out {source}" + (
        " (or --demo, to use that one)\n"
    )


def test_demo_alone_and_an_upstream_alone_are_fine() -> None:
    for argv in (["--demo"], ["--upstream", "http://10.0.0.5:8091"]):
        Options(environ={}).parseOptions(argv)  # type: ignore[no-untyped-call]


def test_the_real_twist_prints_the_version_and_refuses_demo_with_an_upstream() -> None:
    """The same, from a real ``twist aistack-tts`` process (the environment's copy kept out)."""
    twist = str(Path(sys.executable).with_name("twist"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AISTACK_TTS_")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [twist, "aistack-tts", *argv], capture_output=True, text=True, env=env, timeout=60
        )

    version = run("--version")
    assert (version.returncode, version.stdout.split("\n")[0]) == (0, "aistack-tts 0.1.0")
    refused = run("--demo", "--upstream", "http://127.0.0.1:8091", "--listen", "tcp:0")
    assert refused.returncode == 64
    assert refused.stderr.startswith("aistack-tts: error: --demo runs its own upstream")
    assert refused.stderr.count("\n") == 1
