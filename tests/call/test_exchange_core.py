"""The proxied call's decisions without a reactor: a phase table, stories and Hypothesis.

``aistack_tts.call._exchange_core`` is fed events and returns effects; here nothing else runs.
The table says, for each event in each phase, where the call goes and how it ends, or that
the phase cannot receive it (strict mode raises; production ignores it). The stories say which
reason wins before the head and how a fail-over goes; the properties hold for any order of
events (one ``Finish`` and nothing after it, no envelope for a client that left, no abort
before a head, a truncated body never ``ok``) and, for the orders Twisted can produce, a call
always ends once its request and its body have, and the strict core never raises.
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
    Draining,
    GatewayError,
    GPUBusy,
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
    UnexpectedEvent,
)
from aistack_tts.call._exchange import classify
from aistack_tts.call._exchange_core import (
    RECEIVES,
    BodyEnded,
    CallFailed,
    CancelCall,
    Effect,
    Event,
    ExchangeMachine,
    MarkDown,
    Phase,
    Requeue,
    Response,
    Send,
    Start,
    StartResponse,
    StopUpstream,
    TakeSpare,
)
from support.cores import UNEXPECTED, Cell, Then, check_run, then

IDLE = 30.0
TIMEOUTS: dict[str, Any] = {"idle_timeout": IDLE, "connect_timeout": 5.0}
UNAVAILABLE = UpstreamUnavailable("cannot reach the Qwen3-TTS upstream")
REFUSED = CallFailed(True, UNAVAILABLE, "ConnectionRefusedError: refused")
SPARE = CallFailed(True, UNAVAILABLE, "ConnectionRefusedError: refused", spare=True)
REQUEUE = CallFailed(True, UNAVAILABLE, "ConnectionRefusedError: refused", requeue=True)
WAITED_TOO_LONG = CallFailed(False, GPUBusy("the GPU is busy"), "no other GPU freed")
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
    "refused_requeue": REQUEUE,
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


C, S, D = Phase.CONNECTING, Phase.STREAMING, Phase.DONE

#: (phase, event) → where the call goes and how it ends, for every event in every phase.
TABLE: dict[tuple[Phase, str], Cell] = {
    (C, "start"): UNEXPECTED,
    (C, "response"): Then(S),
    (C, "refused"): Then(D, "upstream_unavailable"),
    (C, "refused_spare"): Then(C),  # sent again, to the spare
    (C, "refused_requeue"): Then(C),  # waits for a slot on a live upstream, then sent again
    (C, "failed"): Then(D, "upstream_error"),
    (C, "body_whole"): UNEXPECTED,
    (C, "body_broken"): UNEXPECTED,
    # Each reason cancels the request; its failure ends the call (see the stories).
    (C, "client_left"): Then(C),
    (C, "upstream_stalled"): Then(C),
    (C, "client_stalled"): Then(C),
    (C, "cut"): Then(C),
    (C, "bug"): Then(D, "internal_error"),
    (S, "start"): UNEXPECTED,
    (S, "response"): UNEXPECTED,
    (S, "refused"): UNEXPECTED,
    (S, "refused_spare"): UNEXPECTED,
    (S, "refused_requeue"): UNEXPECTED,
    (S, "failed"): UNEXPECTED,
    (S, "body_whole"): Then(D, "ok"),
    (S, "body_broken"): Then(D, "upstream_error_mid_body"),
    (S, "client_left"): Then(D, "client_abort"),
    (S, "upstream_stalled"): Then(D, "upstream_stalled"),
    (S, "client_stalled"): Then(D, "client_stalled"),
    (S, "cut"): Then(D, "draining_cut"),
    (S, "bug"): Then(D, "internal_error"),
    # After the Finish: only the ends still owed.
    **{(D, name): UNEXPECTED for name in EVENTS},
    (D, "client_left"): Then(D),
    (D, "body_whole"): Then(D),
    (D, "body_broken"): Then(D),
}


#: Stories before the head: what was fed, the event, what it did.
STORIES: dict[str, tuple[list[Event], Event, Cell]] = {
    "not_started_sends": ([], Start(), Then(C)),
    "left_before_start_never_sends": ([ClientLeft()], Start(), Then(D, "client_abort")),
    "cancel_for_a_client_that_left_ends_quietly": (
        [Start(), ClientLeft()],
        FAILED,
        Then(D, "client_abort"),
    ),
    "one_cancel_only": ([Start(), ClientLeft()], Cut(DRAIN), Then(C)),
    "a_cancelled_call_does_not_answer": ([Start(), ClientLeft()], Response(200), UNEXPECTED),
    "bug_after_the_client_left": (
        [Start(), ClientLeft()],
        Bug("ValueError: oops"),
        Then(D, "internal_error"),
    ),
    "stall_answers_504": ([Start(), Stalled("upstream")], FAILED, Then(D, "upstream_timeout")),
    "no_fail_over_after_a_stall": (
        [Start(), Stalled("upstream")],
        REFUSED,
        Then(D, "upstream_timeout"),
    ),
    "cut_answers_its_error": ([Start(), Cut(DRAIN)], FAILED, Then(D, "draining")),
    "cut_wins_over_a_stall": (
        [Start(), Stalled("upstream"), Cut(DRAIN)],
        FAILED,
        Then(D, "draining"),
    ),
    "a_client_that_left_gets_no_envelope": (
        [Start(), Cut(DRAIN), ClientLeft()],
        FAILED,
        Then(D, "client_abort"),
    ),
    "no_fail_over_when_the_client_left": (
        [Start(), ClientLeft()],
        SPARE,
        Then(D, "client_abort"),
    ),
    "the_spare_answers": ([Start(), SPARE], Response(201), Then(S)),
    "the_spare_refuses_too": ([Start(), SPARE], REFUSED, Then(D, "upstream_unavailable")),
    "the_requeued_call_answers": ([Start(), REQUEUE], Response(200), Then(S)),
    "the_requeued_wait_runs_out": ([Start(), REQUEUE], WAITED_TOO_LONG, Then(D, "gpu_busy")),
    "leaving_the_second_wait_cancels_it": ([Start(), REQUEUE], ClientLeft(), Then(C)),
    "the_cancelled_wait_ends_quietly": (
        [Start(), REQUEUE, ClientLeft()],
        FAILED,
        Then(D, "client_abort"),
    ),
    "no_requeue_when_the_client_left": (
        [Start(), ClientLeft()],
        REQUEUE,
        Then(D, "client_abort"),
    ),
    "a_second_stall_cancels_nothing": (
        [Start(), Stalled("upstream")],
        Stalled("upstream"),
        Then(C),
    ),
}


def machine_after(events: Sequence[Event], *, strict: bool | None = None) -> ExchangeMachine:
    machine = ExchangeMachine(IDLE, strict=strict)
    for event in events:
        machine.handle(event)
    return machine


def check_cell(before: Sequence[Event], event: Event, cell: Cell) -> None:
    """What ``event`` does after ``before``, in strict mode and in production."""
    if cell == UNEXPECTED:
        with pytest.raises(UnexpectedEvent):
            machine_after(before, strict=True).handle(event)
        lenient = machine_after(before, strict=False)
        phase = lenient.phase
        assert lenient.handle(event) == [], "production ignores it"
        assert lenient.phase is phase
        return
    machine = machine_after(before, strict=True)
    assert then(machine, machine.handle(event)) == cell


@pytest.mark.parametrize(("phase", "name"), sorted(TABLE))
def test_table(phase: Phase, name: str) -> None:
    """Each event in each phase goes where the table says, or cannot be received there."""
    assert machine_after(PHASES[phase]).phase is phase
    check_cell(PHASES[phase], EVENTS[name], TABLE[(phase, name)])


def test_table_is_complete_and_agrees_with_receives() -> None:
    """A cell for every event in every phase; what a phase can receive is what it declares."""
    assert set(TABLE) == {(p, n) for p in Phase for n in EVENTS}
    for (phase, name), cell in TABLE.items():
        if isinstance(EVENTS[name], RECEIVES[phase]):
            assert cell != UNEXPECTED or phase is C, (phase, name)  # a guard in connecting
        else:
            assert cell == UNEXPECTED, (phase, name)


@pytest.mark.parametrize("name", sorted(STORIES))
def test_stories_before_the_head(name: str) -> None:
    """Cancels, fail-overs and which reason wins, before the response head."""
    check_cell(*STORIES[name])


def test_a_refused_call_marks_its_upstream_down_and_goes_to_the_spare() -> None:
    """The fail-over, decided here in one step: down, the spare, the request again."""
    machine = machine_after([Start()])
    assert machine.handle(SPARE) == [MarkDown(), TakeSpare(), Send()]
    effects = machine.handle(REFUSED)
    assert effects[0] == MarkDown(), "no spare: still marked down"
    assert comparable(effects[1:]) == comparable(answer(UNAVAILABLE, REFUSED.cause))


def test_a_refused_call_with_only_busy_live_upstreams_waits_again() -> None:
    """No spare free, but another upstream is up: down, and back into the queue (no 503)."""
    machine = machine_after([Start()])
    assert machine.handle(REQUEUE) == [MarkDown(), Requeue()]
    assert machine.phase is Phase.CONNECTING


def test_classify_asks_for_a_requeue_only_without_a_spare() -> None:
    """A requeue is asked for a refused call that has no spare; a spare wins."""
    refused = Failure(ConnectionRefusedError("no"))
    assert classify(refused, requeue=lambda: True, **TIMEOUTS).requeue
    both = classify(refused, spare=lambda: True, requeue=lambda: True, **TIMEOUTS)
    assert (both.spare, both.requeue) == (True, False)

    def asked() -> bool:
        raise AssertionError("a call that may not fail over is not requeued")

    assert not classify(Failure(CancelledError()), requeue=asked, **TIMEOUTS).requeue


def test_what_the_client_is_told_before_the_head() -> None:
    """The envelope names the reason that won: the cut, else the stall, else the failure."""
    cases: list[tuple[list[Event], GatewayError, str]] = [
        ([Start()], BROKEN, FAILED.cause),
        ([Start(), Stalled("upstream")], upstream_timeout(), stall_cause("upstream", IDLE)),
        ([Start(), Stalled("upstream"), Cut(DRAIN)], DRAIN, DRAIN.message),
    ]
    for before, error, cause in cases:
        effects = machine_after(before).handle(FAILED)
        assert comparable(effects) == comparable(answer(error, cause))


def comparable(effects: Sequence[Effect]) -> list[object]:
    """Effects with their errors as (class, message): exceptions compare by identity."""
    return [
        ("AnswerWith", type(e.error), e.error.message) if isinstance(e, AnswerWith) else e
        for e in effects
    ]


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


def side_of(effect: object) -> str | None:
    """The side an effect acts on."""
    if isinstance(effect, Send | CancelCall | StopUpstream):
        return "upstream"
    if isinstance(effect, StartResponse | AbortClient | AnswerWith):
        return "client"
    return None


def lets_go(effect: object) -> str | None:
    """The side an effect lets go: nothing may touch it afterwards."""
    if isinstance(effect, StopUpstream):
        return "upstream"
    if isinstance(effect, AbortClient):
        return "client"
    return None


def check(fed: Sequence[tuple[Event, list[Effect]]]) -> Finish | None:
    """The safety properties of one run (each event with its effects); its ``Finish``."""
    finish = check_run(fed, side_of, lets_go)
    head = False
    left = False
    for event, effects in fed:
        if isinstance(event, ClientLeft):
            left = True
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
                if effect.outcome == "ok":
                    assert event == BodyEnded(), "only a whole body ends ok"
                if effect.ending is Ending.ENVELOPE:
                    assert i > 0
                    assert isinstance(effects[i - 1], AnswerWith)
    return finish


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(ANY_EVENT, max_size=14))
def test_any_events_end_at_most_once(events: list[Event]) -> None:
    """Whatever is fed, in any order (production ignores what it cannot receive): at most one
    Finish, nothing after it, and the rest."""
    machine = ExchangeMachine(IDLE, strict=False)
    finish = check([(event, machine.handle(event)) for event in events])
    assert (finish is not None) is (machine.phase is Phase.DONE)


class World:
    """What Twisted promises the shell, as a model: which events can come next.

    A request sent is answered once (a cancelled one only fails; a refused one may have a
    spare); a relayed body ends once. The client, the watchdog, the drain and a bug can come
    at any time until the call ends; after it, only the client's connection and the body's end.
    """

    def __init__(self) -> None:
        self.out = False
        self.cancelled = False
        self.body = False
        self.over = False

    def apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send | Requeue):
                assert not self.out, "one request (or wait for one) at a time"
                self.out, self.cancelled = True, False
            elif isinstance(effect, CancelCall):
                assert self.out, "a cancel needs a request out"
                assert not self.cancelled, "one cancel"
                self.cancelled = True
            elif isinstance(effect, StartResponse):
                self.body = True
            elif isinstance(effect, Finish):
                self.over = True

    def next_events(self) -> list[Event]:
        if self.over:
            return [ClientLeft(), *([BodyEnded(TRUNCATED)] if self.body else [])]
        events: list[Event] = [ClientLeft(), Stalled("upstream"), Cut(DRAIN)]
        if self.out or self.body:
            # An exception in a callback of the request's (its answer handled) or the body's.
            events.append(Bug("bug"))
        if self.out:
            events += (
                [FAILED]
                if self.cancelled
                else [Response(200), REFUSED, SPARE, REQUEUE, WAITED_TOO_LONG, FAILED]
            )
        if self.body:
            events += [BodyEnded(), BodyEnded(TRUNCATED), Stalled("client")]
        return events

    def happened(self, event: Event) -> None:
        if isinstance(event, Response | CallFailed | Bug):
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
    body have; never two requests at once, never a cancel with none out; and the strict core
    can receive every event."""
    machine = ExchangeMachine(IDLE, strict=True)
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
