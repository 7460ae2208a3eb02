"""The proxied call's decisions without a reactor: phase-by-event tables and Hypothesis.

``aistack_tts.call._exchange_core`` is fed events and returns effects; here nothing else runs.
The tables pin every cell (what each event does in each phase); the properties hold for any
order of events: one ``Finish`` and nothing after it, no envelope for a client that left, no
abort before a head, a truncated body never ``ok``; and, for the orders Twisted can produce,
a call always ends once its request and its body have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from aistack_tts._errors import (
    GATEWAY_FAILED,
    Draining,
    GatewayError,
    UpstreamError,
    UpstreamUnavailable,
    stall_cause,
    upstream_timeout,
)
from aistack_tts.call._events import (
    AbortClient,
    AnswerWith,
    Bug,
    ClientLeft,
    Cut,
    Ending,
    Finish,
    Stalled,
)
from aistack_tts.call._exchange import classify
from aistack_tts.call._exchange_core import (
    LEFT_BEFORE_HEAD,
    LEFT_DURING_BODY,
    BodyEnded,
    CallFailed,
    CancelCall,
    Effect,
    Event,
    ExchangeMachine,
    MarkDown,
    Phase,
    Response,
    Send,
    Start,
    StartResponse,
    StopUpstream,
    TakeSpare,
)

IDLE = 30.0
TIMEOUTS: dict[str, Any] = {"idle_timeout": IDLE, "connect_timeout": 5.0}
UNAVAILABLE = UpstreamUnavailable("cannot reach the Qwen3-TTS upstream")
REFUSED = CallFailed(True, UNAVAILABLE, "ConnectionRefusedError: refused")
SPARE = CallFailed(True, UNAVAILABLE, "ConnectionRefusedError: refused", spare=True)
BROKEN = UpstreamError("ResponseNeverReceived: ConnectionLost")
FAILED = CallFailed(False, BROKEN, "ResponseNeverReceived: ConnectionLost")
DRAIN = Draining("the gateway is shutting down")
TRUNCATED = "ResponseFailed: ConnectionLost"

#: One of each event, named for the tables.
EVENTS: dict[str, Event] = {
    "start": Start(),
    "response": Response(200),
    "refused": REFUSED,
    "refused_spare": SPARE,
    "failed": FAILED,
    "body_whole": BodyEnded(),
    "body_broken": BodyEnded(TRUNCATED),
    "client_left": ClientLeft(),
    "upstream_stalled": Stalled("upstream"),
    "client_stalled": Stalled("client"),
    "cut": Cut(DRAIN),
    "bug": Bug("ValueError: oops"),
}

#: How to reach each phase.
PHASES: dict[Phase, list[Event]] = {
    Phase.CONNECTING: [Start()],
    Phase.STREAMING: [Start(), Response(200)],
    Phase.DONE: [Start(), Response(200), BodyEnded()],
}


def answer(error: GatewayError, cause: str) -> list[Effect]:
    return [AnswerWith(error), Finish(error.type, cause, ending=Ending.ENVELOPE)]


def stop_both(outcome: str, cause: str) -> list[Effect]:
    return [StopUpstream(), AbortClient(), Finish(outcome, cause)]


#: (phase, event) → effects, for every event in the two live phases.
TABLE: dict[tuple[Phase, str], list[Effect]] = {
    (Phase.CONNECTING, "start"): [],
    (Phase.CONNECTING, "response"): [StartResponse(200)],
    (Phase.CONNECTING, "refused"): [MarkDown(), *answer(UNAVAILABLE, REFUSED.cause)],
    (Phase.CONNECTING, "refused_spare"): [MarkDown(), TakeSpare(), Send()],
    (Phase.CONNECTING, "failed"): answer(BROKEN, FAILED.cause),
    (Phase.CONNECTING, "body_whole"): [],
    (Phase.CONNECTING, "body_broken"): [],
    (Phase.CONNECTING, "client_left"): [CancelCall()],
    (Phase.CONNECTING, "upstream_stalled"): [CancelCall()],
    (Phase.CONNECTING, "client_stalled"): [CancelCall()],
    (Phase.CONNECTING, "cut"): [CancelCall()],
    (Phase.CONNECTING, "bug"): answer(GatewayError(GATEWAY_FAILED), GATEWAY_FAILED),
    (Phase.STREAMING, "start"): [],
    (Phase.STREAMING, "response"): [],
    (Phase.STREAMING, "refused"): [],
    (Phase.STREAMING, "refused_spare"): [],
    (Phase.STREAMING, "failed"): [],
    (Phase.STREAMING, "body_whole"): [Finish("ok", None, ending=Ending.BODY)],
    (Phase.STREAMING, "body_broken"): [
        AbortClient(),
        Finish("upstream_error_mid_body", TRUNCATED),
    ],
    (Phase.STREAMING, "client_left"): [
        StopUpstream(),
        Finish("client_abort", LEFT_DURING_BODY),
    ],
    (Phase.STREAMING, "upstream_stalled"): stop_both(
        "upstream_stalled", stall_cause("upstream", IDLE)
    ),
    (Phase.STREAMING, "client_stalled"): stop_both("client_stalled", stall_cause("client", IDLE)),
    (Phase.STREAMING, "cut"): stop_both("draining_cut", DRAIN.message),
    (Phase.STREAMING, "bug"): stop_both("internal_error", "ValueError: oops"),
}

#: Stories before the head: what was fed, the event, its effects.
STORIES: dict[str, tuple[list[Event], Event, list[Effect]]] = {
    "not_started_sends": ([], Start(), [Send()]),
    "left_before_start_never_sends": (
        [ClientLeft()],
        Start(),
        [Finish("client_abort", LEFT_BEFORE_HEAD)],
    ),
    "cancel_for_a_client_that_left_ends_quietly": (
        [Start(), ClientLeft()],
        FAILED,
        [Finish("client_abort", LEFT_BEFORE_HEAD)],
    ),
    "one_cancel_only": ([Start(), ClientLeft()], Cut(DRAIN), []),
    "a_cancelled_call_does_not_answer": ([Start(), ClientLeft()], Response(200), []),
    "bug_after_the_client_left": (
        [Start(), ClientLeft()],
        Bug("ValueError: oops"),
        [Finish("internal_error", "ValueError: oops")],
    ),
    "stall_answers_504": (
        [Start(), Stalled("upstream")],
        FAILED,
        answer(upstream_timeout(), stall_cause("upstream", IDLE)),
    ),
    "no_fail_over_after_a_stall": (
        [Start(), Stalled("upstream")],
        REFUSED,
        answer(upstream_timeout(), stall_cause("upstream", IDLE)),
    ),
    "cut_answers_its_error": ([Start(), Cut(DRAIN)], FAILED, answer(DRAIN, DRAIN.message)),
    "cut_wins_over_a_stall": (
        [Start(), Stalled("upstream"), Cut(DRAIN)],
        FAILED,
        answer(DRAIN, DRAIN.message),
    ),
    "a_client_that_left_gets_no_envelope": (
        [Start(), Cut(DRAIN), ClientLeft()],
        FAILED,
        [Finish("client_abort", LEFT_BEFORE_HEAD)],
    ),
    "no_fail_over_when_the_client_left": (
        [Start(), ClientLeft()],
        SPARE,
        [Finish("client_abort", LEFT_BEFORE_HEAD)],
    ),
    "the_next_upstream_answers": ([Start(), SPARE], Response(201), [StartResponse(201)]),
    "the_next_upstream_refuses_too": (
        [Start(), SPARE],
        REFUSED,
        [MarkDown(), *answer(UNAVAILABLE, REFUSED.cause)],
    ),
    "a_second_stall_cancels_nothing": ([Start(), Stalled("upstream")], Stalled("upstream"), []),
}


def comparable(effects: Sequence[Effect]) -> list[object]:
    """Effects with their errors as (class, message): exceptions compare by identity."""
    return [
        ("AnswerWith", type(e.error), e.error.message) if isinstance(e, AnswerWith) else e
        for e in effects
    ]


def machine_after(events: Sequence[Event]) -> ExchangeMachine:
    machine = ExchangeMachine(IDLE)
    for event in events:
        machine.handle(event)
    return machine


@pytest.mark.parametrize(("phase", "name"), sorted(TABLE))
def test_table(phase: Phase, name: str) -> None:
    """Each event in each live phase does exactly what the table says."""
    machine = machine_after(PHASES[phase])
    assert machine.phase is phase
    assert comparable(machine.handle(EVENTS[name])) == comparable(TABLE[(phase, name)])


def test_table_is_complete() -> None:
    """The table has a row for every event in both live phases."""
    assert set(TABLE) == {(p, n) for p in (Phase.CONNECTING, Phase.STREAMING) for n in EVENTS}


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_done_ignores_everything(name: str) -> None:
    """After the one ``Finish``, no event has an effect."""
    machine = machine_after(PHASES[Phase.DONE])
    assert machine.phase is Phase.DONE
    assert machine.handle(EVENTS[name]) == []
    assert machine.phase is Phase.DONE


@pytest.mark.parametrize("name", sorted(STORIES))
def test_stories_before_the_head(name: str) -> None:
    """Cancels, fail-overs and which reason wins, before the response head."""
    before, event, effects = STORIES[name]
    assert comparable(machine_after(before).handle(event)) == comparable(effects)


def test_classify_refused_may_fail_over() -> None:
    """The shell's classification: a refused connection may fail over and says 503."""
    failed = classify(Failure(ConnectionRefusedError("no")), **TIMEOUTS)
    assert failed.refused
    assert failed.error.type == "upstream_unavailable"
    assert failed.cause.startswith("ConnectionRefusedError")
    assert not failed.spare, "no spare unless the shell found one"
    assert classify(Failure(ConnectionRefusedError("no")), spare=lambda: True, **TIMEOUTS).spare


