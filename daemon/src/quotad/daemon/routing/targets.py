"""A target: one ``provider/model``, with what routing keeps of it: its circuit breaker, its
health, its retry budget, its latency (an EWMA) and its counts.

Every outcome of a call to a target goes through one of the methods of :class:`Target`, so
that breaker, health, latency and counts always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from quotad.daemon.providers.base import Provider
from quotad.daemon.routing.breaker import NO_TICKET, CircuitBreaker, Ticket
from quotad.daemon.routing.health import (
    CHECK_FAILED,
    CHECK_OK,
    FAILED,
    OK,
    RATE_LIMITED,
    TargetHealth,
)
from quotad.daemon.routing.retry import RetryBudget

LATENCY_EWMA_WEIGHT: Final = 0.3
"""Weight of the newest latency sample in the moving average."""
FAILURE_LATENCY_PENALTY_S: Final = 1.0
"""Added to a failed call's duration when it enters the latency average, so that a target
failing fast never looks fast."""


@dataclass(slots=True, eq=False, repr=False)
class Target:
    """One ``provider/model`` and what the daemon knows of it."""

    name: str
    provider_name: str
    model: str
    provider: Provider
    breaker: CircuitBreaker
    health: TargetHealth
    retry_budget: RetryBudget
    enabled: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_ewma_s: float | None = None
    latency_at: float | None = None
    """When the latency was last measured (monotonic seconds); None before any call."""

    def __repr__(self) -> str:
        return f"Target({self.name!r})"

    def answered(self, ticket: Ticket, latency_s: float, now: float) -> None:
        """A call answered (a caller's 4xx included: the target is up)."""
        self.breaker.succeeded(ticket)
        self.health.record(OK)
        self._observe_latency(latency_s, now)

    def failed(self, ticket: Ticket, latency_s: float, now: float) -> None:
        """A call failed in a way that says the target is unwell."""
        self.failures += 1
        self.breaker.failed(ticket)
        self.health.record(FAILED)
        self._observe_latency(latency_s + FAILURE_LATENCY_PENALTY_S, now)

    def rate_limited(self, ticket: Ticket) -> None:
        """A call was answered 429: the target is up but full (the gates pause it)."""
        self.breaker.released(ticket)
        self.health.record(RATE_LIMITED)

    def released(self, ticket: Ticket) -> None:
        """A call ended with nothing learnt (cancelled, or the request's deadline came)."""
        self.breaker.released(ticket)

    def stream_broke(self) -> None:
        """A stream broke after its first chunk (its attempt had already succeeded)."""
        self.failures += 1
        self.breaker.failed(NO_TICKET)
        self.health.record(FAILED)

    def check_passed(self) -> None:
        """An active health check passed: an open breaker turns half-open at once and the
        check counts as a successful trial call."""
        self.health.record(CHECK_OK)
        self.breaker.health_check_passed()

    def check_failed(self) -> None:
        """An active health check failed (no answer in time, connect error, 5xx)."""
        self.health.record(CHECK_FAILED)
        self.breaker.failed(NO_TICKET)

    def check_rate_limited(self) -> None:
        """An active health check was answered 429: full, not unwell."""
        self.health.record(RATE_LIMITED)

    def _observe_latency(self, latency_s: float, now: float) -> None:
        previous = self.latency_ewma_s
        if previous is None:
            self.latency_ewma_s = latency_s
        else:
            self.latency_ewma_s = previous + LATENCY_EWMA_WEIGHT * (latency_s - previous)
        self.latency_at = now
