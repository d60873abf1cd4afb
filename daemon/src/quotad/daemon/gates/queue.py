"""The wait queue: :class:`Waiter` and :class:`WaitQueue`, the order in which waiting requests
are admitted (priority with aging, then fair share across apps, then arrival) and the dispatch
rule. Pure: time is passed in, so it is tested on a virtual clock."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from quotad.daemon.gates.window import (
    INFINITY,
    Blocker,
    Demand,
    Gate,
    Reservation,
    Scope,
    SlidingWindow,
)

PRIORITY_LEVELS: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
PRIORITY_NAMES = ("low", "normal", "high", "critical")

_sequence = itertools.count()


@dataclass(slots=True, eq=False)
class Waiter:
    """A request waiting for admission."""

    demand: Demand
    app: str
    priority: int
    share: float
    enqueued_at: float
    start_tag: float = 0.0
    sequence: int = field(default_factory=lambda: next(_sequence))
    reservation: Reservation | None = None

    def effective_priority(self, now: float, aging_s: float) -> int:
        """The priority, raised one level per ``aging_s`` waited, up to critical."""
        aged = int((now - self.enqueued_at) / aging_s) if aging_s > 0 else 0
        return min(3, self.priority + aged)


class WaitQueue:
    """Waiters in admission order, and the dispatch rule (pure; time is passed in).

    Order: effective priority (base priority aged up one level per ``aging_s`` waited), then
    the start tag of start-time fair queuing (an app with share s advances its tag by 1/s per
    request, so under contention share 2 gets twice the admissions of share 1), then arrival.

    Dispatch walks waiters in order and admits each that fits. A waiter that does not fit
    holds back those behind it only where it is short: on its windows without capacity it
    blocks everyone after it (no overtaking, so large requests do not starve), and on shared
    windows where it would fit it claims its amount. A waiter short only on its *own app's*
    gate blocks only its own app (FIFO within an app) and claims nothing shared.
    """

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self.waiters: list[Waiter] = []
        self._virtual_time = 0.0
        self._app_finish: dict[str, float] = {}
        self._order: list[Waiter] | None = None  # valid until membership or an aging step changes
        self._order_until = INFINITY

    def __len__(self) -> int:
        return len(self.waiters)

    def add(self, waiter: Waiter) -> None:
        """Enqueue, tagging the waiter for fair share."""
        start = max(self._virtual_time, self._app_finish.get(waiter.app, 0.0))
        waiter.start_tag = start
        self._app_finish[waiter.app] = start + 1.0 / waiter.share
        self.waiters.append(waiter)
        self._order = None

    def remove(self, waiter: Waiter) -> None:
        """Leave the queue (timed out, cancelled or admitted)."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self._order = None

    def ordered(self, now: float) -> list[Waiter]:
        """Waiters in admission order at ``now`` (sorted again only when it can have changed)."""
        if self._order is not None and now < self._order_until:
            return self._order
        aging_s = self.aging_s
        self._order = sorted(
            self.waiters,
            key=lambda w: (-w.effective_priority(now, aging_s), w.start_tag, w.sequence),
        )
        self._order_until = self._next_aging_step(now)
        return self._order

    def _next_aging_step(self, now: float) -> float:
        """The next time a waiter's effective priority goes up a level."""
        if self.aging_s <= 0:
            return INFINITY
        step = INFINITY
        for waiter in self.waiters:
            if waiter.effective_priority(now, self.aging_s) < 3:
                levels = math.floor((now - waiter.enqueued_at) / self.aging_s) + 1
                next_step = waiter.enqueued_at + levels * self.aging_s
                while next_step <= now:  # float rounding must not stop time
                    levels += 1
                    next_step = waiter.enqueued_at + levels * self.aging_s
                step = min(step, next_step)
        return step

    def dispatch(self, now: float) -> tuple[list[Waiter], float]:
        """Admit every waiter the rules allow at ``now``.

        Returns the admitted waiters (removed from the queue, each with its reservation) and
        the next time something may change (capacity frees or a waiter ages), or infinity.
        """
        if not self.waiters:
            return [], INFINITY
        admitted: list[Waiter] = []
        blocked: set[int] = set()  # ids of windows and gates nobody behind may take
        claimed: dict[SlidingWindow, int] = {}
        wake = INFINITY
        for waiter in self.ordered(now):
            demand = waiter.demand
            if any(id(gate) in blocked for gate in demand.gates) or any(
                id(window) in blocked for gate in demand.gates for window in gate.windows
            ):
                continue
            blockers = demand.blockers(now, claimed)
            if not blockers:
                waiter.reservation = Reservation(demand, now, pending=True)  # until it runs
                self._virtual_time = max(self._virtual_time, waiter.start_tag)
                admitted.append(waiter)
                continue
            own_app_only = all(
                (isinstance(b, SlidingWindow) and _scope_of(demand, b) == "app")
                or (isinstance(b, Gate) and b.scope == "app")
                for b in blockers
            )
            for blocker in blockers:
                blocked.add(id(blocker))
                wake = min(wake, _frees_at(demand, blocker, now, claimed))
            if not own_app_only:
                for gate in demand.gates:
                    if gate.scope == "app":
                        continue
                    for window in gate.windows:
                        if window not in blockers:
                            claimed[window] = claimed.get(window, 0) + demand.amount(window)
        if admitted:
            taken = {id(waiter) for waiter in admitted}
            self.waiters = [w for w in self.waiters if id(w) not in taken]
            if self._order is not None:
                self._order = [w for w in self._order if id(w) not in taken]
        return admitted, min(wake, self._order_until)


def _scope_of(demand: Demand, window: SlidingWindow) -> Scope:
    for gate in demand.gates:
        if window in gate.windows:
            return gate.scope
    return "provider"


def _frees_at(
    demand: Demand, blocker: Blocker, now: float, claimed: dict[SlidingWindow, int]
) -> float:
    """When ``blocker`` may next have room for ``demand`` after what waiters ahead of it
    claimed (in-flight caps free on settle, which dispatches anyway)."""
    if isinstance(blocker, Gate):
        return blocker.paused_until if blocker.paused_until > now else INFINITY
    return blocker.free_at(demand.amount(blocker) + claimed.get(blocker, 0), now)
