"""The wait queue: :class:`Waiter` and :class:`WaitQueue`, the order in which waiting requests
are admitted (priority with aging, then fair share across apps, then arrival) and the dispatch
rule. Pure: time is passed in, so it is tested on a virtual clock."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import OrderedDict
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

REMEMBERED_APPS_SLACK = 64
"""Apps whose fair-share tag is kept with none of their requests queued: up to as many as
there are waiters, plus this (apps are named by clients: one naming a new app per request
would otherwise grow the table without end)."""

RESORT_PAST = 256
"""Waiters aging a level at once past which the order is sorted again from scratch, rather
than each moved (each move shifts the list)."""

OrderKey = tuple[int, float, int]
"""A waiter's place in the order: (-effective priority, start tag, sequence)."""


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
    order_key: OrderKey = (0, 0.0, 0)
    """Its key in the queue's order while it is there (unique: its sequence is in it)."""
    aging_from: float = INFINITY
    """When it began to age: it is the oldest waiter of its app at its priority since then
    (its arrival, or when the one before it left); infinity while an older one waits."""
    crowded_out: bool = False
    """Taken out of a full queue for a newcomer of an app with fewer waiters
    (:meth:`WaitQueue.crowded_out_by`)."""
    never_fits: str = ""
    """Why it can never be admitted, when a reload lowered a limit below what it needs: taken
    out of the queue and answered at once."""

    def effective_priority(self, now: float, aging_s: float) -> int:
        """The priority, raised one level per ``aging_s`` since :attr:`aging_from`, up to
        critical."""
        if aging_s <= 0 or self.aging_from > now:
            return self.priority
        return min(3, self.priority + int((now - self.aging_from) / aging_s))


