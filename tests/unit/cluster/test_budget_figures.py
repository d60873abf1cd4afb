"""Figures the fleet's budgets cannot count, against a real Valkey: a limit, a cost or a spend
past what nano-USD hold (a billion USD), infinite or NaN. None of them may fail a request or
the sync task, and none may count as less than it is: each fills the budget it is in."""

from __future__ import annotations

import math

import pytest

from quotad.daemon.cluster.budgets import FleetBudgets, FleetBudgetShort
from quotad.daemon.cluster.spend import MAX_NANO, read_fleet_spend, to_nano
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link
from tests.unit.cluster.test_budgets import DAY

pytestmark = pytest.mark.anyio

MAX_USD = MAX_NANO / 1e9


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        (math.inf, MAX_NANO),
        (math.nan, MAX_NANO),
        (1e308, MAX_NANO),
        (2e9, MAX_NANO),
        (MAX_USD, MAX_NANO),
        (-1e-18, 0),
        (-math.inf, MAX_NANO),
        (0.25, 250_000_000),
    ],
)
def test_a_figure_that_cannot_be_counted_counts_as_the_most_a_limit_is(
    usd: float, nano: int
) -> None:
    """Infinity raised OverflowError and NaN ValueError (the request failed ``internal``);
    past a billion USD, a figure went to Redis larger than any other host reads."""
    assert to_nano(usd) == nano


async def test_a_limit_past_a_billion_usd_holds_there_and_the_sync_goes_on(
    valkey: ValkeyServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A limit of 1e300 USD (the config takes any finite one) raised OverflowError at every
    borrow (every request of the fleet failed ``internal``) and in the sync once a request had
    reserved. A cost that cannot be counted counts as the most a limit is: never admitted as
    a small one."""
    async with joined_link(valkey, prefix) as link:
        fleet = FleetBudgets(link, lambda budget: (0.0, 0.0))
        budget = fleet.budget("global", "day", DAY, 1e300)
        assert "it holds at 1e+09 USD across the fleet" in caplog.text
        await fleet.borrow([budget], 0.5)
        budget.note_reserved(0.5, link.clock.monotonic())
        await fleet.sync()
        assert budget.held_acked > 0  # a spare ahead, sized from the limit held at 1e9 USD
        await fleet.borrow([budget], math.inf)  # holds the whole, as the whole is counted
        assert budget.held_acked == MAX_NANO
        small = fleet.budget("app:a", "day", DAY, 1.0)
        for cost in (math.inf, math.nan, 2e9):
            with pytest.raises(FleetBudgetShort):
                await fleet.borrow([small], cost)


async def test_spend_past_what_a_figure_holds_is_told_as_that_much(
    valkey: ValkeyServer, prefix: str
) -> None:
    """A saving of 1e308 USD (a cache warmed with that cost, then hit) raised OverflowError
    in the hook that adds each finished row to the fleet's spend; past a billion USD, a cost
    was pushed as a figure every host skipped, its spend counted as none."""
    async with joined_link(valkey, prefix) as link:
        fleet = FleetBudgets(link, lambda budget: (0.0, 0.0))
        fleet.spend.add(DAY, "a", "m", "p/m", 0.0, 0, 0, cache_hit=True, saved_usd=1e308)
        for _ in range(3):
            fleet.spend.add(DAY, "a", "m", "p/m", 6e8, 2**31 - 1, 2**31 - 1)
        await fleet.sync()
        [row] = await read_fleet_spend(link, [DAY])
        assert (row.cost_usd, row.saved_usd, row.requests) == (MAX_USD, MAX_USD, 4)
        assert fleet.spend.held_at_bound == 2
