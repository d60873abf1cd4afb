"""The circuit breaker of one target (DESIGN §8 Failover; ``breaker = {...}`` of a provider).

States and transitions::

    closed ──(failures consecutive failures, or ≥ min_calls calls in window_s
    │         with a failure share ≥ failure_ratio)──▶ open
    open ──(cooldown over; or a health check succeeded)──▶ half_open
    half_open ──(probes trial calls all succeeded)──▶ closed
    half_open ──(a trial call failed)──▶ open again, with a longer cooldown

The cooldown of the n-th open in a row (opens since the breaker last closed) is
``cooldown_s * 2ⁿ⁻¹``, capped at ``max_cooldown_s`` (by default 10 * ``cooldown_s``). While
open, nothing is admitted; while half-open, at most ``probes`` trial calls are admitted in all
(in flight or done).

A call is admitted by :meth:`CircuitBreaker.admit`, which returns a *ticket*; its outcome is
told with that ticket: :meth:`~CircuitBreaker.succeeded`, :meth:`~CircuitBreaker.failed` or
:meth:`~CircuitBreaker.released` (an outcome that says nothing of the target's health: a 429, a
cancelled call). A ticket names the breaker's epoch (it grows at each transition), so that a
call admitted before a transition cannot count as a probe after it. Time comes from the
injected :class:`~quotad.daemon.clock.Clock`; the open → half-open transition happens when the
state is next read. Every transition is reported to ``on_change``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from quotad.daemon.clock import Clock
from quotad.daemon.config import BreakerConfig
from quotad.protocol.messages import BreakerState

Ticket = int
"""What :meth:`CircuitBreaker.admit` hands out: the epoch the call was admitted in."""
NO_TICKET: Final = -1
"""For an outcome of no admitted call (a stream that broke after its attempt ended)."""

OnChange = Callable[[BreakerState, BreakerState, str], None]
"""Called with (old state, new state, reason) at every transition."""


class CircuitBreaker:
    """closed → open → half-open → closed, on a target's outcomes (see the module docstring)."""

    __slots__ = (
        "_calls",
        "_clock",
        "_config",
        "_consecutive",
        "_cooldown_s",
        "_epoch",
        "_failures_in_window",
        "_max_cooldown_s",
        "_on_change",
        "_opened_at",
        "_probe_successes",
        "_probes_admitted",
        "_state",
        "opens",
        "streak",
    )

    def __init__(
        self, config: BreakerConfig, clock: Clock, on_change: OnChange | None = None
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_change = on_change
        cap = config.max_cooldown_s
        self._max_cooldown_s = max(config.cooldown_s, cap) if cap else 10 * config.cooldown_s
        self._state: BreakerState = "closed"
        self._epoch = 0
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (time, failed) within window_s
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._cooldown_s = config.cooldown_s
        self._probes_admitted = 0
        self._probe_successes = 0
        self.streak = 0
        """Opens in a row since the breaker last closed (the cooldown grows with it)."""
        self.opens = 0
        """Opens since the daemon started."""

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cooldown is over turns half-open here)."""
        if self._state == "open" and self._clock.monotonic() >= self.reopens_at:
            self._move("half_open", f"cooldown of {self._cooldown_s:g} s over")
        return self._state

    @property
    def reopens_at(self) -> float:
        """When an open breaker turns half-open (monotonic seconds)."""
        return self._opened_at + self._cooldown_s

    @property
    def cooldown_s(self) -> float:
        """The cooldown of the current (or last) open."""
        return self._cooldown_s

    # ------------------------------------------------------------------ admission and outcomes

    def admit(self) -> Ticket | None:
        """A ticket when a call may go to the target now; None when it must be skipped."""
        state = self.state
        if state == "closed":
            return self._epoch
        if state == "half_open" and self._probes_admitted < self._config.probes:
            self._probes_admitted += 1
            return self._epoch
        return None

    def succeeded(self, ticket: Ticket) -> None:
        """The call answered well (a caller's 4xx counts: the target is up)."""
        if self._state == "closed":
            self._consecutive = 0
            self._count(False)
        elif self._state == "half_open" and ticket == self._epoch:
            self._probe_succeeded("a trial call succeeded")

    def failed(self, ticket: Ticket) -> None:
        """The call failed in a way that says the target is unwell (connect error, timeout,
        5xx, a broken stream…)."""
        if self._state == "closed":
            self._consecutive += 1
            self._count(True)
            config = self._config
            if self._consecutive >= config.failures:
                plural = "s" if self._consecutive > 1 else ""
                self._open(f"{self._consecutive} failure{plural} in a row")
            elif len(
                self._calls
            ) >= config.min_calls and self._failures_in_window >= config.failure_ratio * len(
                self._calls
            ):
                self._open(
                    f"{self._failures_in_window} of {len(self._calls)} calls failed "
                    f"in {config.window_s:g} s"
                )
        elif self._state == "half_open" and ticket == self._epoch:
            self._open("a trial call failed")

    def released(self, ticket: Ticket) -> None:
        """The call ended with nothing learnt of the target's health (429, cancelled):
        a trial slot it held is given back."""
        if self._state == "half_open" and ticket == self._epoch and self._probes_admitted:
            self._probes_admitted -= 1

    def health_check_passed(self) -> None:
        """An active health check succeeded: an open breaker turns half-open at once, and the
        check counts as one successful trial call (with ``probes = 1`` it closes)."""
        state = self.state
        if state == "open":
            self._move("half_open", "a health check succeeded")
        if self._state == "half_open":
            self._probe_succeeded("a health check succeeded")

    def reset(self, reason: str = "reset by the operator") -> None:
        """Close the breaker and forget its counts."""
        self._calls.clear()
        self._failures_in_window = 0
        self._consecutive = 0
        self.streak = 0
        if self._state != "closed":
            self._move("closed", reason)

    # ------------------------------------------------------------------ internals

    def _count(self, failed: bool) -> None:
        now = self._clock.monotonic()
        calls = self._calls
        calls.append((now, failed))
        self._failures_in_window += failed
        horizon = now - self._config.window_s
        while calls and calls[0][0] <= horizon:
            self._failures_in_window -= calls.popleft()[1]

    def _probe_succeeded(self, reason: str) -> None:
        self._probe_successes += 1
        if self._probe_successes >= self._config.probes:
            self.reset(reason)  # half-open here, so it closes

    def _open(self, reason: str) -> None:
        self.streak += 1
        self.opens += 1
        self._cooldown_s = min(
            self._max_cooldown_s, self._config.cooldown_s * 2.0 ** min(self.streak - 1, 62)
        )
        self._opened_at = self._clock.monotonic()
        self._move("open", f"{reason}; cooldown {self._cooldown_s:g} s")

    def _move(self, state: BreakerState, reason: str) -> None:
        old = self._state
        self._state = state
        self._epoch += 1
        self._probes_admitted = 0
        self._probe_successes = 0
        if self._on_change is not None:
            self._on_change(old, state, reason)
