"""The defaults a new user meets: a busy GPU queues, voices skip the slot, a dead upstream is
passed over and tried again; in memory, on the wire."""

from __future__ import annotations

import pytest
from twisted.internet.defer import DeferredSemaphore

from aistack_tts._config import DEFAULT_QUEUE_TIMEOUT, ConfigError, GatewayConfig
from aistack_tts._options import Options
from support.harness import Harness
from support.logs import LogCapture
from support.wire import envelope, parse_response

GPUS = ["http://127.0.0.1:8091", "http://127.0.0.1:8092"]
SPEECH = (
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)
VOICES = b"GET /v1/audio/voices HTTP/1.1\r\nHost: gw\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def status(peer: object) -> int:
    return parse_response(peer.received())[0]  # type: ignore[attr-defined]


# The queue by default.


def test_by_default_a_busy_gpu_queues_the_request() -> None:
    """With the defaults a request that finds the GPU busy waits for it instead of a 503."""
    h = Harness(defaults=True)
    assert h.proxy.queue_timeout == DEFAULT_QUEUE_TIMEOUT == 30
    first = h.request(SPEECH)
    second = h.request(SPEECH)
    h.reactor.advance(10)
    assert second.received() == b"", "it waits"
    h.upstream().send(OK)
    assert status(first) == 200
    h.upstream().send(OK)
    assert status(second) == 200
    assert h.tokens == 1


def test_a_wait_expected_past_the_timeout_is_refused_at_once() -> None:
    """503 at once only when the queue is full: its expected wait runs past the timeout.

    After one 20 s call, the second request in line (20 s + 20 s) would not be served within
    30 s: it gets 503 gpu_busy at once, Retry-After no sooner than the queue has room.
    """
    h = Harness(defaults=True, pool_idle_timeout=0)
    h.request(SPEECH)
    h.reactor.advance(20)
    h.upstream().send(OK)
    serving = h.request(SPEECH)
    queued = h.request(SPEECH)
    refused = h.request(SPEECH)
    assert queued.received() == b""
    answer = refused.received()
    assert (parse_response(answer)[0], envelope(answer)["type"]) == (503, "gpu_busy")
    assert int(parse_response(answer)[1][b"retry-after"][0]) >= 10
    h.upstream().send(OK)
    assert status(serving) == 200
    h.upstream().send(OK)
    assert status(queued) == 200


def test_no_queue_with_queue_timeout_zero() -> None:
    """--queue-timeout 0 keeps the old way: 503 gpu_busy at once."""
    h = Harness(defaults=True, queue_timeout=0)
    h.request(SPEECH)
    assert envelope(h.request(SPEECH).received())["type"] == "gpu_busy"


# Voices skip the slot by default.


def test_listing_voices_takes_no_slot_by_default() -> None:
    """A UI listing voices during a generation is answered, not refused or queued."""
    h = Harness(defaults=True)
    h.slot.acquire()
    with LogCapture() as logs:
        voices = h.request(VOICES)
        h.upstream().send(OK)
    assert status(voices) == 200
    assert [e["slot"] for e in logs.access()] == ["exempt"]
    assert h.tokens == 0


def test_slot_exempt_none_makes_voices_take_the_slot_again() -> None:
    """``--slot-exempt none`` (``["none"]`` when embedding): every call takes the slot."""
    h = Harness(defaults=True, slot_exempt=["none"], queue_timeout=0)
    h.slot.acquire()
    assert envelope(h.request(VOICES).received())["type"] == "gpu_busy"


@pytest.mark.parametrize(
    ("argv", "environ", "rules"),
    [
        ([], {}, ("GET:/v1/audio/voices",)),
        (["--slot-exempt", "none"], {}, ()),
        (["--slot-exempt", "NONE"], {}, ()),
        ([], {"AISTACK_TTS_SLOT_EXEMPT": "none"}, ()),
        (["--slot-exempt", "GET:/v1/models"], {}, ("GET:/v1/models",)),
    ],
)
def test_slot_exempt_default_and_none(
    argv: list[str], environ: dict[str, str], rules: tuple[str, ...]
) -> None:
    """The default rule, replaced by any given rule, cleared by ``none``."""
    options = Options(environ=environ)
    options.parseOptions(argv)  # type: ignore[no-untyped-call]
    assert options.config.slot_exempt == rules


