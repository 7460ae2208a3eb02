"""The pool of upstreams: round robin among free GPUs, cool-downs, and the bounded wait."""

from __future__ import annotations

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.task import Clock

from aistack_tts._config import Origin
from aistack_tts.call._slot import GPUSlot
from aistack_tts.call._upstreams import Grant, Upstream, UpstreamPool, WaitTimedOut


def make_pool(n: int = 3, tokens: int = 1) -> tuple[Clock, UpstreamPool]:
    clock = Clock()
    upstreams = [
        Upstream(Origin.parse(f"http://gpu{i}:8091"), GPUSlot(DeferredSemaphore(tokens), clock))
        for i in range(n)
    ]
    return clock, UpstreamPool(upstreams, clock)


def names(grants: list[Grant | None]) -> list[str | None]:
    return [g.upstream.url[7:11] if g else None for g in grants]


def test_round_robin_among_free_upstreams() -> None:
    """Each new call goes to the next free GPU; a busy one is skipped; all busy is None."""
    _clock, pool = make_pool(3)
    first = [pool.try_take() for _ in range(4)]
    assert names(first) == ["gpu0", "gpu1", "gpu2", None]
    assert first[1] is not None
    first[1].hold.release()
    assert names([pool.try_take()]) == ["gpu1"]


def test_round_robin_spreads_sequential_calls() -> None:
    """Calls one after another still rotate over the GPUs."""
    _clock, pool = make_pool(2)
    order = []
    for _ in range(4):
        grant = pool.try_take()
        assert grant is not None
        order.append(grant.upstream.url[7:11])
        grant.hold.release()
    assert order == ["gpu0", "gpu1", "gpu0", "gpu1"]


def test_down_upstream_is_skipped_for_the_cooldown() -> None:
    """An upstream that refused a connection is skipped until its cool-down ends."""
    clock, pool = make_pool(2)
    pool.mark_down(pool.upstreams[0])
    grant = pool.try_take()
    assert names([grant]) == ["gpu1"]
    assert grant is not None
    grant.hold.release()
    assert names([pool.try_take()]) == ["gpu1"]
    assert not pool.all_down()
    pool.mark_down(pool.upstreams[1])
    assert pool.all_down()
    assert pool.try_take() is None
    clock.advance(5)
    assert not pool.all_down()
    assert pool.try_take() is not None


def test_pick_for_slot_free_calls_skips_down_upstreams() -> None:
    """Slot-exempt calls rotate too, over reachable upstreams, holding no slot."""
    _clock, pool = make_pool(3)
    pool.mark_down(pool.upstreams[1])
    assert [pool.pick().url[7:11] for _ in range(3)] == ["gpu0", "gpu2", "gpu0"]
    assert all(u.slot.semaphore.tokens == 1 for u in pool.upstreams)


def test_retry_after_is_the_soonest_release() -> None:
    """With every GPU busy, Retry-After estimates the soonest one to free."""
    clock, pool = make_pool(2)
    for upstream, seconds in zip(pool.upstreams, (20, 8), strict=True):
        hold = upstream.slot.try_take()
        assert hold is not None
        clock.advance(seconds)
        hold.release()
    for _ in range(2):
        assert pool.try_take() is not None
    clock.advance(3)
    assert pool.retry_after().seconds == 5  # gpu1: 8 s on average, 3 s in


def test_wait_serves_first_come_first_served() -> None:
    """Waiters get freed slots in arrival order."""
    _clock, pool = make_pool(1)
    held = pool.try_take()
    assert held is not None
    got: list[str] = []
    first, second = pool.wait(5), pool.wait(5)
    first.addCallback(lambda g: got.append("first"))
    second.addCallback(lambda g: got.append("second"))
    held.hold.release()
    assert got == ["first"]


def test_wait_takes_the_first_slot_to_free_on_any_upstream() -> None:
    """Waiting on two busy GPUs, the first that frees is taken; the other queue is left."""
    _clock, pool = make_pool(2)
    held = [pool.try_take(), pool.try_take()]
    result: list[Grant] = []
    pool.wait(5).addCallback(result.append)
    assert held[1] is not None
    held[1].hold.release()
    assert names(list[Grant | None](result)) == ["gpu1"]
    assert held[0] is not None
    held[0].hold.release()
    assert pool.upstreams[0].slot.semaphore.tokens == 1, "the waiter left gpu0's queue"


def test_wait_times_out() -> None:
    """No slot within the queue timeout: WaitTimedOut, and no queue entry is left behind."""
    clock, pool = make_pool(1)
    held = pool.try_take()
    assert held is not None
    failures: list[object] = []
    pool.wait(2).addErrback(lambda f: failures.append(f.trap(WaitTimedOut)))
    clock.advance(2)
    assert failures == [WaitTimedOut]
    held.hold.release()
    assert pool.upstreams[0].slot.semaphore.tokens == 1


def test_cancelled_wait_leaves_the_queue() -> None:
    """A client that disconnects while waiting leaves at once; the next waiter is served."""
    clock, pool = make_pool(1)
    held = pool.try_take()
    assert held is not None
    gone = pool.wait(5)
    gone.addErrback(lambda f: None)
    next_: list[Grant] = []
    pool.wait(5).addCallback(next_.append)
    gone.cancel()
    held.hold.release()
    assert len(next_) == 1
    assert not clock.getDelayedCalls()


def test_wait_is_served_by_work_sharing_the_semaphore() -> None:
    """An in-process workload releasing the shared semaphore hands the slot to the waiter."""
    _clock, pool = make_pool(1)
    shared = pool.upstreams[0].slot.semaphore
    outside = shared.acquire()
    assert outside.called
    result: list[Grant] = []
    pool.wait(5).addCallback(result.append)
    shared.release()
    assert len(result) == 1
    result[0].hold.release()
    assert shared.tokens == 1


def test_spare_names_what_try_take_would_take_and_takes_nothing() -> None:
    """The fail-over's question (is a spare free?) and its move agree, and asking is free."""
    clock, pool = make_pool(3)
    busy = pool.upstreams[1].slot.try_take()
    pool.mark_down(pool.upstreams[2])
    tried = [pool.upstreams[0]]
    assert pool.spare(exclude=tried) is None, "gpu1 is busy, gpu2 down"
    assert busy is not None
    busy.release()
    spare = pool.spare(exclude=tried)
    assert [u.slot.free for u in pool.upstreams] == [True, True, True], "nothing taken"
    grant = pool.try_take(exclude=tried)
    assert grant is not None
    assert grant.upstream is spare is pool.upstreams[1]
    clock.advance(5)
    assert pool.spare(exclude=[pool.upstreams[0], pool.upstreams[1]]) is pool.upstreams[2]
