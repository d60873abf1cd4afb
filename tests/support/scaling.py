"""How a cost grows with its input: CPU time (``time.process_time``, so that a loaded machine's
scheduling does not count), compared between sizes as a ratio, never as an absolute time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

LINEAR_RATIO_BOUND: Final = 24
"""The most 8 times the input may cost, as a multiple: linear is 8, quadratic 64."""


def cpu_time(call: Callable[[], object]) -> float:
    """The least CPU time of two calls."""
    best = float("inf")
    for _ in range(2):
        started = time.process_time()
        call()
        best = min(best, time.process_time() - started)
    return max(best, 1e-4)
