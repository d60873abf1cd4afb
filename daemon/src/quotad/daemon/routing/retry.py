"""How long to wait before a retry, and how many retries load may carry (``[retry]``).

:class:`Backoff` is exponential backoff with full jitter: before retry *n* (1, 2, …) it waits
``uniform(0, min(max_s, base_s · 2ⁿ⁻¹))``, so that clients that failed together do not come back
together. A provider's ``retry-after`` is a floor on that wait (the attempt loop applies it).

:class:`RetryBudget` keeps retries to a share of requests over a sliding window (Envoy's retry
budget): a retry is allowed while the retries of the last ``budget_window_s`` seconds stay under
``max(budget_min, budget_ratio * requests)``. When a provider goes down, its first attempts
still fail over at once, but retries of the same target stop at that share, so an outage never
multiplies the load on it. Both read time from the injected :class:`~quotad.daemon.clock.Clock`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from quotad.daemon.clock import Clock
from quotad.daemon.config import RetryConfig


class Backoff:
    """Exponential backoff with full jitter, capped at ``max_s``."""

    __slots__ = ("_base_s", "_max_s", "_rng")

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._rng = rng or random.Random()

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first retry)."""
        return min(self._max_s, self._base_s * 2.0 ** min(retry - 1, 62))

    def delay(self, retry: int) -> float:
        """A wait before retry number ``retry``: uniform in ``[0, ceiling(retry)]``."""
        return self._rng.uniform(0.0, self.ceiling(retry))


class RetryBudget:
    """Retries as a share of requests over a sliding window, with a floor."""

    __slots__ = ("_clock", "_minimum", "_ratio", "_requests", "_retries", "_window_s")

    def __init__(self, ratio: float, minimum: int, window_s: float, clock: Clock) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._window_s = window_s
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    @classmethod
    def from_config(cls, config: RetryConfig, clock: Clock) -> RetryBudget:
        """The budget ``[retry]`` describes."""
        return cls(config.budget_ratio, config.budget_min, config.budget_window_s, clock)

    def record_request(self) -> None:
        """Count a first attempt: it earns ``ratio`` of a retry."""
        now = self._clock.monotonic()
        self._requests.append(now)
        self._prune(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (nothing taken) when it is spent."""
        now = self._clock.monotonic()
        self._prune(now)
        if len(self._retries) + 1 > self.allowed():
            return False
        self._retries.append(now)
        return True

    def allowed(self) -> float:
        """How many retries the current window allows."""
        return max(float(self._minimum), self._ratio * len(self._requests))

    def clear(self) -> None:
        """Forget the window: a fresh budget (``quotad target reset``)."""
        self._requests.clear()
        self._retries.clear()

    @property
    def retries(self) -> int:
        """Retries taken within the window."""
        self._prune(self._clock.monotonic())
        return len(self._retries)

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        for times in (self._requests, self._retries):
            while times and times[0] <= horizon:
                times.popleft()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``[retry]`` as the attempt loop uses it, built once per config."""

    attempts: int
    """Attempts per request, at least one per target of its route."""
    backoff: Backoff
    max_wait_s: float
    """The longest wait before a retry: a ``retry-after`` beyond it is not waited for."""
    deadline_s: float
    """A request's whole time for its attempts and waits, from its arrival."""

    @classmethod
    def from_config(cls, config: RetryConfig, rng: random.Random | None = None) -> RetryPolicy:
        """The policy ``[retry]`` describes."""
        return cls(
            attempts=config.attempts,
            backoff=Backoff(config.base_s, config.max_s, rng),
            max_wait_s=config.max_s,
            deadline_s=config.deadline_s,
        )
