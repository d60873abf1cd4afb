"""Permits (``Acquire``/``Settle``, DESIGN §5: the caller calls the provider itself): each an
admitted reservation held under an id until it is settled or its lease runs out, when it is
settled as reserved (its holder may have called the provider).

A permit's id is all it takes to settle it, so the id cannot be guessed from another: after
the daemon's prefix and a counter (for the reader), 64 random bits. Ids were a counter alone,
and a client holding one permit could cancel everyone else's, giving their admissions back."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from quotad.daemon.gates.window import INFINITY, Reservation

log = logging.getLogger("quotad.gates")


@dataclass(slots=True)
class HeldPermit:
    """A granted Acquire, until it is settled or its lease runs out."""

    permit_id: str
    target: str
    provider: str
    reservation: Reservation
    expires_at: float


class PermitLeases:
    """The permits held, by id, and a heap of their leases' ends (the gates' timer wakes at
    the first: :meth:`expire`)."""

    def __init__(self) -> None:
        self._permits: dict[str, HeldPermit] = {}
        self._leases: list[tuple[float, str]] = []
        self._ids = itertools.count(1)
        self._prefix = "pm-" + os.urandom(3).hex() + "-"

    def grant(
        self, reservation: Reservation, provider: str, target: str, expires_at: float
    ) -> HeldPermit:
        """Hold ``reservation`` under a new permit id until ``expires_at`` (monotonic)."""
        permit_id = f"{self._prefix}{next(self._ids)}-{secrets.token_hex(8)}"
        permit = HeldPermit(permit_id, target, provider, reservation, expires_at)
        self._permits[permit_id] = permit
        leases = self._leases
        if len(leases) > 2 * len(self._permits) + 64:  # mostly settled permits: drop them
            leases[:] = [(p.expires_at, p.permit_id) for p in self._permits.values()]
            heapq.heapify(leases)
        else:
            heapq.heappush(leases, (expires_at, permit_id))
        return permit

    def take(self, permit_id: str) -> HeldPermit | None:
        """The permit to settle (once); None if unknown, already settled or expired."""
        return self._permits.pop(permit_id, None)

    def holds(self, permit_id: str) -> bool:
        """Whether ``permit_id`` is granted and not yet settled nor expired."""
        return permit_id in self._permits

    def __len__(self) -> int:
        """Permits granted and not yet settled nor expired."""
        return len(self._permits)

    def settle_abandoned(self, permit_ids: Iterable[str]) -> int:
        """Settle, as reserved, those of ``permit_ids`` still held; how many were."""
        settled = 0
        for permit_id in permit_ids:
            permit = self._permits.pop(permit_id, None)
            if permit is not None:
                permit.reservation.settle(None)
                settled += 1
        return settled

    def expire(self, now: float) -> float:
        """Settle permits whose lease ran out, as reserved; when to look again: the first
        lease end in the heap, even if that permit was settled since (the timer then wakes
        for nothing once, rather than being moved at every Settle)."""
        leases = self._leases
        while leases and leases[0][0] <= now:
            _, permit_id = heapq.heappop(leases)
            permit = self._permits.pop(permit_id, None)
            if permit is not None:
                log.info(
                    "permit %s on %s expired unsettled; settled as reserved",
                    permit_id,
                    permit.target,
                )
                permit.reservation.settle(None)
        return leases[0][0] if leases else INFINITY
