"""Fleet budgets from the hosts' side against a real Valkey: holds borrowed and given back,
all of a request's budgets at once, settles that count once, a Redis restarted empty that
does not reset spend, fail-closed when Redis is away, and many concurrent requests on
several hosts that never pass the limit."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import pytest

from quotad.daemon.cluster.budgets import FleetBudget, FleetBudgets, FleetBudgetShort
from quotad.daemon.cluster.link import Link, LinkDown
from tests.support.valkey import ValkeyServer, running_valkey, server_binary
from tests.unit.cluster.conftest import joined_link

pytestmark = pytest.mark.anyio

DAY = "2026-12-01"


@dataclass
class LocalBudget:
    """What a host's local budget knows: its own spent and what its requests reserved."""

    spent: float = 0.0
    reserved: float = 0.0


@dataclass
class Host:
    link: Link
    budgets: FleetBudgets
    local: dict[tuple[str, str, str], LocalBudget] = field(default_factory=dict)

    def budget(self, scope: str, limit: float) -> FleetBudget:
        self.local.setdefault((scope, "day", DAY), LocalBudget())
        return self.budgets.budget(scope, "day", DAY, limit)

    def state(self, budget: FleetBudget) -> tuple[float, float]:
        local = self.local[budget.key_parts]
        return local.spent, local.reserved

    async def reserve(self, budgets: list[FleetBudget], cost: float) -> bool:
        """Reserve as the broker will: locally if it fits, else borrow then reserve."""
        if not all(b.fits(*self.state(b), cost) for b in budgets):
            try:
                await self.budgets.borrow(budgets, cost)
            except FleetBudgetShort:
                return False
        assert all(b.fits(*self.state(b), cost) for b in budgets)
        for budget in budgets:
            self.local[budget.key_parts].reserved += cost
        return True

    def settle(self, budgets: list[FleetBudget], reserved: float, cost: float) -> None:
        for budget in budgets:
            local = self.local[budget.key_parts]
            local.reserved -= reserved
            local.spent += cost
        self.budgets.changed()


@contextlib.asynccontextmanager
async def hosts(server: ValkeyServer, prefix: str, count: int) -> AsyncIterator[list[Host]]:
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for index in range(count):
            link = await stack.enter_async_context(joined_link(server, prefix, f"h{index}"))
            host = Host(link, FleetBudgets(link, lambda b: (0.0, 0.0)))
            host.budgets.local_state = host.state
            made.append(host)
        yield made


async def test_a_host_holds_what_it_borrows_and_gives_back_what_it_no_longer_needs(
    valkey: ValkeyServer, prefix: str
) -> None:
    async with hosts(valkey, prefix, 2) as (a, b):
        budget_a, budget_b = a.budget("global", 1.0), b.budget("global", 1.0)
        assert not budget_a.fits(0.0, 0.0, 0.3)  # nothing held yet
        assert await a.reserve([budget_a], 0.3)
        assert budget_a.capacity() == 300_000_000
        with pytest.raises(FleetBudgetShort) as short:
            await b.budgets.borrow([budget_b], 0.8)
        assert short.value.others_usd == pytest.approx(0.3)
        assert short.value.room_usd == pytest.approx(0.7)
        assert await b.reserve([budget_b], 0.7)
        a.settle([budget_a], 0.3, 0.1)  # the request cost 0.10 of its 0.30
        await a.budgets.sync()
        assert budget_a.capacity() == 100_000_000  # spent 0.10, nothing held
        assert budget_a.fleet_spent == 100_000_000
        assert await b.reserve([budget_b], 0.2)  # what a gave back


async def test_all_of_a_requests_budgets_are_held_or_none(
    valkey: ValkeyServer, prefix: str
) -> None:
    async with hosts(valkey, prefix, 2) as (a, b):
        assert await b.reserve([b.budget("global", 1.0)], 0.9)
        app, glob = a.budget("app:x", 5.0), a.budget("global", 1.0)
        assert not await a.reserve([app, glob], 0.2)
        assert app.capacity() == 0  # the app budget had room: nothing taken from it either


