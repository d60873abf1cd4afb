"""The daemon's budgets held across a fleet (:mod:`quotad.daemon.cluster.shared_budgets`), each
host a real store (``quotad.db`` in a temp dir) and a real link to a real Valkey: requests
within what a host holds reserve with no round trip; the fleet's shortage is
``budget_exceeded`` with the fleet's figures; Redis away serves only what the host holds
(``rate_limited`` beyond it); finished rows become the fleet's spend report; a restarted host
tells the fleet what its ledger spent; a new day is a new fleet budget."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.cluster.link import Link
from quotad.daemon.cluster.shared_budgets import FRESH_HEARTBEATS, SharedBudgets, fleet_scope
from quotad.daemon.config import Config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.store import Store
from quotad.daemon.store.budgets import Budgets, Calendar
from quotad.daemon.store.ledger import LedgerRow
from tests.support.store import ledger_row
from tests.support.valkey import ValkeyServer, settings_for

pytestmark = pytest.mark.anyio

_numbers = itertools.count(1)


def budgets_config(daily: float = 1.0, app: float | None = None) -> Config:
    tree: dict[str, object] = {"budgets": {"daily_usd": daily}, "daemon": {"timezone": "UTC"}}
    if app is not None:
        tree["apps"] = {"build": {"daily_usd": app}}
    return parse_config(tree)


@dataclass
class Host:
    store: Store
    link: Link
    shared: SharedBudgets
    clock: VirtualClock

    def row(self, app: str, cost: float, **fields: object) -> LedgerRow:
        """A finished request's row, settled on this host's budgets (as step 7 does)."""
        now = self.clock.time()
        self.store.budgets.settle(None, app, cost, now)
        return ledger_row(next(_numbers), at=now, app=app, cost=cost, **fields)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def host(
    server: ValkeyServer,
    prefix: str,
    name: str,
    directory: Path,
    config: Config,
    clock: VirtualClock | None = None,
) -> AsyncIterator[Host]:
    """A host as the runtime starts one: its store opened, its spend loaded, then joined."""
    clock = clock or VirtualClock(epoch=1_796_000_000.0)
    store = Store(config, directory, clock)
    await store.open()
    link = Link(settings_for(server.url, prefix, name), clock=clock)
    shared = SharedBudgets(link, store.budgets, store.ledger)
    try:
        await shared.load()
        assert await link.open()
        await link.join()
        assert link.health == "connected"
        yield Host(store, link, shared, clock)
    finally:
        with anyio.CancelScope(shield=True):
            await link.close()
            await store.close()


@contextlib.asynccontextmanager
async def two_hosts(
    server: ValkeyServer,
    prefix: str,
    directories: list[Path],
    config: Config,
    clock: VirtualClock | None = None,
) -> AsyncIterator[tuple[Host, Host]]:
    """Hosts ``a`` and ``b`` of one fleet with the same configuration (and clock, if given)."""
    async with (
        host(server, prefix, "a", directories[0], config, clock) as a,
        host(server, prefix, "b", directories[1], config, clock) as b,
    ):
        yield a, b


@pytest.fixture
def directories(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [Path(tmp_path_factory.mktemp(f"host{index}")) for index in range(3)]


async def test_within_what_a_host_holds_a_request_reserves_with_no_round_trip(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    async with host(valkey, prefix, "a", directories[0], budgets_config()) as a:
        now = a.clock.time()
        calls = a.link.calls
        first = await a.shared.reserve("x", 0.2, now)
        assert first is not None
        assert a.link.calls == calls + 1  # borrowed: nothing was held yet
        a.store.budgets.settle(first, "x", 0.0, now)  # nothing spent; still held until a sync
        calls = a.link.calls
        for _ in range(3):
            hold = await a.shared.reserve("x", 0.05, now)
            assert hold is not None
        assert a.link.calls == calls  # all within the 0.2 held
        assert a.shared.borrows == 1


async def test_the_fleets_shortage_is_budget_exceeded_naming_the_fleets_figures(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    config = budgets_config(daily=1.0, app=0.5)
    async with two_hosts(valkey, prefix, directories, config) as (a, b):
        assert await a.shared.reserve("build", 0.4, a.clock.time()) is not None
        with pytest.raises(RequestError) as refused:
            await b.shared.reserve("build", 0.2, b.clock.time())  # the app's 0.5: 0.4 held by a
        error = refused.value
        assert error.code == "budget_exceeded"
        assert error.details["fleet"] is True
        assert error.details["budget"] == "app build daily"
        assert error.details["others_usd"] == pytest.approx(0.4)
        assert "fleet budget 'app build daily'" in error.message
        # the global budget had room: another app of b is still served
        assert await b.shared.reserve("docs", 0.5, b.clock.time()) is not None
        assert b.store.budgets.status(b.clock.time())[0].reserved_usd == pytest.approx(0.5)
        assert b.shared.refused_short == 1


async def test_with_redis_away_a_host_serves_what_it_holds_and_refuses_the_rest(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    async with host(valkey, prefix, "a", directories[0], budgets_config()) as a:
        now = a.clock.time()
        hold = await a.shared.reserve("x", 0.3, now)
        a.store.budgets.settle(hold, "x", 0.0, now)
        a.link._down("test: Redis went away")
        assert await a.shared.reserve("x", 0.3, now) is not None  # within what it holds
        with pytest.raises(RequestError) as refused:
            await a.shared.reserve("x", 0.01, now)  # beyond: fail closed
        assert refused.value.code == "rate_limited"
        assert refused.value.retry_after_s is not None
        assert refused.value.retry_after_s > 0
        assert "fail closed" in refused.value.message
        assert a.shared.refused_unreachable == 1


async def test_finished_rows_make_the_fleets_spend_report(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    config = budgets_config(daily=10.0)
    async with two_hosts(valkey, prefix, directories, config) as (a, b):
        a.shared.finished(a.row("build", 0.25))
        a.shared.finished(a.row("docs", 0.5, status="rate_limited"))
        b.shared.finished(b.row("build", 1.0))
        b.shared.finished(b.row("build", 0.0, cached=True)._replace(semantic_similarity=0.95))
        await b.shared.fleet.sync()  # b's pushed; a's are pushed by the report itself
        now = a.clock.time()
        by_host = await a.shared.report("day", "host", now)
        assert by_host.fleet
        assert by_host.hosts == ["a", "b"]
        rows = {row.key: row for row in by_host.rows}
        assert rows["a"].cost_usd == pytest.approx(0.75)
        assert (rows["a"].requests, rows["a"].errors) == (2, 1)
        assert rows["b"].cost_usd == pytest.approx(1.0)
        assert (rows["b"].requests, rows["b"].cache_hits, rows["b"].semantic_hits) == (2, 1, 1)
        assert by_host.total.cost_usd == pytest.approx(1.75)
        by_app = await a.shared.report("month", "app", now)
        assert [(row.key, round(row.cost_usd, 6)) for row in by_app.rows] == [
            ("build", 1.25),
            ("docs", 0.5),
        ]
        assert by_app.forecast_month_usd is not None
        (budget,) = by_app.budgets
        assert budget.spent_usd == pytest.approx(1.75)  # the fleet's, not a's 0.75


async def test_a_restarted_host_tells_the_fleet_what_its_ledger_spent(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    config = budgets_config(daily=1.0)
    clock = VirtualClock(epoch=1_796_000_000.0)
    async with host(valkey, prefix, "a", directories[0], config, clock) as a:
        row = a.row("x", 0.7)
        await a.store.ledger.record(row)
        a.shared.finished(row)
    # a is gone; a fresh Redis key prefix would not know it, this one has its last push or
    # nothing: a comes back from its ledger alone
    async with two_hosts(valkey, prefix, directories, config, clock) as (a, b):
        assert a.store.budgets.status(clock.time())[0].spent_usd == pytest.approx(0.7)
        with pytest.raises(RequestError) as refused:
            await b.shared.reserve("x", 0.31, clock.time())
        assert refused.value.details["others_usd"] == pytest.approx(0.7)
        report = await b.shared.report("day", "host", clock.time())
        assert {row.key: round(row.cost_usd, 6) for row in report.rows} == {"a": 0.7}


async def test_what_every_hosts_guardrails_found_is_in_the_fleets_report(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    """a's guardrails block a request and find a card in it (a row of its ledger never
    pushed, as by a quotad older than these figures: a, upgraded, tells the fleet from its
    ledger when it joins), b's find e-mail addresses as its requests finish: the report sums
    both, by every key, as one host's report counts its own (``blocked``, ``entities``)."""
    config = budgets_config(daily=10.0)
    clock = VirtualClock(epoch=1_796_000_000.0)
    async with host(valkey, prefix, "a", directories[0], config, clock) as a:
        blocked = a.row("build", 0.0, status="blocked")._replace(entities='{"credit_card":1}')
        await a.store.ledger.record(blocked)
    async with two_hosts(valkey, prefix, directories, config, clock) as (a, b):
        found = b.row("docs", 0.5)._replace(entities='{"email":2}')
        b.shared.finished(found)
        b.shared.finished(b.row("docs", 0.25)._replace(entities='{"email":1,"phone":1}'))
        b.shared.finished(b.row("build", 0.1))
        await b.shared.fleet.sync()
        now = clock.time()
        by_host = await a.shared.report("day", "host", now)
        rows = {
            row.key: (row.requests, row.errors, row.blocked, row.entities) for row in by_host.rows
        }
        assert rows == {
            "a": (1, 1, 1, {"credit_card": 1}),
            "b": (3, 0, 0, {"email": 3, "phone": 1}),
        }
        assert (by_host.total.blocked, by_host.total.entities) == (
            1,
            {"credit_card": 1, "email": 3, "phone": 1},
        )
        by_app = await b.shared.report("week", "app", now)
        assert {row.key: (row.blocked, row.entities) for row in by_app.rows} == {
            "build": (1, {"credit_card": 1}),
            "docs": (0, {"email": 3, "phone": 1}),
        }
        for by in ("model", "target", "day"):
            report = await b.shared.report("month", by, now)
            assert report.total.blocked == 1, by
            assert report.total.entities == {"credit_card": 1, "email": 3, "phone": 1}, by
            assert sum(row.blocked for row in report.rows) == 1, by


