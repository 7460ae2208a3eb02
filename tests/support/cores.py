"""What the two cores' tests say of a run: where it went and how it ended, not which effects.

A table cell is a ``Then`` (the phase after the event, and the outcome if the event ended the
run) or ``UNEXPECTED`` (the phase cannot receive it: strict mode raises, production ignores).
``run`` feeds a core and keeps each batch; ``check_run`` holds what every run must, whatever
the effects are called: one ``Finish`` at most, the last effect of its batch, nothing after it,
and nothing on a side after that side was let go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from attrs import frozen

from aistack_tts.call._events import Finish


class Core(Protocol):
    phase: Any

    def handle(self, event: Any) -> list[Any]: ...


@frozen
class Then:
    """After the event: the core's phase, and the ``Finish``'s outcome if it ended the run."""

    phase: StrEnum
    outcome: str | None = None


#: The phase cannot receive the event.
UNEXPECTED = "unexpected"

Cell = Then | str


def then(core: Core, effects: Sequence[object]) -> Then:
    """What a batch did, as a table says it."""
    finishes = [e for e in effects if isinstance(e, Finish)]
    assert len(finishes) <= 1
    return Then(core.phase, finishes[0].outcome if finishes else None)


def run(core: Core, events: Iterable[object]) -> list[tuple[object, list[Any]]]:
    """Each event fed to ``core``, with its effects."""
    return [(event, core.handle(event)) for event in events]


def check_run(
    fed: Sequence[tuple[object, Sequence[object]]],
    side_of: Callable[[object], str | None],
    lets_go: Callable[[object], str | None],
) -> Finish | None:
    """The properties of every run; its ``Finish``.

    ``side_of``: the side (``"client"``, ``"upstream"``) an effect acts on, if any;
    ``lets_go``: the side an effect closes or aborts (nothing may touch it afterwards).
    """
    finish: Finish | None = None
    gone: set[str] = set()
    for _event, effects in fed:
        assert finish is None or list(effects) == [], "nothing after the Finish"
        for i, effect in enumerate(effects):
            if isinstance(effect, Finish):
                assert i == len(effects) - 1, "the Finish is the last effect"
                finish = effect
                continue
            side = side_of(effect)
            assert side is None or side not in gone, f"{effect!r} after its side was let go"
            closed = lets_go(effect)
            if closed is not None:
                gone.add(closed)
    return finish
