"""The wait queue's dispatch against a straightforward reference, on a virtual clock: over random
scenarios (apps with shares and priorities, aging, provider, model and app gates, paced or not,
an in-flight cap, 429 pauses, settles, timeouts), :class:`WaitQueue` (kept sorted, and stopping
once every set of gates is held back) admits exactly the waiters the reference admits, in the
same order, at the same times, and names the same next wake. The reference sorts every waiter
at every dispatch and looks at every one, as the rules in WaitQueue's docstring read, with code
of its own for what a waiter that does not fit holds back (not the queue's helpers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.gates import Demand, Gate, Reservation, SlidingWindow, Waiter, WaitQueue
from quotad.daemon.gates import queue as queue_module
from quotad.daemon.gates.window import INFINITY

APPS = ("a", "b", "c")


class ReferenceQueue:
    """The dispatch rule read literally: sort everyone at ``now``, look at everyone."""

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self.waiters: list[Waiter] = []
        self.arrived: list[Waiter] = []
        self.left_at: dict[int, float] = {}  # by id: when each waiter that left did
        self._virtual_time = 0.0
        self._app_finish: dict[str, float] = {}

    def add(self, waiter: Waiter) -> None:
        start = max(self._virtual_time, self._app_finish.get(waiter.app, 0.0))
        waiter.start_tag = start
        self._app_finish[waiter.app] = start + 1.0 / waiter.share
        self.waiters.append(waiter)
        self.arrived.append(waiter)

    def remove(self, waiter: Waiter, now: float) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
            self.left_at[id(waiter)] = now

    def _set_aging(self) -> None:
        """A waiter ages from when it is the oldest of its app at its priority: from its
        arrival, or when the last of those that came before it left; not while one waits."""
        for waiter in self.waiters:
            before = [
                w
                for w in self.arrived
                if (w.app, w.priority) == (waiter.app, waiter.priority)
                and w.sequence < waiter.sequence
            ]
            if any(id(w) not in self.left_at for w in before):
                waiter.aging_from = INFINITY
            else:
                waiter.aging_from = max(
                    [waiter.enqueued_at] + [self.left_at[id(w)] for w in before]
                )

    def dispatch(self, now: float) -> tuple[list[Waiter], float]:
        aging_s = self.aging_s
        self._set_aging()
        order = sorted(
            self.waiters,
            key=lambda w: (-w.effective_priority(now, aging_s), w.start_tag, w.sequence),
        )
        admitted: list[Waiter] = []
        blocked: set[int] = set()
        claimed: dict[SlidingWindow, int] = {}
        wake = INFINITY
        for waiter in order:
            demand = waiter.demand
            mine = [id(g) for g in demand.gates] + [id(w) for g in demand.gates for w in g.windows]
            if any(item in blocked for item in mine):
                continue
            blockers = demand.blockers(now, claimed)
            if not blockers:
                waiter.reservation = Reservation(demand, now, pending=True)
                self._virtual_time = max(self._virtual_time, waiter.start_tag)
                admitted.append(waiter)
                continue
            wake = min(wake, *(frees_at(demand, item, now, claimed) for item in blockers))
            blocked.update(id(item) for item in blockers)
            app_only = own_app(demand)
            if all(id(item) in app_only for item in blockers):
                continue  # short on its own app only: holds back its app, claims nothing
            for window in shared_windows(demand):
                if window not in blockers:
                    claimed[window] = claimed.get(window, 0) + demand.amount(window)
        for waiter in admitted:
            self.remove(waiter, now)
        self._set_aging()
        return admitted, min(wake, self._next_aging_step(now))

    def _next_aging_step(self, now: float) -> float:
        """The earliest time after ``now`` that a waiter's effective priority rises."""
        step = INFINITY
        for waiter in self.waiters:
            level = waiter.effective_priority(now, self.aging_s)
            if level >= 3 or waiter.aging_from == INFINITY:
                continue
            levels = int((now - waiter.aging_from) / self.aging_s) + 1
            at = waiter.aging_from + levels * self.aging_s
            step = min(step, at if at > now else math.nextafter(now, INFINITY))
        return step


def own_app(demand: Demand) -> set[int]:
    """Ids of ``demand``'s app gates and of their windows: being short on these alone holds
    back only the waiter's own app."""
    gates = [gate for gate in demand.gates if gate.scope == "app"]
    return {id(gate) for gate in gates} | {id(window) for gate in gates for window in gate.windows}


def shared_windows(demand: Demand) -> list[SlidingWindow]:
    """``demand``'s windows that other apps' requests share (those of its provider and
    model gates)."""
    return [window for gate in demand.gates if gate.scope != "app" for window in gate.windows]