async def test_a_new_day_is_a_new_fleet_budget(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    clock = VirtualClock(epoch=1_796_000_000.0)
    async with host(valkey, prefix, "a", directories[0], budgets_config(), clock) as a:
        hold = await a.shared.reserve("x", 0.9, clock.time())
        a.store.budgets.settle(hold, "x", 0.9, clock.time())
        await a.shared.fleet.sync()
        with pytest.raises(RequestError):
            await a.shared.reserve("x", 0.2, clock.time())
        yesterday = set(a.shared.fleet.budgets)
        clock.advance(86400.0)
        assert await a.shared.reserve("x", 0.9, clock.time()) is not None
        a.shared.refresh()
        assert not yesterday & set(a.shared.fleet.budgets)  # yesterday's dropped


async def test_a_fleet_budget_crossing_alert_at_is_an_event_on_every_host(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    config = budgets_config(daily=1.0)
    async with two_hosts(valkey, prefix, directories, config) as (a, b):
        events: list[tuple[str, str]] = []
        b.shared.events = lambda kind, message, level: events.append((kind, message))
        a.shared.finished(a.row("x", 0.5))
        b.shared.finished(b.row("x", 0.2))
        await a.shared.fleet.sync()
        await b.shared.fleet.sync()  # b: 0.7 of 1.0 (neither host alone is near 0.8)
        await b.shared.fleet.sync()
        assert events == []
        a.shared.finished(a.row("x", 0.15))
        await a.shared.fleet.sync()
        for _ in range(3):  # sees 0.85 of 1.0 at the next sync; once per period
            await b.shared.fleet.sync()
        assert len(events) == 1
        kind, message = events[0]
        assert kind == "budget_alert"
        assert "fleet budget 'global daily' has spent $0.85 of $1.00 (85%" in message


def test_an_app_called_global_is_not_the_global_budget() -> None:
    budgets = Budgets(
        parse_config({"budgets": {"daily_usd": 1.0}, "apps": {"global": {"daily_usd": 0.5}}}),
        Calendar("UTC"),
    )
    scopes = [fleet_scope(budget) for budget in budgets.app_budgets["global"]]
    assert scopes == ["global", "app:global"]


async def test_with_no_budget_a_finished_row_waits_for_the_heartbeats_sync(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    """No hold to give back: no sync per request, only the spend at the next heartbeat."""
    unbudgeted = parse_config({"daemon": {"timezone": "UTC"}})
    async with (
        host(valkey, prefix, "a", directories[0], unbudgeted) as a,
        host(valkey, prefix, "b", directories[1], budgets_config()) as b,
    ):
        a.shared.finished(a.row("x", 0.1))
        assert not a.shared.fleet._dirty.is_set()
        assert a.shared.fleet.spend.dirty  # pushed at the next sync
        b.shared.finished(b.row("x", 0.1))
        assert b.shared.fleet._dirty.is_set()


async def test_status_shows_the_fleets_figures_as_last_heard_with_no_round_trip(
    valkey: ValkeyServer, prefix: str, directories: list[Path]
) -> None:
    clock = VirtualClock(epoch=1_796_000_000.0)
    async with two_hosts(valkey, prefix, directories, budgets_config(daily=10.0), clock) as (a, b):
        a.shared.finished(a.row("build", 2.0))
        await a.shared.fleet.sync()
        b.shared.finished(b.row("docs", 0.5))
        hold = await b.shared.reserve("docs", 0.1, clock.time())  # borrows: hears a's 2.0
        assert hold is not None
        heard = clock.time()
        clock.advance(0.5)
        b.shared.finished(b.row("docs", 0.25))  # not pushed yet: b's own figure now
        calls = b.link.calls
        (day,) = b.shared.budget_status()
        assert b.link.calls == calls  # no round trip
        assert day.fleet
        assert day.spent_usd == pytest.approx(2.75)  # a's 2.0 as heard, b's 0.75 now
        assert day.reserved_usd >= 0.1 - 1e-9  # b's request in flight at least
        assert day.as_of == pytest.approx(heard, abs=0.01)
        # b's own figures, saying so, once the fleet's are stale or Redis is away
        clock.advance(FRESH_HEARTBEATS * b.link.settings.heartbeat_s + b.link.settings.timeout_s)
        (stale,) = b.shared.budget_status()
        assert not stale.fleet
        assert stale.as_of == 0.0
        assert stale.spent_usd == pytest.approx(0.75)
        assert stale.reserved_usd == pytest.approx(0.1)
        await b.shared.fleet.sync()
        assert b.shared.budget_status()[0].fleet
        b.link._down("test: Redis went away")
        (degraded,) = b.shared.budget_status()
        assert not degraded.fleet
        assert degraded.spent_usd == pytest.approx(0.75)
