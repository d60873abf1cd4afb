"""The permit path (DESIGN §5, ``Acquire`` / ``Settle``): a place on a target's gates for a
caller that calls the provider itself, with its own SDK, and still shares the limits.

A different request kind from the pipeline's: no budget, no cache, no provider call, no
ledger row; only step 4 (gate admission, the same one a request through the daemon takes),
and step 6's feedback when the caller settles (its real usage, the provider's rate-limit
headers it passes on, a 429's pause). A permit not settled within its lease is settled as
reserved by the gates; one whose connection closed is settled at once
(:meth:`Permits.settle_abandoned`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from quotad.daemon.caller import Caller
from quotad.daemon.clock import Clock
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Demand, Gates, Reservation
from quotad.daemon.providers.ratelimits import parse_rate_limits
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS
from quotad.daemon.request_limits import check_name
from quotad.daemon.routing import Router, Target
from quotad.protocol.messages import Acquire, Ok, Permit, Settle

DEFAULT_429_PAUSE_S: Final = 1.0
"""How long a 429 without retry-after pauses its target."""


class Permits:
    """Grants and settles permits on the gates (see the module docstring)."""

    def __init__(self, gates: Gates, router: Router, clock: Clock) -> None:
        self.gates = gates
        self.router = router
        """The current router (a reload replaces it)."""
        self.clock = clock

    def acquire_now(self, request: Acquire, caller: Caller) -> Permit | None:
        """A permit at once when the gates admit it without waiting (nobody waits ahead of it
        and it fits now); None when it has to wait (:meth:`acquire`). Lets the socket server
        answer an uncontended Acquire in its read callback, without a task."""
        target, demand, _ = self._demand(request, caller)
        reservation = self.gates.admit_now(demand)
        if reservation is None:
            return None
        return self._grant(request, target, reservation, 0.0)

    async def acquire(self, request: Acquire, caller: Caller) -> Permit:
        """A permit on a target's gates: the same admission a request through the daemon
        would take, waiting in the queue up to the request's ``max_wait_s``."""
        target, demand, app = self._demand(request, caller)
        priority = request.priority or self.gates.app_policy(app).priority
        reservation, waited = await self.gates.admit(
            demand, app=app, priority=priority, max_wait_s=request.max_wait_s
        )
        return self._grant(request, target, reservation, waited)

    def settle(self, request: Settle, caller: Caller) -> Ok:
        """Settle a permit with what the call really used, and learn from the provider's
        rate-limit headers the caller passes on (a 429 pauses the target). Never waits."""
        held = self.gates.permits.take(request.permit_id)
        if held is None:
            raise RequestError(
                "bad_request",
                f"permit_id: permit {request.permit_id!r} is unknown, already settled or past "
                "its lease",
                details={"field": "permit_id"},
            )
        used = request.tokens_used or (request.prompt_tokens or 0) + (
            request.completion_tokens or 0
        )
        if request.status == "cancelled":
            self.gates.cancel(held.reservation)
        else:
            self.gates.settle(held.reservation, used or None)
        info = parse_rate_limits(request.headers) if request.headers else NO_RATE_LIMITS
        self.gates.observe(held.provider, held.target, info)
        if request.status == "rate_limited":
            self.gates.pause(held.target, info.retry_after_s or DEFAULT_429_PAUSE_S)
        return Ok(id=request.id, message=f"settled {held.permit_id}")

    def settle_abandoned(self, permit_ids: Iterable[str]) -> int:
        """Settle, as reserved, those of ``permit_ids`` still held: their holder's connection
        closed, and it may have called the provider. How many were."""
        return self.gates.settle_abandoned(permit_ids)

    def holds(self, permit_id: str) -> bool:
        """Whether ``permit_id`` is granted and not yet settled nor past its lease."""
        return self.gates.permits.holds(permit_id)

    def _demand(self, request: Acquire, caller: Caller) -> tuple[Target, Demand, str]:
        """The target an Acquire asks for, its demand on the gates, and its app; a lease
        longer than ``gates.max_lease_s`` is refused (a permit must end)."""
        max_lease_s = self.gates.max_lease_s
        if request.lease_s is not None and not request.lease_s <= max_lease_s:
            raise RequestError(
                "bad_request",
                f"lease_s: {request.lease_s:g} s is over gates.max_lease_s ({max_lease_s:g} s)",
                details={"field": "lease_s"},
            )
        check_name("target", request.target)
        check_name("app", request.app)
        route = self.router.resolve(request.target)
        target = next((t for t in route.targets if t.enabled), route.targets[0])
        app = request.app or caller.app
        demand = self.gates.demand(target.provider_name, target.name, app, request.tokens)
        return target, demand, app

    def _grant(
        self, request: Acquire, target: Target, reservation: Reservation, waited: float
    ) -> Permit:
        held = self.gates.grant_permit(
            reservation, target.provider_name, target.name, request.lease_s
        )
        return Permit(
            id=request.id,
            permit_id=held.permit_id,
            wait_s=waited,
            lease_s=max(0.0, held.expires_at - self.clock.monotonic()),
        )
