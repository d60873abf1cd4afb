"""The strategies that order a group's targets, on a virtual clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.routing import Route, Target, unknown_price
from quotad.daemon.routing.strategies import EXPLORE_EVERY, Weighted
from tests.support.routing import make_router

NAMES = ("a/m", "b/m", "c/m")


def group(strategy: str, weights: Sequence[float] = (), names: Sequence[str] = NAMES) -> Route:
    table: dict[str, Any] = {"targets": list(names), "strategy": strategy}
    if weights:
        table["weights"] = list(weights)
    router, _, _ = make_router({"g": table})
    return router.resolve("g")


def leaders(route: Route, requests: int) -> Counter[str]:
    return Counter(
        route.strategy.order(route.targets, unknown_price)[0].name for _ in range(requests)
    )


def names(targets: Sequence[Target]) -> list[str]:
    return [target.name for target in targets]


def test_failover_keeps_the_configured_order() -> None:
    route = group("failover")
    for _ in range(3):
        assert names(route.strategy.order(route.targets, unknown_price)) == list(NAMES)
    assert route.strategy.preview(route.targets, unknown_price)[1] == "configured order"


def test_round_robin_rotates_and_preview_does_not() -> None:
    route = group("round-robin")
    order, why = route.strategy.preview(route.targets, unknown_price)
    assert names(order) == ["a/m", "b/m", "c/m"]
    assert "starts at a/m" in why
    assert names(route.strategy.preview(route.targets, unknown_price)[0])[0] == "a/m"
    orders = [names(route.strategy.order(route.targets, unknown_price)) for _ in range(4)]
    assert orders == [
        ["a/m", "b/m", "c/m"],
        ["b/m", "c/m", "a/m"],
        ["c/m", "a/m", "b/m"],
        ["a/m", "b/m", "c/m"],
    ]


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(1, 9), min_size=1, max_size=5),
    cycles=st.integers(1, 4),
)
def test_weighted_leads_in_exact_proportion_over_whole_cycles(
    weights: list[int], cycles: int
) -> None:
    """Smooth weighted round-robin: over ``sum(weights)`` requests each target leads exactly
    its weight's times, and never twice in a row more than its share needs."""
    strategy = Weighted(weights)
    picks = [strategy._pick(strategy._scores) for _ in range(cycles * sum(weights))]
    assert Counter(picks) == {i: cycles * w for i, w in enumerate(weights)}


@settings(max_examples=100, deadline=None)
@given(weights=st.lists(st.floats(0.05, 10), min_size=2, max_size=4))
def test_weighted_ratios_hold_within_tolerance_for_any_weights(weights: list[float]) -> None:
    strategy = Weighted(weights)
    requests = 2000
    counts = Counter(strategy._pick(strategy._scores) for _ in range(requests))
    total = sum(weights)
    for index, weight in enumerate(weights):
        assert counts[index] == pytest.approx(requests * weight / total, abs=len(weights))


def test_weighted_orders_the_rest_heaviest_first_and_explains() -> None:
    route = group("weighted", weights=[1, 3, 2])
    counts = leaders(route, 600)
    assert counts == {"a/m": 100, "b/m": 300, "c/m": 200}
    order = names(route.strategy.order(route.targets, unknown_price))
    assert order[1:] == [name for name in ("b/m", "c/m", "a/m") if name != order[0]]
    assert "weights 1:3:2" in route.strategy.preview(route.targets, unknown_price)[1]


def test_least_busy_puts_the_fewest_in_flight_first_and_rotates_ties() -> None:
    route = group("least-busy")
    a, b, c = route.targets
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert names(route.strategy.order(route.targets, unknown_price)) == ["b/m", "c/m", "a/m"]
    a.in_flight = b.in_flight = c.in_flight = 0
    assert leaders(route, 300) == {"a/m": 100, "b/m": 100, "c/m": 100}
    assert "fewest in flight first" in route.strategy.preview(route.targets, unknown_price)[1]
    previewed = names(route.strategy.preview(route.targets, unknown_price)[0])
    assert names(route.strategy.preview(route.targets, unknown_price)[0]) == previewed
    assert names(route.strategy.order(route.targets, unknown_price)) == previewed
    assert names(route.strategy.order(route.targets, unknown_price)) != previewed  # ties rotate


def test_latency_prefers_the_fastest_and_explores_one_request_in_twenty() -> None:
    route = group("latency", names=("a/m", "b/m"))
    a, b = route.targets
    assert names(route.strategy.order(route.targets, unknown_price)) == ["a/m", "b/m"]
    a.answered(0, 0.010, now=1.0)  # never-measured targets go first: b now
    assert route.strategy.order(route.targets, unknown_price)[0] is b
    b.answered(0, 0.050, now=2.0)
    counts = leaders(route, 10 * EXPLORE_EVERY)
    assert counts == {"a/m": 10 * EXPLORE_EVERY - 10, "b/m": 10}  # one in 20 explores b
    why = route.strategy.preview(route.targets, unknown_price)[1]
    assert "a/m 10 ms" in why
    assert "b/m 50 ms" in why


def test_latency_notices_a_target_that_recovered() -> None:
    """b was slow; it got fast. Exploration measures it again, and it takes the lead."""
    route = group("latency", names=("a/m", "b/m"))
    a, b = route.targets
    latency = {"a/m": 0.040, "b/m": 0.400}
    now = 0.0
    first_led_by_b = None
    for request in range(200):
        now += 1
        if request == 50:
            latency["b/m"] = 0.005  # b recovers
        served = route.strategy.order(route.targets, unknown_price)[0]
        served.answered(0, latency[served.name], now)
        if request > 50 and served is b and first_led_by_b is None and request % 20:
            first_led_by_b = request  # b leads on its own merit, not by exploring
    assert first_led_by_b is not None
    assert first_led_by_b < 50 + 4 * EXPLORE_EVERY
    assert b.latency_ewma_s is not None
    assert a.latency_ewma_s is not None
    assert b.latency_ewma_s < a.latency_ewma_s


def test_a_failure_makes_a_fast_failing_target_look_slow() -> None:
    route = group("latency", names=("a/m", "b/m"))
    a, b = route.targets
    a.answered(0, 0.020, now=1.0)
    b.answered(0, 0.030, now=1.0)
    a.failed(0, 0.001, now=2.0)  # refused in a millisecond
    assert route.strategy.order(route.targets, unknown_price)[0] is b


def test_cost_puts_the_cheapest_first_and_unpriced_as_free() -> None:
    route = group("cost")
    prices = {"a/m": 10.0, "b/m": 0.75}

    def price_of(name: str) -> float | None:
        return prices.get(name)

    assert names(route.strategy.order(route.targets, price_of)) == ["c/m", "b/m", "a/m"]
    prices["c/m"] = 20.0
    order, why = route.strategy.preview(route.targets, price_of)
    assert names(order) == ["b/m", "a/m", "c/m"]
    assert why == "cheapest first (USD per 1M tokens in+out): b/m $0.75, a/m $10, c/m $20"
    assert "unpriced" in route.strategy.preview(route.targets, unknown_price)[1]
