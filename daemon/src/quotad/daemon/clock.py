"""Time, injected: gates, breakers and budgets read it from a :class:`Clock`, so tests run them
on a :class:`VirtualClock` that only moves when told to."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of monotonic time (for intervals) and wall time (for records and periods)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clocks."""

    __slots__ = ()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()


class VirtualClock:
    """A clock for tests: it stands still until :meth:`advance` moves it."""

    __slots__ = ("_epoch_offset", "_now")

    def __init__(self, start: float = 1000.0, epoch: float = 1_790_000_000.0) -> None:
        self._now = start
        self._epoch_offset = epoch - start

    def monotonic(self) -> float:
        """The virtual now."""
        return self._now

    def time(self) -> float:
        """The virtual now as wall time."""
        return self._now + self._epoch_offset

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._now += seconds


SYSTEM_CLOCK = SystemClock()
