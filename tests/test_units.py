"""Pure pieces, without a reactor: header filtering, target checks, slot estimate, config."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import DeferredSemaphore
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers

import aistack_tts
from aistack_tts import ConfigError, GatewayConfig, GPUSlot, InvalidRequest
from aistack_tts._errors import describe, error_for_upstream_failure
from aistack_tts._options import Options
from aistack_tts.call._slot import estimate_retry_after
from aistack_tts.server._listen import DEFAULT_BACKLOG, parse_endpoints
from aistack_tts.server._target import check_target
from aistack_tts.wire._http import end_to_end, upstream_request_headers

# Headers


def test_end_to_end_drops_hop_by_hop_and_connection_named() -> None:
    """Hop-by-hop names and those listed in Connection (any case, comma lists) are dropped."""
    h = Headers()
    for name, value in [
        (b"Connection", b"close, X-A"),
        (b"Connection", b"x-b"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-C", b"3"),
    ]:
        h.addRawHeader(name, value)
    assert list(end_to_end(h).getAllRawHeaders()) == [(b"X-C", [b"3"])]


def test_request_headers_lose_host_length_expect() -> None:
    """Host, Content-Length and Expect are the gateway's to set upstream."""
    h = Headers({b"Host": [b"gw"], b"Content-Length": [b"3"], b"Expect": [b"100-continue"]})
    h.addRawHeader(b"Authorization", b"Bearer x")
    assert dict(upstream_request_headers(h).getAllRawHeaders()) == {b"Authorization": [b"Bearer x"]}


# Request-target


@given(st.binary(max_size=60))
def test_check_target_never_lets_a_climb_out(suffix: bytes) -> None:
    """Whatever follows /v1/audio/, a forwarded target never resolves outside it."""
    from posixpath import normpath
    from urllib.parse import unquote_to_bytes

    target = b"/v1/audio/" + suffix
    try:
        check_target(target)
    except InvalidRequest:
        return
    path = unquote_to_bytes(target.split(b"?")[0]).replace(b"\\", b"/")
    assert normpath(path.decode("latin-1")).startswith("/v1/audio")


def test_check_target_outside_audio_only_checks_bytes() -> None:
    """Other paths are the router's business (404), unless they hold forbidden bytes."""
    assert check_target(b"/v1/models") == b"/v1/models"
    with pytest.raises(InvalidRequest):
        check_target(b"/x\x00")


# Slot


def test_retry_after_without_history_is_one_second() -> None:
    """No call has finished yet: come back in 1 s."""
    assert estimate_retry_after(None, None).headers() == [
        (b"Retry-After", b"1"),
        (b"retry-after-ms", b"1000"),
    ]


@pytest.mark.parametrize(
    ("average", "spread", "elapsed", "seconds", "ms"),
    [
        (10.0, 0.0, 2.5, 8, 7500),
        (10.0, 0.0, 9.95, 1, 100),  # almost done: at least 100 ms, 1 s
        (10.0, 0.0, 30.0, 1, 100),  # overdue
        (500.0, 0.0, 0.0, 60, 60000),  # clamped to a minute
        (0.6, 0.7, 0.1, 2, 1900),  # quick calls and long ones: two spreads past the average
        (0.6, 0.7, 5.0, 1, 700),  # overdue: one spread more
    ],
)
def test_retry_after_is_expected_end_minus_elapsed_clamped(
    average: float, spread: float, elapsed: float, seconds: int, ms: int
) -> None:
    """Retry-After estimates the remaining time of the current holder, within 1..60 s."""
    estimate = estimate_retry_after(average, elapsed, spread)
    assert (estimate.seconds, estimate.milliseconds) == (seconds, ms)


def test_slot_estimate_covers_a_mix_of_quick_and_long_calls() -> None:
    """Voices lookups between 1.4 s generations: a 503 asks to wait past the next 1.4 s end.

    With the plain average (~0.6 s here) an SDK with two retries came back twice before a
    1.4 s generation had ended, and gave up.
    """
    clock = Clock()
    slot = GPUSlot(DeferredSemaphore(1), clock)
    for duration in (1.4, 0.005, 0.01, 1.4, 0.005):
        hold = slot.try_take()
        assert hold is not None
        clock.advance(duration)
        hold.release()
    holder = slot.try_take()
    assert holder is not None
    clock.advance(0.1)
    first = slot.retry_after().milliseconds
    assert first >= 1300, "the first retry must come after the holder's likely end"
    clock.advance(first / 1000)
    assert slot.retry_after().milliseconds >= 400, "overdue: still a real wait, not 100 ms"


def test_slot_learns_call_durations() -> None:
    """The estimate follows a moving average of finished calls, minus the holder's time."""
    clock = Clock()
    slot = GPUSlot(DeferredSemaphore(1), clock)
    for _ in range(3):
        hold = slot.try_take()
        assert hold is not None
        clock.advance(6)
        hold.release()
    hold = slot.try_take()
    assert hold is not None
    assert slot.try_take() is None
    clock.advance(2)
    assert slot.retry_after().seconds == 4
    hold.release()
    hold.release()  # idempotent: the token is given back once
    assert slot.semaphore.tokens == 1