def frees_at(
    demand: Demand, item: SlidingWindow | Gate, now: float, claimed: dict[SlidingWindow, int]
) -> float:
    """When ``item``, which ``demand`` is short on, may take it: a window when it has room for
    the demand on top of what was claimed ahead, a gate when its pause ends (a full in-flight
    cap frees on a settle, which dispatches anyway: never by time)."""
    if isinstance(item, SlidingWindow):
        return item.free_at(demand.amount(item) + claimed.get(item, 0), now)
    return item.paused_until if item.paused_until > now else INFINITY


@dataclass(frozen=True)
class Arrival:
    gap: float
    app: str
    model: int
    tokens: int
    priority: int
    hold_s: float  # admitted, it settles this long after (using half its tokens)
    pause_s: float  # > 0: a 429 on its model this long when it arrives
    give_up: int  # > 0: the oldest waiter still queued times out when it arrives, if odd


@dataclass(frozen=True)
class Limits:
    provider_rpm: int
    provider_tpm: int
    model_rpm: int
    app_rpm: int
    burst: float
    max_in_flight: int | None
    aging_s: float


def build(limits: Limits) -> tuple[Gate, list[Gate], dict[str, Gate]]:
    """A fresh world: one provider gate, two model gates (one with its own limit), app gates
    for a and b (c has none)."""
    provider = Gate(
        "provider:p",
        "provider",
        [
            SlidingWindow("requests", limits.provider_rpm, 2.0, 0.1, limits.burst),
            SlidingWindow("tokens", limits.provider_tpm, 2.0, 0.1, limits.burst),
        ],
        limits.max_in_flight,
    )
    models = [
        Gate("p/m0", "model"),
        Gate("p/m1", "model", [SlidingWindow("requests", limits.model_rpm, 1.0, 0.0, 0.5)]),
    ]
    apps = {
        "a": Gate("app:a", "app", [SlidingWindow("requests", limits.app_rpm, 3.0, 0.0)]),
        "b": Gate("app:b", "app", [SlidingWindow("tokens", 60 * limits.app_rpm, 3.0, 0.0)]),
    }
    return provider, models, apps


Trace = list[tuple[float, list[int], float]]


def run(limits: Limits, arrivals: list[Arrival], reference: bool) -> Trace:
    """Drive one queue through the scenario: at every arrival, settle and wake, dispatch;
    what each dispatch admitted (by arrival number) and the wake it named."""
    provider, models, apps = build(limits)
    queue: WaitQueue | ReferenceQueue = (
        ReferenceQueue(limits.aging_s) if reference else WaitQueue(limits.aging_s)
    )
    number: dict[int, int] = {}
    queued: list[Waiter] = []
    settles: list[tuple[float, int, Reservation, int]] = []
    trace: Trace = []
    times = []
    t = 0.0
    for arrival in arrivals:
        t += arrival.gap
        times.append(t)
    now, index, wake = 0.0, 0, INFINITY
    while index < len(arrivals) or queue.waiters:
        next_settle = min((s[0] for s in settles), default=INFINITY)
        next_arrival = times[index] if index < len(arrivals) else INFINITY
        now = min(next_arrival, next_settle, wake)
        assert now < INFINITY, "a waiter is stuck with nothing left to wake it"
        for item in sorted(s for s in settles if s[0] <= now):
            settles.remove(item)
            item[2].settle(item[3])
        while index < len(arrivals) and times[index] <= now:
            arrival = arrivals[index]
            gates = (provider, models[arrival.model]) + (
                (apps[arrival.app],) if arrival.app in apps else ()
            )
            waiter = Waiter(
                Demand(gates, arrival.tokens),
                arrival.app,
                arrival.priority,
                {"a": 1.0, "b": 3.0, "c": 0.5}[arrival.app],
                now,
            )
            number[id(waiter)] = index
            queue.add(waiter)
            queued.append(waiter)
            if arrival.pause_s > 0:
                gate = models[arrival.model]
                gate.paused_until = max(gate.paused_until, now + arrival.pause_s)
            if arrival.give_up % 2 and queued[0] is not waiter:
                queue.remove(queued.pop(0), now)
            index += 1
        admitted, wake = queue.dispatch(now)
        for waiter in admitted:
            assert waiter.reservation is not None
            waiter.reservation.sent(now)
            queued.remove(waiter)
            hold = arrivals[number[id(waiter)]].hold_s
            settles.append(
                (now + hold, number[id(waiter)], waiter.reservation, waiter.demand.tokens // 2)
            )
        assert wake > now
        trace.append((now, [number[id(w)] for w in admitted], wake))
    return trace


arrival_strategy = st.builds(
    Arrival,
    gap=st.floats(0.0, 0.6),
    app=st.sampled_from(APPS),
    model=st.integers(0, 1),
    tokens=st.integers(0, 60),
    priority=st.integers(0, 3),
    hold_s=st.floats(0.0, 2.0),
    pause_s=st.one_of(st.just(0.0), st.just(0.0), st.just(0.0), st.floats(0.1, 1.5)),
    give_up=st.integers(0, 7),
)
limits_strategy = st.builds(
    Limits,
    provider_rpm=st.integers(1, 6),
    provider_tpm=st.integers(60, 300),
    model_rpm=st.integers(1, 4),
    app_rpm=st.integers(1, 4),
    burst=st.sampled_from([1.0, 0.25]),
    max_in_flight=st.one_of(st.none(), st.integers(1, 3)),
    aging_s=st.sampled_from([0.3, 0.7, 1.3, 5.0]),
)


@settings(max_examples=300, deadline=None)
@given(limits=limits_strategy, arrivals=st.lists(arrival_strategy, min_size=1, max_size=50))
def test_dispatch_admits_what_the_reference_admits_in_the_same_order(
    limits: Limits, arrivals: list[Arrival]
) -> None:
    reference = run(limits, arrivals, reference=True)
    assert run(limits, arrivals, reference=False) == reference
    with mock.patch.object(queue_module, "RESORT_PAST", 0):  # every aging sorts all again
        assert run(limits, arrivals, reference=False) == reference


def test_thousands_of_waiters_aging_or_leaving_at_once_cost_linear_time() -> None:
    """Each aged or withdrawn waiter was found by a search of the order: 9,900 queued
    Acquires held the event loop about a second at each aging step, and again when their
    connection closed. Counted in key comparisons, not seconds."""
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 1.0, 0.0)])
    queue = WaitQueue(aging_s=10.0)
    waiters = [Waiter(Demand((gate,), 0), f"a{n}", 0, 1.0, 0.0) for n in range(9_900)]
    for waiter in waiters:
        queue.add(waiter)
    gate.windows[0].admit(1, 0.0)  # full: nobody is admitted
    queue.dispatch(0.0)
    compared = 0
    original_eq = Waiter.__eq__

    def counted_eq(self: Waiter, other: object) -> object:
        nonlocal compared
        compared += 1
        return original_eq(self, other)  # NotImplemented: compared by identity

    with mock.patch.object(Waiter, "__eq__", counted_eq):
        assert len(queue.ordered(10.0)) == 9_900  # every one aged a level
        for waiter in waiters:
            queue.remove(waiter, 10.0)
    assert len(queue) == 0
    assert compared < 100_000  # a search per waiter: about 49 million


