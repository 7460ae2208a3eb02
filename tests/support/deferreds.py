"""Looking at a Deferred without a reactor: the result it already has, or whether it fired."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def result_of(d: Deferred[T]) -> T:
    """The result a Deferred already has (its failure is raised)."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, f"{d!r} has no result yet"
    return results[0]


def has_result(d: Deferred[Any]) -> bool:
    """Whether ``d`` has fired (and is not waiting on another Deferred); its result is kept."""
    seen: list[object] = []

    def look(result: object) -> object:
        seen.append(result)
        return result

    d.addBoth(look)
    return bool(seen)