def test_slot_shared_with_other_work() -> None:
    """Tokens held by someone else's code make try_take say no; in_use counts them."""
    semaphore = DeferredSemaphore(2)
    slot = GPUSlot(semaphore, Clock())
    semaphore.acquire()
    assert slot.in_use == 1
    assert slot.try_take() is not None
    assert slot.try_take() is None


# Error mapping


def test_describe_unwraps_twisted_wrappers() -> None:
    """Wrapper exceptions show their reasons, not a repr of a list."""
    wrapped = ResponseNeverReceived([Failure(ConnectionRefusedError("nope"))])
    assert describe(wrapped).startswith("ResponseNeverReceived: ConnectionRefusedError:")
    assert describe(ValueError()) == "ValueError"


def test_error_mapping() -> None:
    """Connect failures → 503, timeouts → 504, anything else → 502."""
    refused = Failure(ConnectionRefusedError())
    assert error_for_upstream_failure(refused, timed_out=False, retry_after=5).status == 503
    assert error_for_upstream_failure(refused, timed_out=True, retry_after=5).status == 504
    other = Failure(ValueError("bad"))
    error = error_for_upstream_failure(other, timed_out=False, retry_after=5)
    assert (error.status, error.message) == (502, "ValueError: bad")
    assert json.loads(error.envelope())["error"]["provider"] == "qwen3-tts"


@pytest.mark.parametrize("wrapped", [False, True])
def test_out_of_descriptors_is_the_gateways_own_503(wrapped: bool) -> None:
    """EMFILE making the upstream socket: 503 from aistack, not a refusal by the upstream."""
    import errno

    from twisted.internet.error import ConnectBindError

    from aistack_tts._errors import is_connect_failure, local_exhaustion

    bind = Failure(ConnectBindError(errno.EMFILE, "Too many open files"))
    failure = Failure(ResponseNeverReceived([bind])) if wrapped else bind
    assert local_exhaustion(failure) == errno.EMFILE
    assert not is_connect_failure(failure), "so the upstream is not marked down"
    error = error_for_upstream_failure(failure, timed_out=False, retry_after=5)
    assert (error.status, error.type, error.provider) == (
        503,
        "local_resource_exhausted",
        "aistack",
    )
    assert "open file descriptors (EMFILE)" in error.message
    assert dict(error.headers) == {b"Retry-After": b"1"}
    other_bind = Failure(ConnectBindError(errno.EADDRNOTAVAIL, "no address"))
    assert local_exhaustion(other_bind) is None
    assert is_connect_failure(other_bind)


def test_rate_limited_warning_logs_once_per_interval_with_a_count() -> None:
    """A flood of the same trouble: one line per interval, counting what it did not log."""
    from aistack_tts.wire._descriptors import RateLimitedWarning
    from support.logs import LogCapture

    clock = Clock()
    warning = RateLimitedWarning(clock, "out of file descriptors", interval=10)
    with LogCapture() as logs:
        for _ in range(5):
            warning.occurred("EMFILE")
            clock.advance(1)
        clock.advance(10)
        warning.occurred("EMFILE")
    lines = [e for e in logs.events if e.get("log_namespace") == "aistack_tts.resources"]
    assert [e["count"] for e in lines] == [1, 5]


# Configuration and options


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


def test_watchdog_fires_after_a_quiet_interval_blaming_the_last_kind() -> None:
    """Each touch restarts the interval; the stall names whoever was last waited on."""
    from aistack_tts.call._watchdog import Watchdog

    clock = Clock()
    stalls: list[str] = []
    watchdog = Watchdog(clock, 10, stalls.append)
    watchdog.touch()
    clock.advance(6)
    watchdog.touch("client")
    clock.advance(6)
    assert stalls == []
    clock.advance(4)
    assert stalls == ["client"]
    watchdog.touch()
    watchdog.stop()
    clock.advance(100)
    assert stalls == ["client"]
    assert not clock.getDelayedCalls()


# Listening


@pytest.mark.parametrize(
    ("description", "backlog"),
    [
        ("tcp:0:interface=127.0.0.1", DEFAULT_BACKLOG),
        ("tcp6:0:interface=\\:\\:1", DEFAULT_BACKLOG),
        ("unix:/tmp/aistack-tts.sock", DEFAULT_BACKLOG),
        ("tcp:0:backlog=7", 7),
    ],
)
def test_listen_backlog_defaults_to_nginx_s(description: str, backlog: int) -> None:
    """Socket endpoints get a 511 listen backlog unless the description sets one."""
    reactor = MemoryReactor()
    [(given_description, endpoint)] = parse_endpoints(reactor, [description])
    assert given_description == description
    endpoint.listen(Factory())
    [server] = reactor.tcpServers or reactor.unixServers
    assert server[2] == backlog


def test_listen_backlog_only_where_an_endpoint_takes_one() -> None:
    """An endpoint without a backlog (stdio, say) is left as described."""
    [(_, endpoint)] = parse_endpoints(MemoryReactor(), ["stdio:"])
    assert type(endpoint).__name__ == "StandardIOEndpoint"