class WaitQueue:
    """Waiters in admission order, and the dispatch rule (pure; time is passed in).

    Order: effective priority, then the start tag of start-time fair queuing (an app with
    share s advances its tag by 1/s per request, so under contention share 2 gets twice the
    admissions of share 1), then arrival. The effective priority is the base priority aged up
    one level per ``aging_s`` that a waiter has been the oldest of its app at its priority: so
    no app's requests starve, and yet the backlog of an app that floods the queue does not
    all age past the newer requests of the others (which then waited two aging steps, 20 s,
    before fair share applied again: 3 requests in 35 s where fair share gave 175).

    Dispatch walks waiters in order and admits each that fits. A waiter that does not fit
    holds back those behind it only where it is short: on its windows without capacity it
    blocks everyone after it (no overtaking, so large requests do not starve), and on shared
    windows where it would fit it claims its amount. A waiter short only on its *own app's*
    gate blocks only its own app (FIFO within an app) and claims nothing shared.

    Cost: the order is sorted once and kept sorted (a new waiter is inserted where it
    belongs; a waiter whose priority ages a level, found by a heap of aging times, is moved),
    and dispatch decides once per set of gates whether the waiters needing them are held back,
    stopping as soon as every set in the queue is: a release with a deep queue behind a
    blocked head costs about what it costs with a short one (``bench/gate_queue.py``).
    """

    def __init__(self, aging_s: float) -> None:
        self._aging_s = aging_s
        self.waiters: dict[Waiter, None] = {}
        """Every waiter queued (a dict: O(1) removal)."""
        self._virtual_time = 0.0
        self._app_finish: dict[str, float] = {}
        """Each app's fair-share finish tag: those of apps with a waiter queued, and of apps
        queued lately, at most :data:`REMEMBERED_APPS_SLACK` more than twice the waiters."""
        self._gate_sets: dict[tuple[Gate, ...], int] = {}
        """Waiters queued per set of gates (``demand.gates``): when every set is held back,
        nobody further down the queue can be admitted."""
        self._order: list[Waiter] | None = None  # None: to sort again from scratch
        self._order_keys: list[OrderKey] = []  # the sort key of each, in order
        self._added: dict[Waiter, None] = {}  # queued since, not yet in the order
        self._steps: list[tuple[float, int, Waiter]] = []
        """A heap of (when a waiter of the order ages a level, its sequence, it); entries
        of waiters gone since are dropped when they come up."""
        self._classes: dict[tuple[str, int], OrderedDict[Waiter, None]] = {}
        """The waiters of each app at each base priority, oldest first: only the oldest ages."""
        self._per_app: dict[str, int] = {}
        """How many waiters each app has queued."""

    @property
    def aging_s(self) -> float:
        """Seconds waited per level a waiter's priority rises (a reload sorts again)."""
        return self._aging_s

    @aging_s.setter
    def aging_s(self, aging_s: float) -> None:
        if aging_s != self._aging_s:
            self._aging_s = aging_s
            self._order = None

    def _next_step(self) -> float:
        """When the order may next change by itself: a waiter still queued ages a level."""
        steps = self._steps
        while steps and steps[0][2] not in self.waiters:
            heapq.heappop(steps)
        return steps[0][0] if steps else INFINITY

    def __len__(self) -> int:
        return len(self.waiters)

    def add(self, waiter: Waiter) -> None:
        """Enqueue, tagging the waiter for fair share; it ages from its arrival if it is the
        only one of its app at its priority."""
        same_class = self._classes.setdefault((waiter.app, waiter.priority), OrderedDict())
        waiter.aging_from = INFINITY if same_class else waiter.enqueued_at
        same_class[waiter] = None
        self._per_app[waiter.app] = self._per_app.get(waiter.app, 0) + 1
        start = max(self._virtual_time, self._app_finish.get(waiter.app, 0.0))
        waiter.start_tag = start
        finish = self._app_finish
        finish[waiter.app] = start + 1.0 / waiter.share
        self.waiters[waiter] = None
        if len(finish) > 2 * len(self.waiters) + REMEMBERED_APPS_SLACK:
            self._forget_idle_apps()
        gates = waiter.demand.gates
        self._gate_sets[gates] = self._gate_sets.get(gates, 0) + 1
        if self._order is not None:
            self._added[waiter] = None

    def _forget_idle_apps(self) -> None:
        """Keep the finish tags of apps with a waiter queued only (amortized: the table has
        grown past twice the waiters). An app forgotten starts at the virtual time when it
        queues again, as a new app does: it loses at most what it was ahead of the others
        (a request's worth when all its requests were admitted; those it withdrew were never
        served)."""
        queued = {waiter.app for waiter in self.waiters}
        self._app_finish = {app: t for app, t in self._app_finish.items() if app in queued}

    @property
    def remembered_apps(self) -> int:
        """How many apps' fair-share tags are kept."""
        return len(self._app_finish)

    def remove(self, waiter: Waiter, now: float) -> None:
        """Leave the queue at ``now`` (timed out, cancelled or crowded out; the order stays
        sorted without it)."""
        if waiter not in self.waiters:
            return
        del self.waiters[waiter]
        self._forget_gates(waiter)
        self._left(waiter, now)
        if self._order is None:
            return
        if waiter in self._added:
            del self._added[waiter]
            return
        index = self._place(waiter)
        del self._order[index]
        del self._order_keys[index]

    def _left(self, waiter: Waiter, now: float) -> None:
        """``waiter`` left the queue at ``now``: the next of its app at its priority, if it
        was the oldest, begins to age."""
        key = (waiter.app, waiter.priority)
        same_class = self._classes[key]
        oldest = next(iter(same_class)) is waiter
        del same_class[waiter]
        if not same_class:
            del self._classes[key]
        elif oldest:
            successor = next(iter(same_class))
            successor.aging_from = now
            if self._order is not None and successor not in self._added:
                step = self._aging_step_of(successor, now)
                if step != INFINITY:
                    heapq.heappush(self._steps, (step, successor.sequence, successor))
        left = self._per_app[waiter.app] - 1
        if left:
            self._per_app[waiter.app] = left
        else:
            del self._per_app[waiter.app]

    def crowded_out_by(self, app: str) -> Waiter | None:
        """The queue is full: the waiter a newcomer of ``app`` takes the place of, the newest
        of the lowest priority of the app with the most waiters, when that app would still
        have more than ``app`` (so one app cannot fill the queue and shut the others out);
        None when ``app`` has the most (the newcomer is refused)."""
        most = max(self._per_app, key=self._per_app.__getitem__, default=None)
        if most is None or self._per_app[most] <= self._per_app.get(app, 0) + 1:
            return None
        lowest = min(priority for name, priority in self._classes if name == most)
        return next(reversed(self._classes[most, lowest]))

    def queued_of(self, app: str) -> int:
        """How many waiters ``app`` has queued."""
        return self._per_app.get(app, 0)

    def _place(self, waiter: Waiter) -> int:
        """Where ``waiter`` stands in the order: found by its key, in O(log n) (a search of
        the list took seconds when thousands of waiters aged or left at once)."""
        index = bisect.bisect_left(self._order_keys, waiter.order_key)
        assert self._order is not None
        assert self._order[index] is waiter
        return index

    def regate(self, waiter: Waiter, gates: tuple[Gate, ...]) -> None:
        """Hold a queued ``waiter`` to ``gates`` from now on (a reload changed those its
        demand needs); its place in the order stays."""
        self._forget_gates(waiter)
        waiter.demand.gates = gates
        self._gate_sets[gates] = self._gate_sets.get(gates, 0) + 1

    def _forget_gates(self, waiter: Waiter) -> None:
        gates = waiter.demand.gates
        left = self._gate_sets[gates] - 1
        if left:
            self._gate_sets[gates] = left
        else:
            del self._gate_sets[gates]

    def ordered(self, now: float) -> list[Waiter]:
        """Waiters in admission order at ``now``. Kept sorted: a waiter added since is
        inserted where it belongs, one that aged a level since is moved; a key changes only
        then, so the rest stay in place."""
        if self._order is None:
            self._sort(now)
        steps = self._steps
        if steps and steps[0][0] <= now:
            self._age(now)  # which may sort all again
        order = self._order
        assert order is not None
        if self._added:
            for waiter in self._added:
                self._insert(waiter, now)
            self._added.clear()
        return order

    def _sort(self, now: float) -> list[Waiter]:
        """Sort every waiter from scratch (the first time, or after a reload of aging_s)."""
        keyed = sorted(((self._key(w, now), w) for w in self.waiters), key=_by_key)
        for key, waiter in keyed:
            waiter.order_key = key
        self._order_keys = [key for key, _ in keyed]
        self._order = [w for _, w in keyed]
        self._added.clear()
        steps = [(self._aging_step_of(w, now), w.sequence, w) for w in self.waiters]
        self._steps = [step for step in steps if step[0] != INFINITY]
        heapq.heapify(self._steps)
        return self._order

    def _key(self, waiter: Waiter, now: float) -> OrderKey:
        return (-waiter.effective_priority(now, self._aging_s), waiter.start_tag, waiter.sequence)

    def _insert(self, waiter: Waiter, now: float) -> None:
        """Put ``waiter`` in the order by its key at ``now``; note when it next ages."""
        assert self._order is not None
        key = waiter.order_key = self._key(waiter, now)
        index = bisect.bisect_right(self._order_keys, key)
        self._order_keys.insert(index, key)
        self._order.insert(index, waiter)
        step = self._aging_step_of(waiter, now)
        if step != INFINITY:
            heapq.heappush(self._steps, (step, waiter.sequence, waiter))

    def _age(self, now: float) -> None:
        """Move the waiters whose priority rose a level by ``now`` to their new place."""
        assert self._order is not None
        order, keys, steps = self._order, self._order_keys, self._steps
        due: list[Waiter] = []
        while steps and steps[0][0] <= now:
            _, _, waiter = heapq.heappop(steps)
            if waiter in self.waiters and waiter not in self._added:  # else gone, or new
                due.append(waiter)
        if len(due) > RESORT_PAST:  # many at once: sorting all again is cheaper
            self._order = None
            self._sort(now)
            return
        for waiter in due:
            index = self._place(waiter)
            del order[index]
            del keys[index]
            self._insert(waiter, now)

    def _aging_step_of(self, waiter: Waiter, now: float) -> float:
        """The next time after ``now`` that ``waiter``'s effective priority rises a level
        (infinity: never, or it is critical)."""
        aging_s = self._aging_s
        if aging_s <= 0 or waiter.aging_from > now or waiter.effective_priority(now, aging_s) >= 3:
            return INFINITY
        levels = int((now - waiter.aging_from) / aging_s) + 1  # as effective_priority counts
        next_step = waiter.aging_from + levels * aging_s
        if next_step <= now:  # float rounding: the level is due, so look again at once
            return math.nextafter(now, INFINITY)
        return next_step

    def dispatch(self, now: float) -> tuple[list[Waiter], float]:
        """Admit every waiter the rules allow at ``now``.

        Returns the admitted waiters (removed from the queue, each with its reservation) and
        the next time something may change (capacity frees or a waiter ages), or infinity.
        """
        if not self.waiters:
            return [], INFINITY
        admitted: list[Waiter] = []
        admitted_at: list[int] = []  # their places in the order
        blocked: set[int] = set()  # ids of windows and gates nobody behind may take
        held_back: set[tuple[Gate, ...]] = set()  # gate sets touching ``blocked``
        free_while: dict[tuple[Gate, ...], int] = {}  # gate sets clear of ``blocked`` at size
        gate_sets = len(self._gate_sets)
        claimed: dict[SlidingWindow, int] = {}
        wake = INFINITY
        order = self.ordered(now)
        for index, waiter in enumerate(order):
            demand = waiter.demand
            gates = demand.gates
            if gates in held_back:
                continue
            if free_while.get(gates) != len(blocked):
                if any(id(gate) in blocked for gate in gates) or any(
                    id(window) in blocked for gate in gates for window in gate.windows
                ):
                    held_back.add(gates)
                    if len(held_back) == gate_sets:
                        break  # everyone further down is held back too
                    continue
                free_while[gates] = len(blocked)
            blockers = demand.blockers(now, claimed)
            if not blockers:
                waiter.reservation = Reservation(demand, now, pending=True)  # until it runs
                self._virtual_time = max(self._virtual_time, waiter.start_tag)
                admitted.append(waiter)
                admitted_at.append(index)
                continue
            own_app_only = all(
                (isinstance(b, SlidingWindow) and _scope_of(demand, b) == "app")
                or (isinstance(b, Gate) and b.scope == "app")
                for b in blockers
            )
            for blocker in blockers:
                blocked.add(id(blocker))
                wake = min(wake, _frees_at(demand, blocker, now, claimed))
            held_back.add(gates)  # its blockers are among its own gates and windows
            if not own_app_only:
                for gate in gates:
                    if gate.scope == "app":
                        continue
                    for window in gate.windows:
                        if window not in blockers:
                            claimed[window] = claimed.get(window, 0) + demand.amount(window)
            if len(held_back) == gate_sets:
                break
        if admitted:
            for waiter in admitted:
                del self.waiters[waiter]
                self._forget_gates(waiter)
                self._left(waiter, now)
            keys = self._order_keys
            for index in reversed(admitted_at):
                del order[index]
                del keys[index]
        return admitted, min(wake, self._next_step())


def _by_key(pair: tuple[OrderKey, Waiter]) -> OrderKey:
    return pair[0]


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
