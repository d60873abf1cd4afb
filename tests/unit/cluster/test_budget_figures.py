"""Figures the fleet's budgets cannot count, against a real Valkey: a limit, a cost or a spend
past what nano-USD hold (a billion USD), infinite or NaN, and a field of a budget's hash that
another host (or a hand) left holding no amount. None of them may fail a request or the sync
task, and none may count as less than it is: each fills the budget it is in."""

from __future__ import annotations

import math
import shlex

import pytest
import redis.asyncio as aioredis

from quotad.daemon.cluster.budgets import (
    MAX_DAMAGED_CHARS,
    FleetBudget,
    FleetBudgets,
    FleetBudgetShort,
)
from quotad.daemon.cluster.spend import MAX_NANO, read_fleet_spend, to_nano
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link
from tests.unit.cluster.test_budgets import DAY, hosts

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


DAMAGED = [
    "nan", "-1e30", "-inf", "abc", "", "-5000000000", "inf", "1e30", "9223372036854775807",
]  # fmt: skip
"""Values of a field no quotad writes. Before, the first six let another host borrow past the
limit (NaN, below 0 and what is no number counted as 0 or as money given back), and each sum
that held one reached the hosts as -2**63."""


@pytest.mark.parametrize("value", DAMAGED)
@pytest.mark.parametrize("field", ["s:evil", "h:evil", "g:evil"])
async def test_a_field_that_holds_no_amount_fills_the_budget_until_it_is_gone(
    valkey: ValkeyServer, prefix: str, field: str, value: str
) -> None:
    async with hosts(valkey, prefix, 1) as (host,):
        budget = host.budget("global", 1.0)
        async with aioredis.Redis.from_url(valkey.url) as client:
            await client.hset(budget.key, mapping={field: value})
            with pytest.raises(FleetBudgetShort) as short:
                await host.budgets.borrow([budget], 0.5)
            message = str(short.value)
            assert f"Redis key {budget.key} field {field!r} holds {value!r}" in message
            assert f"HDEL {shlex.quote(budget.key)} {field}" in message
            assert budget.fleet_spent >= 0
            assert short.value.others_usd >= 1.0
            await host.budgets.sync()  # told again, counted again
            assert budget.fleet_spent + budget.fleet_held >= MAX_NANO
            assert budget.damaged.startswith(f"{field}=")
            await client.hdel(budget.key, field)
        await host.budgets.borrow([budget], 0.5)
        assert budget.held_acked == 500_000_000
        assert budget.damaged == ""


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


def test_a_damaged_field_is_named_at_most_as_long_as_the_script_cuts_it() -> None:
    """The scripts cut a damaged field to 200 characters, but a reply that is not theirs (a
    server that is not Redis running them) was kept whole, and told in every refusal."""
    budget = FleetBudget("global", "day", DAY, 1.0)
    FleetBudgets._note_damaged(budget, b"s:h=" + b"x" * 1_000_000)
    assert budget.damaged == ("s:h=" + "x" * 1_000_000)[:MAX_DAMAGED_CHARS]
