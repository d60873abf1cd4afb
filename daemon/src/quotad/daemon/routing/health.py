"""What a target's recent outcomes say of its health: the last :data:`RECENT_OUTCOMES`
outcomes, its uptime, and a state for people (``quotad status``, ``quotad target list``).

Outcomes, one character each (``TargetStatus.recent``, oldest first)::

    .   a request answered (a caller's 4xx too: the target is up)
    x   a request failed: connect error, timeout, 5xx, a broken stream…
    r   a request was rate limited (429): not a health failure
    h   an active health check passed
    H   an active health check failed

States: ``unknown`` (no outcome yet), ``unhealthy`` (breaker open), ``degraded`` (breaker
half-open, or a failure among the last :data:`DEGRADED_WINDOW` outcomes), else ``healthy``.
Uptime is the share of time since the first outcome during which the breaker was closed.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Literal

from quotad.daemon.clock import Clock
from quotad.protocol.messages import BreakerState, HealthState

Outcome = Literal[".", "x", "r", "h", "H"]

OK: Final = "."
FAILED: Final = "x"
RATE_LIMITED: Final = "r"
CHECK_OK: Final = "h"
CHECK_FAILED: Final = "H"

RECENT_OUTCOMES: Final = 100
DEGRADED_WINDOW: Final = 10
_FAILURES: Final = frozenset({FAILED, CHECK_FAILED})


class TargetHealth:
    """A target's last outcomes and how long its breaker has been closed."""

    __slots__ = ("_clock", "_down_s", "_down_since", "_first_at", "_recent")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._recent: deque[str] = deque(maxlen=RECENT_OUTCOMES)
        self._first_at: float | None = None
        self._down_since: float | None = None
        self._down_s = 0.0

    def record(self, outcome: Outcome) -> None:
        """Note one outcome."""
        if self._first_at is None:
            self._first_at = self._clock.monotonic()
        self._recent.append(outcome)

    def breaker_changed(self, state: BreakerState) -> None:
        """Follow the breaker: time it is not closed counts as down."""
        now = self._clock.monotonic()
        if self._first_at is None:
            self._first_at = now
        if state == "closed":
            if self._down_since is not None:
                self._down_s += now - self._down_since
                self._down_since = None
        elif self._down_since is None:
            self._down_since = now

    def state(self, breaker: BreakerState) -> HealthState:
        """The state to show, given the breaker's."""
        if breaker == "open":
            return "unhealthy"
        if breaker == "half_open":
            return "degraded"
        if not self._recent:
            return "unknown"
        recent = self._recent
        start = max(0, len(recent) - DEGRADED_WINDOW)
        for index in range(start, len(recent)):
            if recent[index] in _FAILURES:
                return "degraded"
        return "healthy"

    def uptime_pct(self) -> float | None:
        """Percent of the time since the first outcome with the breaker closed; None before
        any outcome."""
        if self._first_at is None:
            return None
        now = self._clock.monotonic()
        observed = now - self._first_at
        if observed <= 0:
            return 100.0 if self._down_since is None else 0.0
        down = self._down_s + (now - self._down_since if self._down_since is not None else 0.0)
        return max(0.0, min(100.0, 100.0 * (1.0 - down / observed)))

    def recent(self) -> str:
        """The last outcomes, oldest first, one character each."""
        return "".join(self._recent)