def test_classify_cancelled_is_not_refused() -> None:
    """A cancelled call is no reason to try another upstream."""

    def asked() -> bool:
        raise AssertionError("a call that may not fail over needs no spare")

    failed = classify(Failure(CancelledError()), spare=asked, **TIMEOUTS)
    assert not failed.refused
    assert failed.error.type == "upstream_error"


# Properties.

ANY_EVENT = st.sampled_from(list(EVENTS.values()))


def check(fed: Sequence[tuple[Event, list[Effect]]]) -> Finish | None:
    """The safety properties of one run (each event with its effects); its ``Finish``."""
    finish: Finish | None = None
    head = False
    left = False
    for event, effects in fed:
        if isinstance(event, ClientLeft):
            left = True
        assert finish is None or effects == [], "nothing after the Finish"
        for i, effect in enumerate(effects):
            if isinstance(effect, StartResponse):
                assert not head, "one head"
                head = True
            elif isinstance(effect, AnswerWith):
                assert not head, "no envelope once the head is out"
                assert not left, "no envelope for a client that left"
                after = effects[i + 1]
                assert isinstance(after, Finish)
                assert after.ending is Ending.ENVELOPE
            elif isinstance(effect, AbortClient | StopUpstream):
                assert head, "nothing to abort or stop before the head"
                assert not (left and isinstance(effect, AbortClient)), "it left already"
            elif isinstance(effect, Finish):
                assert i == len(effects) - 1, "Finish is the last effect"
                finish = effect
                if effect.outcome == "ok":
                    assert event == BodyEnded(), "only a whole body ends ok"
                if effect.ending is Ending.ENVELOPE:
                    assert i > 0
                    assert isinstance(effects[i - 1], AnswerWith)
    return finish


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(ANY_EVENT, max_size=14))
def test_any_events_end_at_most_once(events: list[Event]) -> None:
    """Whatever is fed, in any order: at most one Finish, nothing after it, and the rest."""
    machine = ExchangeMachine(IDLE)
    fed = [(event, machine.handle(event)) for event in events]
    finish = check(fed)
    assert (finish is not None) is (machine.phase is Phase.DONE)


