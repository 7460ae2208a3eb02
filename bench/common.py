"""Units, the progress log and the statistics every scenario uses."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

from bench.stall_and_disconnect import percentile

MiB = 1024 * 1024
MB = 1000 * 1000
GB = 1000 * MB


def log(message: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """``names`` starting at ``turn`` (mod its length): who goes first changes per round."""
    if not names:
        return []
    k = turn % len(names)
    return [*names[k:], *names[:k]]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (as ``bench/stall_and_disconnect.py`` computes it)."""
    return float(percentile(list(values), 0.99))
