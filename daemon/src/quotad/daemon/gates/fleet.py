"""The gates' side of a fleet (``[cluster]``, DESIGN §10): giving every window its fleet
window, and choosing the waiters to borrow for. The fleet itself (leases, Redis) is
:mod:`quotad.daemon.cluster`, imported here only for type checking: one host never imports
the Redis client."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from quotad.daemon.gates.queue import Waiter
from quotad.daemon.gates.window import Gate

if TYPE_CHECKING:
    from quotad.daemon.cluster.gates import FleetGates
    from quotad.daemon.cluster.window import FleetWindow

ASKS_PER_DISPATCH: Final = 8
"""Waiters at the head of the queue a dispatch borrows for (each ask is coalesced)."""
WAITERS_SCANNED: Final = 64
"""How far down the queue a dispatch looks for them (a long queue costs no more)."""


def attach_windows(fleet: FleetGates, gates: Iterable[Gate]) -> None:
    """Give every window of ``gates`` its fleet window (a reloaded limit or guard applies to
    it too): a gate is shared by its name, a window by its unit and length."""
    for gate in gates:
        for window in gate.windows:
            window.fleet = fleet.window(
                gate.name, window.unit, window.window_s, window.limit, window.span
            )


def ask_for_waiters(fleet: FleetGates, ordered: Iterable[Waiter], now: float) -> None:
    """Borrow for the first waiters (in admission order) that only the fleet's limit holds
    back, not a pause, an in-flight cap or this host's own log and pace: one ask each,
    coalesced by the fleet's worker, which wakes the queue when it has an answer."""
    asked = 0
    for waiter in itertools.islice(ordered, WAITERS_SCANNED):
        items = _short_on_the_fleet(waiter, now)
        if items:
            demand = waiter.demand
            target = next((g.name for g in demand.gates if g.scope == "model"), None)
            fleet.ask(tuple(items), target, waiter.sequence)
            asked += 1
            if asked >= ASKS_PER_DISPATCH:
                return


def _short_on_the_fleet(waiter: Waiter, now: float) -> list[tuple[FleetWindow, int]]:
    """The fleet windows ``waiter`` lacks units on, when nothing else holds it back."""
    demand = waiter.demand
    items: list[tuple[FleetWindow, int]] = []
    for gate in demand.gates:
        if gate.paused_until > now or (
            gate.max_in_flight is not None and gate.in_flight >= gate.max_in_flight
        ):
            return []
        for window in gate.windows:
            amount = demand.amount(window)
            if not window.fits_here(amount, now):
                return []
            if window.fleet is not None and window.fleet.available(now) < amount:
                items.append((window.fleet, amount))
    return items