class World:
    """What Twisted promises the shell, as a model: which events can come next.

    A request sent is answered once (a cancelled one only fails; a refused one may have a
    spare); a relayed body ends once. The client, the watchdog, the drain and a bug
    can come at any time.
    """

    def __init__(self) -> None:
        self.out = False
        self.cancelled = False
        self.body = False

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                assert not self.out, "one request at a time"
                self.out, self.cancelled = True, False
            elif isinstance(effect, CancelCall):
                assert self.out, "a cancel needs a request out"
                self.cancelled = True
            elif isinstance(effect, StartResponse):
                self.body = True

    def next_events(self) -> list[Event]:
        events: list[Event] = [ClientLeft(), Stalled("upstream"), Cut(DRAIN), Bug("bug")]
        if self.out:
            events += [FAILED] if self.cancelled else [Response(200), REFUSED, SPARE, FAILED]
        if self.body:
            events += [BodyEnded(), BodyEnded(TRUNCATED), Stalled("client")]
        return events

    def happened(self, event: Event) -> None:
        if isinstance(event, Response | CallFailed):
            self.out = False
        elif isinstance(event, BodyEnded):
            self.body = False

    def settle(self) -> list[Event]:
        """What still comes once nothing else happens: the answers and ends still owed."""
        if self.out:
            return [FAILED]
        if self.body:
            return [BodyEnded(TRUNCATED)]
        return []


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_every_call_ends_exactly_once(data: st.DataObject) -> None:
    """In any order Twisted can produce, a call ends exactly once when its request and its
    body have; never two requests at once, never a cancel with none out."""
    machine = ExchangeMachine(IDLE)
    world = World()
    fed: list[tuple[Event, list[Effect]]] = []

    def feed(event: Event) -> None:
        world.happened(event)
        effects = machine.handle(event)
        world.apply(effects)
        fed.append((event, effects))

    feed(Start())
    for _ in range(data.draw(st.integers(0, 10))):
        feed(data.draw(st.sampled_from(world.next_events())))
    while owed := world.settle():
        feed(owed[0])
    assert check(fed) is not None, "the call ended"
    assert machine.phase is Phase.DONE
