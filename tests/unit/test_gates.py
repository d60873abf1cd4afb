"""Gates on a virtual clock: exact sliding windows, reservations, the wait queue's ordering
rules, and hypothesis properties (never over a limit, work-conserving, fair share, no
starvation)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.gates import (
    Demand,
    Gate,
    Reservation,
    SlidingWindow,
    Waiter,
    WaitQueue,
)
from quotad.daemon.gates.queue import REMEMBERED_APPS_SLACK

# --------------------------------------------------------------------------- windows


def test_window_admits_up_to_the_limit_then_frees_after_the_span() -> None:
    window = SlidingWindow("requests", 3, 10.0, 0.5)
    for t in (0.0, 1.0, 2.0):
        assert window.fits(1, t)
        window.admit(1, t)
    assert not window.fits(1, 5.0)
    assert window.free_at(1, 5.0) == pytest.approx(10.5)  # the first admission + span
    assert not window.fits(1, 10.4)  # still inside window + guard
    assert window.fits(1, 10.5)
    assert window.usage(12.5) == 0


def test_window_resize_returns_unused_tokens_and_ignores_expired_admissions() -> None:
    window = SlidingWindow("tokens", 1000, 60.0, 0.0)
    admission = window.admit(800, 0.0)
    assert not window.fits(300, 1.0)
    window.resize(admission, 100)  # settled: 700 unused come back
    assert window.usage(1.0) == 100
    assert window.fits(900, 1.0)
    late = window.admit(50, 1.0)
    window.expire(100.0)
    window.resize(late, 500)  # settling after expiry changes nothing counted
    assert window.usage(100.0) == 0


def test_window_charges_what_went_over() -> None:
    window = SlidingWindow("tokens", 1000, 60.0, 0.0)
    admission = window.admit(100, 0.0)
    window.resize(admission, 400)
    assert window.usage(1.0) == 400


def test_external_usage_only_tightens() -> None:
    window = SlidingWindow("requests", 100, 60.0, 0.0)
    for _ in range(10):
        window.admit(1, 0.0)
    window.add_external(remaining=50, reset_s=20.0, now=1.0)  # provider: tighter than 90 left
    assert window.usage(1.0) == 50
    assert window.free_at(1, 1.0) == 1.0
    window.add_external(remaining=0, reset_s=20.0, now=2.0)
    assert not window.fits(1, 2.0)
    assert window.free_at(1, 2.0) == pytest.approx(22.0)
    assert window.fits(1, 22.0)  # external usage ends at the reset
    window.add_external(remaining=1000, reset_s=20.0, now=30.0)  # looser: ignored
    assert window.usage(30.0) == 10


def test_demand_that_can_never_fit_says_why() -> None:
    gate = Gate("provider:p", "provider", [SlidingWindow("tokens", 4000, 60.0, 0.0)])
    reason = Demand((gate,), 5000).never_fits()
    assert reason is not None
    assert "5000 tokens" in reason
    assert "4000 tokens per 60 s" in reason
    assert Demand((gate,), 4000).never_fits() is None


def test_reservation_is_atomic_across_gates_and_settles_once() -> None:
    provider = Gate("provider:p", "provider", [SlidingWindow("requests", 5, 60.0, 0.0)], 2)
    app = Gate("app:a", "app", [SlidingWindow("tokens", 1000, 60.0, 0.0)])
    demand = Demand((provider, app), 600)
    reservation = Reservation(demand, 0.0)
    assert provider.in_flight == 1
    # a second one fits the provider's requests but not the app's tokens: all or nothing
    assert Demand((provider, app), 600).blockers(0.0) == [app.windows[0]]
    reservation.settle(200)
    reservation.settle(900)  # idempotent
    assert provider.in_flight == 0
    assert app.windows[0].usage(1.0) == 200
    assert provider.windows[0].usage(1.0) == 1


def test_cancel_undoes_the_admission() -> None:
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 60.0, 0.0)])
    reservation = Reservation(Demand((gate,), 0), 0.0)
    assert gate.windows[0].usage(0.0) == 1
    reservation.cancel()
    assert gate.windows[0].usage(0.0) == 0
    assert gate.in_flight == 0


def test_cancel_of_a_pending_reservation_frees_it_once() -> None:
    requests = SlidingWindow("requests", 5, 60.0, 0.0)
    tokens = SlidingWindow("tokens", 1000, 60.0, 0.0)
    gate = Gate("provider:p", "provider", [requests, tokens])
    kept = Reservation(Demand((gate,), 100), 0.0)
    pending = Reservation(Demand((gate,), 300), 0.0, pending=True)
    assert (gate.in_flight, tokens.usage(0.0)) == (2, 400)
    pending.cancel()
    assert (pending.settled, pending.pending) == (True, False)
    assert (gate.in_flight, requests.usage(0.0), tokens.usage(0.0)) == (1, 1, 100)
    pending.cancel()  # idempotent, and settling it afterwards changes nothing either
    pending.settle(900)
    assert (gate.in_flight, requests.usage(0.0), tokens.usage(0.0)) == (1, 1, 100)
    kept.settle(40)
    assert (gate.in_flight, tokens.usage(0.0)) == (0, 40)


# --------------------------------------------------------------------------- the queue


def waiter(
    demand: Demand, app: str, priority: int = 1, share: float = 1.0, at: float = 0.0
) -> Waiter:
    return Waiter(demand, app, priority, share, at)


def dispatch(queue: WaitQueue, now: float) -> tuple[list[Waiter], float]:
    """Dispatch at ``now``, each admitted waiter's task running at once (leaving the gates:
    until then its admission stays counted, see test_gates_guard.py)."""
    admitted, wake = queue.dispatch(now)
    for admitted_waiter in admitted:
        assert admitted_waiter.reservation is not None
        admitted_waiter.reservation.sent(now)
    return admitted, wake


def test_fair_share_tags_of_apps_no_longer_queued_are_bounded() -> None:
    """Apps are named by clients: one naming a new app per request, each withdrawn (timed
    out) or admitted, leaves the queue remembering at most twice the waiters plus the slack,
    and the tags of apps still queued are kept (their order is unchanged)."""
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 10.0, 0.0)])
    Reservation(Demand((gate,), 0), 0.0)  # full until t=10: nobody is admitted before
    queue = WaitQueue(aging_s=1000.0)
    heavy = [waiter(Demand((gate,), 0), "heavy") for _ in range(3)]
    light = waiter(Demand((gate,), 0), "light")
    for w in (*heavy, light):
        queue.add(w)
    for n in range(5_000):
        passing = waiter(Demand((gate,), 0), f"app-{n}")
        queue.add(passing)
        queue.remove(passing, 0.0)
        assert queue.remembered_apps <= 2 * (len(queue) + 1) + REMEMBERED_APPS_SLACK
    order = []
    for t in (10.0, 20.0, 30.0, 40.0):
        admitted, _ = dispatch(queue, t)
        order += admitted
    assert order == [heavy[0], light, heavy[1], heavy[2]]  # fair share as before


def test_higher_priority_goes_first_and_fifo_within_an_app() -> None:
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 10.0, 0.0)])
    Reservation(Demand((gate,), 0), 0.0)  # the window is full until t=10
    queue = WaitQueue(aging_s=1000.0)
    first_low = waiter(Demand((gate,), 0), "a", priority=0)
    second_low = waiter(Demand((gate,), 0), "a", priority=0)
    high = waiter(Demand((gate,), 0), "b", priority=2)
    for w in (first_low, second_low, high):
        queue.add(w)
    admitted, wake = dispatch(queue, 1.0)
    assert admitted == []
    assert wake == pytest.approx(10.0)
    assert [w.reservation is not None for w in (first_low, second_low, high)] == [False] * 3
    order = []
    for t in (10.0, 20.0, 30.0):
        admitted, _ = dispatch(queue, t)
        order += admitted
    assert order == [high, first_low, second_low]


def test_a_waiter_short_on_its_own_app_gate_does_not_hold_back_other_apps() -> None:
    provider = Gate("provider:p", "provider", [SlidingWindow("requests", 10, 10.0, 0.0)])
    app_a = Gate("app:a", "app", [SlidingWindow("requests", 1, 10.0, 0.0)])
    Reservation(Demand((provider, app_a), 0), 0.0)
    queue = WaitQueue(aging_s=1000.0)
    blocked_a = waiter(Demand((provider, app_a), 0), "a", priority=3)
    other = waiter(Demand((provider,), 0), "b", priority=0)
    queue.add(blocked_a)
    queue.add(other)
    admitted, wake = dispatch(queue, 1.0)
    assert admitted == [other]
    assert wake == pytest.approx(10.0)


def test_a_big_request_at_the_head_is_not_overtaken_by_small_ones() -> None:
    tokens = SlidingWindow("tokens", 1000, 10.0, 0.0)
    gate = Gate("provider:p", "provider", [tokens])
    Reservation(Demand((gate,), 600), 0.0)
    queue = WaitQueue(aging_s=1000.0)
    big = waiter(Demand((gate,), 800), "a", at=1.0)
    small = waiter(Demand((gate,), 300), "b", at=2.0)
    queue.add(big)
    queue.add(small)
    admitted, _ = dispatch(queue, 3.0)
    assert admitted == []  # small would fit, but it would starve big
    admitted, _ = dispatch(queue, 10.0)
    assert admitted == [big]  # 600 expired: big first, then small does not fit
    admitted, _ = dispatch(queue, 20.0)
    assert admitted == [small]


def test_aging_lifts_a_low_priority_waiter_over_new_high_ones() -> None:
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 1.0, 0.0)])
    queue = WaitQueue(aging_s=5.0)
    low = waiter(Demand((gate,), 0), "batch", priority=0, at=0.0)
    queue.add(low)
    Reservation(Demand((gate,), 0), 0.0)
    served_low_at = None
    t = 0.0
    while served_low_at is None and t < 100:
        queue.add(waiter(Demand((gate,), 0), "agent", priority=2, at=t))
        t += 1.0
        admitted, _ = dispatch(queue, t)
        if low in admitted:
            served_low_at = t
    assert served_low_at is not None
    assert served_low_at <= 15.0  # two aging steps lift it from low to high; FIFO then wins


def test_an_app_flooding_the_queue_does_not_age_past_another_of_its_priority() -> None:
    """Both normal, share 1, one admission a second: `a` queues 100 requests, `b` one at a
    time. Every waiter aged from its arrival, so after two aging steps all of a's backlog was
    critical and b's fresh request had to age two steps to compete: b got 4 of the 45
    admissions after t=15. Now only the oldest of an app at a priority ages: b gets 23."""
    gate = Gate("provider:p", "provider", [SlidingWindow("requests", 1, 1.0, 0.0)])
    queue = WaitQueue(aging_s=5.0)
    for _ in range(100):
        queue.add(waiter(Demand((gate,), 0), "a", at=0.0))
    served = []
    for second in range(60):
        now = float(second)
        if not any(w.app == "b" for w in queue.waiters):
            queue.add(waiter(Demand((gate,), 0), "b", at=now))
        admitted, _ = dispatch(queue, now)
        served += [w.app for w in admitted]
    assert served[15:].count("b") >= 20  # of 45: its fair half, give or take a turn


# --------------------------------------------------------------------------- properties

FINAL_TOKENS: dict[int, int] = {}  # what each admitted waiter finally used (≤ its reservation)


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[float, str, int, float]]:
    """(gap before arrival, app, tokens requested, share of reservation really used)."""
    count = draw(st.integers(1, 60))
    return [
        (
            draw(st.floats(0.0, 2.0)),
            draw(st.sampled_from(["a", "b", "c"])),
            draw(st.integers(0, 400)),
            draw(st.floats(0.0, 1.0)),
        )
        for _ in range(count)
    ]


def run_queue(
    events: list[tuple[float, str, int, float]],
    request_limit: int,
    token_limit: int,
    window_s: float,
    guard_s: float,
    shares: dict[str, float] | None = None,
    priorities: dict[str, int] | None = None,
) -> tuple[list[tuple[float, Waiter]], WaitQueue, list[SlidingWindow]]:
    """Drive a queue on a virtual clock, dispatching at every arrival and every wake time;
    each admitted request settles (using part of its reservation) 0.5 s later."""
    requests = SlidingWindow("requests", request_limit, window_s, guard_s)
    tokens = SlidingWindow("tokens", token_limit, window_s, guard_s)
    gate = Gate("provider:p", "provider", [requests, tokens])
    queue = WaitQueue(aging_s=20.0)
    admitted_log: list[tuple[float, Waiter]] = []
    settle_at: list[tuple[float, Reservation, int]] = []
    pending = []
    t = 0.0
    for gap, app, wanted, used_share in events:
        t += gap
        pending.append((t, app, wanted, used_share))
    now = 0.0
    wake = math.inf
    index = 0
    used_shares: dict[int, float] = {}
    while index < len(pending) or queue.waiters:
        next_arrival = pending[index][0] if index < len(pending) else math.inf
        next_settle = min((s[0] for s in settle_at), default=math.inf)
        now = min(next_arrival, wake, next_settle)
        assert now < math.inf, "a waiter is stuck with nothing left to wake it"
        for item in [s for s in settle_at if s[0] <= now]:
            settle_at.remove(item)
            item[1].settle(item[2])
        while index < len(pending) and pending[index][0] <= now:
            _, app, wanted, used_share = pending[index]
            w = Waiter(
                Demand((gate,), wanted),
                app,
                (priorities or {}).get(app, 1),
                (shares or {}).get(app, 1.0),
                now,
            )
            used_shares[id(w)] = used_share
            queue.add(w)
            index += 1
        admitted, wake = dispatch(queue, now)
        for w in admitted:
            assert w.reservation is not None
            admitted_log.append((now, w))
            used = int(w.demand.tokens * used_shares[id(w)])
            FINAL_TOKENS[id(w)] = used
            settle_at.append((now + 0.5, w.reservation, used))
        # work conserving: a second dispatch at the same instant admits nothing more
        again, _ = dispatch(queue, now)
        assert again == []
        if queue.waiters:
            head = queue.ordered(now)[0]
            assert head.demand.blockers(now), "the head waiter fits but was not admitted"
    return admitted_log, queue, [requests, tokens]


@settings(max_examples=150, deadline=None)
@given(events=arrivals(), request_limit=st.integers(1, 8), guard_s=st.sampled_from([0.0, 0.1]))
def test_no_window_ever_holds_more_than_its_limit(
    events: list[tuple[float, str, int, float]], request_limit: int, guard_s: float
) -> None:
    window_s, token_limit = 3.0, 1000
    admitted, _, _ = run_queue(events, request_limit, token_limit, window_s, guard_s)
    assert len(admitted) == len(events)  # everyone is served eventually
    times = [t for t, _ in admitted]
    for t, _ in admitted:
        inside = [(u, w) for u, w in admitted if u <= t < u + window_s]
        assert len(inside) <= request_limit
        # tokens: what each admission finally used (≤ its reservation) never sums over
        assert sum(FINAL_TOKENS[id(w)] for _, w in inside) <= token_limit
    assert times == sorted(times)


@settings(max_examples=15, deadline=None)
@given(seed_gaps=st.lists(st.floats(0.0, 0.05), min_size=1, max_size=5))
def test_fair_share_ratio_under_contention(seed_gaps: list[float]) -> None:
    # both apps keep many requests queued; share 3 must get ~3x the admissions of share 1
    events = []
    for index in range(240):
        events.append(
            (seed_gaps[index % len(seed_gaps)] / 10, "light" if index % 2 else "heavy", 0, 0.0)
        )
    admitted, _, _ = run_queue(
        events, request_limit=4, token_limit=10**9, window_s=1.0, guard_s=0.0,
        shares={"heavy": 3.0, "light": 1.0},
    )  # fmt: skip
    first_half = Counter(w.app for _, w in admitted[: len(admitted) // 2])
    ratio = first_half["heavy"] / max(1, first_half["light"])
    assert 2.5 <= ratio <= 3.5


@settings(max_examples=15, deadline=None)
@given(high_every=st.floats(0.05, 0.5))
def test_low_priority_never_starves(high_every: float) -> None:
    events = [(0.0, "batch", 0, 0.0)]
    events += [(high_every, "agent", 0, 0.0) for _ in range(200)]
    admitted, _, _ = run_queue(
        events, request_limit=1, token_limit=10**9, window_s=1.0, guard_s=0.0,
        priorities={"batch": 0, "agent": 3},
    )  # fmt: skip
    batch_at = next(t for t, w in admitted if w.app == "batch")
    assert batch_at <= 3 * 20.0 + 2.0  # three aging steps (low → critical), then FIFO


def test_pacing_spreads_a_burst_and_keeps_shares_with_closed_loop_clients() -> None:
    """8 processes, each waiting for its reply before asking again (4 of share 1, 4 of share
    3), against 20 requests per 2 s. Paced, each freed slot goes to the best-ranked waiter."""
    window = SlidingWindow("requests", 20, 2.0, 0.05, burst=0.1)
    gate = Gate("provider:p", "provider", [window])
    queue = WaitQueue(aging_s=30.0)
    clients = [("light", 1.0)] * 4 + [("heavy", 3.0)] * 4
    ready_at = dict.fromkeys(range(len(clients)), 0.0)  # when each asks again
    waiting: dict[int, Waiter] = {}
    admitted: list[tuple[float, str]] = []
    now = 0.0
    while now < 40.0:
        for index, at in list(ready_at.items()):
            if at <= now:
                app, share = clients[index]
                waiting[index] = Waiter(Demand((gate,), 0), app, 1, share, now)
                queue.add(waiting[index])
                del ready_at[index]
        done, wake = dispatch(queue, now)
        for index, waiter in list(waiting.items()):
            if waiter in done:
                admitted.append((now, waiter.app))
                ready_at[index] = now + 0.005  # the reply comes back, it asks again
                del waiting[index]
        now = min([wake, *ready_at.values()])
    times = [t for t, _ in admitted]
    for t in times:  # never over the limit in any window
        assert sum(1 for u in times if u <= t < u + 2.0) <= 20
    utilization = len(admitted) / (20 * 40.0 / 2.0)
    assert utilization >= 0.95
    counts = Counter(app for _, app in admitted)
    assert 2.6 <= counts["heavy"] / counts["light"] <= 3.4
    after_first_window = [t for t in times if t >= 2.0]
    bunched = max(sum(1 for u in after_first_window if t <= u < t + 0.1) for t in times)
    assert bunched <= 3  # smooth: never the window's 20 at once again


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(0, 3000), st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
        min_size=1,
        max_size=40,
    ),
    refunds=st.booleans(),
)
def test_demands_reserved_at_an_upper_bound_never_count_past_a_limit(
    steps: list[tuple[bool, int, float, float]], refunds: bool
) -> None:
    """Embeddings reserve an upper bound of their tokens, which may be past a window's whole
    limit, with their fewest (``least_tokens``) within it: each takes ``min(bound, limit)``
    until it settles at what it used (a window that keeps what was reserved: at least the
    fewest), so the window never counts more than its limit, whatever arrives or settles
    when; one whose fewest is past the limit never fits."""
    limit = 1000
    window = SlidingWindow("tokens", limit, 10.0, 0.0, refunds=refunds)
    gate = Gate("provider:p", "provider", [window])
    in_flight: list[tuple[Reservation, int]] = []
    now = 0.0
    for settle_first, bound, least_share, used_share in steps:
        if settle_first and in_flight:
            reservation, used = in_flight.pop(0)
            reservation.settle(used)
            assert window.usage(now) <= limit
        least = int(bound * least_share)
        demand = Demand((gate,), bound, least)
        if least > limit:
            assert demand.never_fits() is not None
            continue
        assert demand.never_fits() is None
        while demand.blockers(now):  # what is in flight settles first, then the window frees
            if in_flight:
                reservation, used = in_flight.pop(0)
                reservation.settle(used)
            else:
                now = window.free_at(demand.amount(window), now)
        assert demand.amount(window) == min(bound, limit)
        in_flight.append(
            (Reservation(demand, now), least + int((min(bound, limit) - least) * used_share))
        )
        assert window.usage(now) <= limit
        now += 0.5
    for reservation, used in in_flight:
        reservation.settle(used)
        assert window.usage(now) <= limit
