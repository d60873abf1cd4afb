"""One request's walk over its route's targets (DESIGN §8 Failover): which target to try next,
what each outcome means, and the error when none answered.

The broker drives it (``Broker._attempt_targets``)::

    while (target := await attempts.next_target()) is not None:
        attempts.started(target)
        try: result = await call(target)
        except ProviderError as error: attempts.failed(target, error); continue
        except BaseException: attempts.abandoned(target, at_deadline=...); raise
        attempts.succeeded(target); return result
    raise attempts.exhausted(at_deadline=...)

The first pass tries each target once, in the strategy's order, skipping (at no cost) those
disabled and those whose breaker does not admit a call. Outcomes:

- connect error, timeout, 5xx, 408/409, 429, a stream that broke before its first chunk:
  on to the next target; the target may be retried in a later pass;
- an answer that cannot be understood (``protocol``): on to the next target, no retry there;
- any other 4xx: the caller's error, raised at once as ``bad_request`` with the provider's
  status and message.

Later passes retry the targets that failed retryably, while attempts remain (``retry.attempts``,
at least one per target): each waits a backoff with full jitter, and at least the target's
``retry-after``; a retry is given up when that wait exceeds ``retry.max_s``, would end after the
request's deadline, or the target's retry budget is spent. A 429 pauses nothing here (the
gates do that) and never counts against a breaker.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from quotad.daemon.clock import Clock
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ProviderError
from quotad.daemon.routing.breaker import NO_TICKET, Ticket
from quotad.daemon.routing.retry import RetryPolicy
from quotad.daemon.routing.targets import Target

Sleep = Callable[[float], Awaitable[None]]


class Attempts:
    """The attempts of one request at the targets of one route."""

    __slots__ = (
        "_clock",
        "_deadline",
        "_half_open_in",
        "_made",
        "_max_attempts",
        "_max_wait_s",
        "_not_before",
        "_pass",
        "_policy",
        "_queue",
        "_records",
        "_retry_at",
        "_retryable",
        "_route",
        "_running",
        "_skipped",
        "_sleep",
        "_started_at",
        "_ticket",
    )

    def __init__(
        self,
        route: str,
        order: list[Target],
        policy: RetryPolicy,
        clock: Clock,
        started: float,
        sleep: Sleep,
        max_wait_s: float | None = None,
    ) -> None:
        self._route = route
        self._max_wait_s = max_wait_s
        """The request's own bound on waiting for capacity: a provider's retry-after too."""
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._deadline = started + policy.deadline_s
        self._queue = deque(order)
        self._max_attempts = max(policy.attempts, len(order))
        self._pass = 0
        self._made = 0
        self._retryable: list[Target] = []
        self._retry_at = 0.0
        self._not_before: dict[Target, float] = {}
        self._records: list[dict[str, Any]] = []
        self._skipped: dict[str, str] = {}
        self._running: Target | None = None
        self._ticket: Ticket = NO_TICKET
        self._started_at = 0.0
        self._half_open_in: float | None = None

    def time_left_s(self) -> float:
        """Seconds until the request's deadline."""
        return max(0.0, self._deadline - self._clock.monotonic())

    # ------------------------------------------------------------------ the walk

    async def next_target(self) -> Target | None:
        """The target to try next, its breaker's admission taken; None when no attempt is
        left (after waiting a backoff when the next attempt is a retry)."""
        while True:
            while self._queue:
                target = self._queue.popleft()
                if self._pass and not await self._wait_to_retry(target):
                    continue
                if self._admit(target):
                    return target
            if not self._next_pass():
                return None

    def alternatives(self) -> bool:
        """Whether another target is left to try in this pass."""
        return bool(self._queue)

    def passed_over(self, target: Target, why: str) -> None:
        """``target`` was not tried after all (its gates are full and another target is left):
        its trial slot is given back and the skip is noted."""
        target.released(self._ticket)
        self._skipped[target.name] = why

    def started(self, target: Target) -> None:
        """The call to ``target`` begins (after any gate wait): count it, time it."""
        self._made += 1
        if self._pass == 0:
            target.retry_budget.record_request()
        target.requests += 1
        target.in_flight += 1
        self._running = target
        self._started_at = self._clock.monotonic()

    def succeeded(self, target: Target) -> None:
        """The call answered."""
        latency_s, now = self._end(target)
        target.answered(self._ticket, latency_s, now)

    def failed(self, target: Target, error: ProviderError) -> None:
        """The call failed: note it on the target and decide whether it may be retried.
        A caller's 4xx is raised at once as ``bad_request``."""
        latency_s, now = self._end(target)
        self._records.append(
            {
                "target": target.name,
                "kind": error.kind,
                "status": error.status,
                "message": error.message,
            }
        )
        if error.kind == "client":
            target.answered(self._ticket, latency_s, now)
            said = (  # no status: quotad's adapter refused it, no provider was asked
                f"refused the request (HTTP {error.status})"
                if error.status is not None
                else "cannot take the request"
            )
            details: dict[str, Any] = {"attempts": self._records, "status": error.status}
            if error.field is not None:
                details["field"] = error.field  # the HTTP error's param
            raise RequestError(
                "bad_request", f"{target.name} {said}: {error.message}", details=details
            )
        if error.kind == "rate_limited":
            target.rate_limited(self._ticket)
            if error.retry_after_s:
                self._not_before[target] = now + error.retry_after_s
        else:
            target.failed(self._ticket, latency_s, now)
        if error.retryable:
            self._retryable.append(target)

    def abandoned(self, target: Target, *, at_deadline: bool = False) -> None:
        """The attempt ended without an outcome: cancelled, or cut at the deadline (the
        target's trial slot, if it held one, is given back). ``at_deadline``: the caller's
        deadline cut it (its clock, the event loop's, may get there before this one's)."""
        if self._running is target:
            _, now = self._end(target)
            if at_deadline or now >= self._deadline:
                self._records.append(
                    {
                        "target": target.name,
                        "kind": "timeout",
                        "status": None,
                        "message": "still unanswered at the request's deadline",
                    }
                )
        target.released(self._ticket)

    # ------------------------------------------------------------------ the error

    def exhausted(self, *, at_deadline: bool = False) -> RequestError:
        """The error when no attempt answered: ``timeout`` past the deadline (or
        ``at_deadline``: the caller's deadline ended the walk), ``rate_limited`` when every
        attempt was, else ``upstream_error``."""
        records = self._records
        details: dict[str, Any] = {"attempts": records}
        if self._skipped:
            details["skipped"] = dict(self._skipped)
        tried = "; ".join(_describe(record) for record in records)
        skipped = "; ".join(f"{name}: {why}" for name, why in self._skipped.items())
        if at_deadline or self._clock.monotonic() >= self._deadline:
            return RequestError(
                "timeout",
                f"no target of {self._route!r} answered within the request's deadline "
                f"({self._policy.deadline_s:g} s)" + (f": {tried}" if tried else ""),
                details=details,
            )
        if not records:
            return RequestError(
                "upstream_error",
                f"no target of {self._route!r} can take requests now: {skipped}",
                retry_after_s=self._half_open_in,
                details=details,
            )
        retry_after_s = self._shortest_retry_after()
        if all(record["kind"] == "rate_limited" for record in records):
            return RequestError(
                "rate_limited",
                f"every target of {self._route!r} is rate limited: {tried}",
                retry_after_s=retry_after_s,
                details=details,
            )
        also = f" (skipped: {skipped})" if skipped else ""
        return RequestError(
            "upstream_error",
            f"every attempt at {self._route!r} failed: {tried}{also}",
            retry_after_s=retry_after_s,
            details=details,
        )

    # ------------------------------------------------------------------ internals

    def _admit(self, target: Target) -> bool:
        if not target.enabled:
            self._skipped[target.name] = "disabled by the operator"
            return False
        ticket = target.breaker.admit()
        if ticket is None:
            breaker = target.breaker
            if breaker.state == "open":
                left = max(0.0, breaker.reopens_at - self._clock.monotonic())
                self._skipped[target.name] = f"circuit open (half-open in {left:.1f} s)"
                if self._half_open_in is None or left < self._half_open_in:
                    self._half_open_in = left
            else:
                self._skipped[target.name] = "circuit half-open, its trial calls under way"
            return False
        self._ticket = ticket
        return True

    def _next_pass(self) -> bool:
        """Queue the targets to retry; False when nothing is left to try."""
        if not self._retryable or self._made >= self._max_attempts:
            return False
        self._pass += 1
        self._queue.extend(self._retryable)
        self._retryable = []
        self._retry_at = self._clock.monotonic() + self._policy.backoff.delay(self._pass)
        return True

    async def _wait_to_retry(self, target: Target) -> bool:
        """Wait before retrying ``target``; False (no wait) when the retry is given up."""
        if self._made >= self._max_attempts:
            return False
        ready = max(self._retry_at, self._not_before.get(target, 0.0))
        wait = ready - self._clock.monotonic()
        if wait > self._policy.max_wait_s:
            self._skipped[target.name] = (
                f"not retried: it asks to wait {wait:.1f} s, over retry.max_s "
                f"({self._policy.max_wait_s:g} s)"
            )
            return False
        if self._max_wait_s is not None and wait > self._max_wait_s:
            self._skipped[target.name] = (
                f"not retried: it asks to wait {wait:.1f} s, over the request's max_wait_s "
                f"({self._max_wait_s:g} s)"
            )
            return False
        if ready >= self._deadline:
            self._skipped[target.name] = "not retried: no time left before the deadline"
            return False
        if not target.retry_budget.try_spend():
            self._skipped[target.name] = "not retried: its retry budget is spent"
            return False
        if wait > 0:
            await self._sleep(wait)
        return True

    def _end(self, target: Target) -> tuple[float, float]:
        """Close the running attempt; its duration (0 if it was not running) and the time
        now, read once."""
        now = self._clock.monotonic()
        if self._running is not target:
            return 0.0, now
        self._running = None
        target.in_flight -= 1
        return now - self._started_at, now

    def _shortest_retry_after(self) -> float | None:
        if not self._not_before:
            return None
        now = self._clock.monotonic()
        return max(0.0, min(self._not_before.values()) - now)


def _describe(record: dict[str, Any]) -> str:
    status = f" HTTP {record['status']}" if record["status"] else ""
    return f"{record['target']}: {record['kind']}{status}: {record['message']}"