class CountedGate(Gate):
    """A gate that counts how often its windows are looked at."""

    looked_at = 0

    @property
    def windows(self) -> tuple[SlidingWindow, ...]:
        CountedGate.looked_at += 1
        return self._counted_windows

    @windows.setter
    def windows(self, windows: tuple[SlidingWindow, ...]) -> None:
        self._counted_windows = windows


def test_a_deep_queue_behind_a_blocked_head_is_not_walked() -> None:
    """1000 waiters behind a full window: a dispatch looks at the head's gates, not at the
    999 behind it (each of which used to be checked against what the head blocks)."""
    gate = CountedGate("provider:p", "provider", [SlidingWindow("requests", 1, 1.0, 0.0)])
    Reservation(Demand((gate,), 0), 0.0)
    queue = WaitQueue(aging_s=100.0)
    for index in range(1000):
        queue.add(Waiter(Demand((gate,), 0), APPS[index % 3], 1, 1.0, 0.0))
    CountedGate.looked_at = 0
    assert queue.dispatch(0.5) == ([], 1.0)
    assert CountedGate.looked_at < 10
    admitted, _ = queue.dispatch(1.0)
    assert len(admitted) == 1
    assert len(queue) == 999
    assert CountedGate.looked_at < 20


def test_a_small_request_does_not_overtake_a_big_one_of_other_gates_once_its_own_went() -> None:
    """The first of a's gate set goes; b's big request (other gates, one shared window) is
    short; a's second small one, of a gate set already seen clear, must wait behind it."""
    tokens = SlidingWindow("tokens", 100, 10.0, 0.0)
    provider = Gate("provider:p", "provider", [tokens])
    m0, m1 = Gate("p/m0", "model"), Gate("p/m1", "model")
    queue = WaitQueue(aging_s=100.0)
    first = Waiter(Demand((provider, m0), 10), "a", 1, 1.0, 0.0)
    big = Waiter(Demand((provider, m1), 95), "b", 2, 1.0, 0.0)
    small = Waiter(Demand((provider, m0), 10), "a", 1, 1.0, 0.0)
    first.priority = 3  # order: first, big, small
    for waiter in (first, big, small):
        queue.add(waiter)
    assert queue.dispatch(0.0) == ([first], 10.0)
    assert queue.ordered(0.0) == [big, small]