async def test_syncs_replayed_count_once(valkey: ValkeyServer, prefix: str) -> None:
    async with hosts(valkey, prefix, 2) as (a, b):
        budget_a, budget_b = a.budget("global", 1.0), b.budget("global", 1.0)
        a.local[budget_a.key_parts].spent = 0.6
        for _ in range(3):
            await a.budgets.sync()
        assert budget_a.fleet_spent == 600_000_000
        with pytest.raises(FleetBudgetShort):
            await b.budgets.borrow([budget_b], 0.5)
        assert await b.reserve([budget_b], 0.4)


async def test_when_redis_is_away_a_host_spends_only_what_it_holds(
    valkey: ValkeyServer, prefix: str
) -> None:
    async with hosts(valkey, prefix, 1) as (a,):
        budget = a.budget("global", 1.0)
        assert await a.reserve([budget], 0.3)
        a.settle([budget], 0.3, 0.0)  # nothing spent; the hold stays until a sync
        a.link._down("test: Redis went away")
        assert budget.fits(0.0, 0.0, 0.3)  # within what it holds: still served
        with pytest.raises(LinkDown):
            await a.budgets.borrow([budget], 0.31)  # beyond it: refused


async def test_a_redis_restarted_empty_does_not_reset_the_fleets_spend() -> None:
    if server_binary() is None:
        pytest.skip("no valkey-server or redis-server")
    with running_valkey() as server:
        async with hosts(server, "fleet", 3) as (a, b, c):
            budgets = [host.budget("global", 1.0) for host in (a, b, c)]
            for host, budget, spent in zip((a, b), budgets, (0.5, 0.3), strict=False):
                host.local[budget.key_parts].spent = spent
                await host.budgets.sync()
            assert await c.reserve([budgets[2]], 0.1)
            for host in (a, b, c):
                await host.link.heartbeat()  # each now remembers the others
            server.kill()
            server.start()  # empty
            # c notices first and re-syncs alone: its own totals, and ghosts of a and b
            await c.link.join()
            assert c.link.health == "connected"
            with pytest.raises(FleetBudgetShort) as short:
                await c.budgets.borrow([budgets[2]], 0.2)
            assert short.value.others_usd == pytest.approx(0.8)
            # a and b come back with their own totals: still 0.9 spent or held in all
            await a.link.join()
            await b.link.join()
            with pytest.raises(FleetBudgetShort):
                await c.budgets.borrow([budgets[2]], 0.2)
            assert await c.reserve([budgets[2]], 0.0)


async def test_many_concurrent_requests_on_three_hosts_never_pass_the_budget(
    valkey: ValkeyServer, prefix: str
) -> None:
    limit = 0.40
    spent_total = 0.0
    refused = 0
    async with hosts(valkey, prefix, 3) as fleet:
        rng = random.Random(7)

        async def request(host: Host, index: int) -> None:
            nonlocal spent_total, refused
            budgets = [host.budget("global", limit), host.budget("app:a", 10.0)]
            reserved = round(rng.uniform(0.01, 0.04), 4)
            if not await host.reserve(budgets, reserved):
                refused += 1
                return
            await anyio.sleep(rng.uniform(0.0, 0.02))
            cost = round(reserved * rng.uniform(0.3, 1.0), 6)
            spent_total += cost
            host.settle(budgets, reserved, cost)
            if index % 3 == 0:
                await host.budgets.sync()

        async with anyio.create_task_group() as tasks:
            for index in range(48):
                tasks.start_soon(request, fleet[index % 3], index)
        assert spent_total <= limit + 1e-9
        assert refused > 0  # the budget was contended: the check is not vacuous
        assert spent_total >= limit * 0.5
