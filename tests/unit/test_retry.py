"""Backoff with full jitter and the retry budget, on a virtual clock."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.routing import Backoff, RetryBudget


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff.ceiling(10_000) == 1.0


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 5),
    cap=st.floats(0.001, 60),
    retry=st.integers(1, 100),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_within_zero_and_its_ceiling(
    base: float, cap: float, retry: int, seed: int
) -> None:
    backoff = Backoff(base, cap, random.Random(seed))
    delay = backoff.delay(retry)
    assert 0 <= delay <= min(cap, base * 2 ** (retry - 1)) + 1e-12


def test_backoff_jitter_is_full() -> None:
    """Spread over the whole range, not bunched at its top: mean near half the ceiling."""
    backoff = Backoff(1.0, 8.0, random.Random(3))
    delays = [backoff.delay(4) for _ in range(4000)]
    assert statistics.mean(delays) == pytest.approx(4.0, rel=0.05)
    assert min(delays) < 0.1
    assert max(delays) > 7.9


def test_budget_has_a_floor_then_a_share_of_requests() -> None:
    clock = VirtualClock()
    budget = RetryBudget(0.2, 3, 10.0, clock)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(20):
        budget.record_request()
    assert budget.allowed() == 4
    assert budget.try_spend()
    assert not budget.try_spend()


def test_budget_window_slides() -> None:
    clock = VirtualClock()
    budget = RetryBudget(0.5, 0, 10.0, clock)
    for _ in range(10):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(10))
    assert spent == 5
    clock.advance(10.0)  # requests and retries leave the window together
    assert budget.retries == 0
    assert not budget.try_spend()  # no request in the window, no floor: nothing
    budget.record_request()
    budget.record_request()
    assert budget.try_spend()


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.sampled_from(["request", "retry"]), st.floats(0, 3)), max_size=200
    ),
    ratio=st.floats(0, 1),
    minimum=st.integers(0, 5),
)
def test_budget_never_lets_retries_pass_their_share(
    events: list[tuple[str, float]], ratio: float, minimum: int
) -> None:
    """At every retry allowed, the retries of the trailing window (this one included) are at
    most max(minimum, ratio x the requests of that window)."""
    window = 10.0
    clock = VirtualClock()
    budget = RetryBudget(ratio, minimum, window, clock)
    requests: list[float] = []
    retries: list[float] = []
    for kind, gap in events:
        clock.advance(gap)
        now = clock.monotonic()
        if kind == "request":
            budget.record_request()
            requests.append(now)
        elif budget.try_spend():
            retries.append(now)
            in_window = sum(1 for t in retries if t > now - window)
            requests_in_window = sum(1 for t in requests if t > now - window)
            assert in_window <= max(minimum, ratio * requests_in_window)