def test_slot_exempt_none_with_rules_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``none`` next to a rule is a mistake: it stops the gateway with one line."""
    with pytest.raises(SystemExit):
        Options(environ={}).parseOptions(["--slot-exempt", "none", "--slot-exempt", "GET:/x"])  # type: ignore[no-untyped-call]
    err = capsys.readouterr().err
    assert "slot-exempt 'none' (every call takes the slot) cannot be combined" in err
    assert len(err.strip().splitlines()) == 1


# --down-cooldown on the command line.


def test_down_cooldown_from_the_line_or_the_environment() -> None:
    """--down-cooldown and AISTACK_TTS_DOWN_COOLDOWN reach the pool."""
    options = Options(environ={"AISTACK_TTS_DOWN_COOLDOWN": "2"})
    options.parseOptions([])  # type: ignore[no-untyped-call]
    assert options.config.down_cooldown == 2.0
    options = Options(environ={"AISTACK_TTS_DOWN_COOLDOWN": "2"})
    options.parseOptions(["--down-cooldown", "0.5"])  # type: ignore[no-untyped-call]
    assert options.config.down_cooldown == 0.5
    assert GatewayConfig().down_cooldown == 5.0
    h = Harness(down_cooldown=0.5)
    assert h.proxy.pool.cooldown == 0.5
    with pytest.raises(ConfigError, match="down-cooldown must be a number of seconds >= 0"):
        GatewayConfig(down_cooldown=-1)


# A dead upstream next to a live one.


def two_gpus(**kwargs: object) -> tuple[Harness, list[DeferredSemaphore]]:
    slots = [DeferredSemaphore(1), DeferredSemaphore(1)]
    return Harness(GPUS, slot=slots, pool_idle_timeout=0, **kwargs), slots


def test_a_refused_call_waits_for_the_live_busy_gpu() -> None:
    """Two GPUs, one dead, three requests: the refused one and the queued one both wait for
    the live GPU and are served (they used to get 200, 503, 503)."""
    h, slots = two_gpus(queue_timeout=5)
    with LogCapture() as logs:
        first = h.request(SPEECH)
        second = h.request(SPEECH)
        third = h.request(SPEECH)
        assert [h.port(0), h.port(1)] == [8091, 8092]
        h.refuse(0)
        assert first.received() == b"", "back in the queue, not a 503"
        assert third.received() == b""
        assert h.connection_attempts == 2, "nobody went to the dead GPU again"
        h.reactor.advance(1)
        h.upstream(1).send(OK)
        assert status(second) == 200
        # Next in line on the live GPU: the request queued there first.
        assert h.port() == 8092
        h.reactor.advance(1)
        h.upstream().send(OK)
        assert status(third) == 200
        assert h.port() == 8092
        h.reactor.advance(1)
        h.upstream().send(OK)
        assert status(first) == 200
    assert [s.tokens for s in slots] == [1, 1]
    assert h.connection_attempts == 4
    events = logs.access()
    assert sorted(e["status"] for e in events) == [200, 200, 200]
    for event in events:
        assert event["queue_wait"] + event["slot_held"] == pytest.approx(event["duration"])
    first_event = next(e for e in events if e["queue_wait"] > 2)
    assert first_event["slot_held"] == pytest.approx(1.0), "held from the second grant"
    assert any("waited for" in str(e.get("log_format")) for e in logs.events)


def test_a_refused_call_that_waits_past_the_timeout_is_gpu_busy() -> None:
    """The wait again is bounded by --queue-timeout from the request's arrival."""
    h, slots = two_gpus(queue_timeout=5)
    first = h.request(SPEECH)
    h.request(SPEECH)
    h.refuse(0)
    h.reactor.advance(5)
    error = envelope(first.received())
    assert (error["type"], error["provider"]) == ("gpu_busy", "aistack")
    assert [s.tokens for s in slots] == [1, 0]


def test_a_refused_call_with_no_queue_is_gpu_busy_while_another_gpu_is_up() -> None:
    """With --queue-timeout 0 the refused call is told the live GPU is busy."""
    h, _slots = two_gpus(queue_timeout=0)
    first = h.request(SPEECH)
    h.request(SPEECH)
    h.refuse(0)
    h.reactor.advance(0)
    assert envelope(first.received())["type"] == "gpu_busy"


def test_a_client_that_leaves_while_waiting_again_frees_everything() -> None:
    """Leaving during the second wait leaves the queue; nothing is held."""
    h, slots = two_gpus(queue_timeout=5)
    with LogCapture() as logs:
        first = h.request(SPEECH)
        second = h.request(SPEECH)
        h.refuse(0)
        first.lose()
        h.upstream(1).send(OK)
    assert status(second) == 200
    assert [s.tokens for s in slots] == [1, 1]
    assert h.connection_attempts == 2
    assert sorted(e["outcome"] for e in logs.access()) == ["client_abort", "ok"]
    assert not logs.failures()


# Every upstream down: tried again, not refused on the mark.


def test_when_every_upstream_is_down_the_next_call_tries_again() -> None:
    """After an upstream returns, the first call reaches it (it used to get 503
    upstream_unavailable for the whole cool-down); one that is still refused says so."""
    h = Harness(pool_idle_timeout=0)
    down = h.request(SPEECH)
    h.refuse()
    assert envelope(down.received())["type"] == "upstream_unavailable"
    upstream = h.proxy.pool.upstreams[0]
    assert not upstream.is_up(h.reactor.seconds())
    still = h.request(SPEECH)
    assert h.connection_attempts == 2, "tried within the cool-down"
    h.refuse()
    assert envelope(still.received())["type"] == "upstream_unavailable"
    back = h.request(SPEECH)
    assert h.connection_attempts == 3
    h.upstream().send(OK)
    assert status(back) == 200
    assert upstream.is_up(h.reactor.seconds()), "an answer ends the cool-down"
    assert h.tokens == 1


def test_a_gpu_that_answers_again_is_used_before_its_cool_down_ends() -> None:
    """With two GPUs both down, a call that reaches one clears its mark for the others."""
    h, slots = two_gpus()
    h.request(SPEECH)
    h.refuse()
    h.refuse()
    back = h.request(SPEECH)
    h.upstream().send(OK)
    assert status(back) == 200
    pool = h.proxy.pool
    assert [u.is_up(h.reactor.seconds()) for u in pool.upstreams].count(True) == 1
    assert [s.tokens for s in slots] == [1, 1]
