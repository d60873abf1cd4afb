"""Retention (``daemon.ledger_retention_days``) on a real ``quotad.db``: what a sweep deletes and
keeps, that no figure of the reports or budgets changes, batches, and the task's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.store import Store
from quotad.daemon.store.ledger import Ledger, statements
from quotad.daemon.store.retention import SUMMARY_KEEP_DAYS, Retention, Swept
from tests.support.polling import run_loop_until
from tests.support.store import CALENDAR, NOW
from tests.support.store import ledger_row as row

pytestmark = pytest.mark.anyio

DAY = 86400.0
RETENTION_DAYS = 7
OLDEST_DAYS_BACK = 120
APPS = ("agent", "batch", "scraper")


def store_config(retention_days: float) -> Any:
    return parse_config(
        {
            "daemon": {"ledger_retention_days": retention_days, "timezone": "UTC"},
            "budgets": {"daily_usd": 10.0, "monthly_usd": 100.0},
            "apps": {"agent": {"daily_usd": 5.0, "monthly_usd": 50.0}},
        }
    )


@contextlib.asynccontextmanager
async def opened(directory: Path, retention_days: float) -> AsyncIterator[Store]:
    """The store in ``directory``, opened (budgets loaded from the file) and closed after."""
    store = Store(store_config(retention_days), directory, clock=VirtualClock(epoch=NOW))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(directory: Path) -> AsyncIterator[Store]:
    """A store kept 7 days, on a clock standing at :data:`NOW`."""
    async with opened(directory, RETENTION_DAYS) as kept_a_week:
        yield kept_a_week


def seconds_back(days: int) -> float:
    """A moment ``days`` local days before :data:`NOW` (a second earlier, so that a row
    exactly ``days`` days old is past a retention of ``days``)."""
    return NOW - days * DAY - (1.0 if days else 0.0)


async def seed(store: Store) -> None:
    """Rows of three apps on every day from :data:`NOW` back :data:`OLDEST_DAYS_BACK` days
    (costs varying by day, some finding entities, some blocked), and audit rows as old."""
    rows = []
    for days in range(OLDEST_DAYS_BACK + 1):
        at = seconds_back(days)
        for number, app in enumerate(APPS):
            seeded = row(days * 10 + number, at=at, app=app, cost=0.001 * (days % 9 + number + 1))
            if days % 5 == number:
                seeded = seeded._replace(entities='{"email": 2}')
            if days % 7 == number:
                seeded = seeded._replace(status="blocked", cost_usd=0.0)
            rows.append(seeded)
    await store.db.write([s for seeded in rows for s in statements(seeded)])
    await store.db.write(
        [
            (
                "INSERT INTO audit (time, action, target, caller_uid, caller_pid, detail) "
                "VALUES (?, 'reload', 'quotad.toml', 1000, 42, '{}')",
                (seconds_back(days),),
            )
            for days in range(0, OLDEST_DAYS_BACK + 1, 3)
        ]
    )


async def figures(store: Store) -> dict[str, Any]:
    """Everything reports and budgets read, as plain data: ``quotad spend`` for each period
    (by app, by day: forecast and anomaly flags), the budgets' totals, the fleet's days."""
    ledger = store.ledger
    found: dict[str, Any] = {}
    for period in ("day", "week", "month"):
        for by in ("app", "model", "day"):
            found[f"{period}/{by}"] = msgspec.to_builtins(await ledger.report(period, by, NOW))
    found["spent_by_app"] = sorted(await ledger.spent_by_app(NOW))
    fleet_since = (date.fromisoformat(CALENDAR.day(NOW)) - timedelta(days=61)).isoformat()
    found["fleet_days"] = sorted(await ledger.daily_totals(fleet_since))
    found["fleet_guardrails"] = sorted(await ledger.daily_guardrails(fleet_since))
    return found


async def count(store: Store, sql: str, *parameters: Any) -> int:
    ((value,),) = await store.db.read(sql, parameters)
    return int(value)


async def test_a_sweep_deletes_rows_past_the_retention_and_changes_no_figure(
    directory: Path,
) -> None:
    async with opened(directory, RETENTION_DAYS) as store:
        await seed(store)
    async with opened(directory, RETENTION_DAYS) as store:
        before = await figures(store)
        budgets_before = msgspec.to_builtins(store.budgets.status(NOW))
        swept = await store.retention.sweep()
        assert await figures(store) == before
        assert msgspec.to_builtins(store.budgets.status(NOW)) == budgets_before
        await check_what_is_kept(store, swept)
    assert before["month/app"]["total"]["cost_usd"] > 0
    assert before["month/app"]["forecast_month_usd"] is not None
    assert before["month/app"]["total"]["blocked"] > 0
    assert before["month/app"]["total"]["entities"]["email"] > 0
    assert sum(budget["spent_usd"] for budget in budgets_before) > 0
    # budgets as a restart loads them from the file
    async with opened(directory, RETENTION_DAYS) as store:
        assert msgspec.to_builtins(store.budgets.status(NOW)) == budgets_before
        assert sorted(store.spent_at_open) == before["spent_by_app"]
        assert await figures(store) == before
        assert await store.retention.sweep() == Swept()  # nothing left to delete


async def check_what_is_kept(store: Store, swept: Swept) -> None:
    """Rows and audit entries of the last 7 days, and summaries of the last 62, only."""

    cutoff = NOW - RETENTION_DAYS * DAY
    assert await count(store, "SELECT count(*) FROM ledger WHERE time < ?", cutoff) == 0
    kept_rows = await count(store, "SELECT count(*) FROM ledger")
    assert kept_rows == RETENTION_DAYS * len(APPS)  # days 0-6 back, not the 7th (1 s past)
    assert swept.ledger == (OLDEST_DAYS_BACK + 1 - RETENTION_DAYS) * len(APPS)
    assert await count(store, "SELECT count(*) FROM audit WHERE time < ?", cutoff) == 0
    assert await count(store, "SELECT count(*) FROM audit") == len(range(0, RETENTION_DAYS, 3))
    assert swept.audit == len(range(0, OLDEST_DAYS_BACK + 1, 3)) - 3

    # the daily summaries: the last 62 days kept (and the first one dropped is the 63rd)
    first_kept = CALENDAR.day(NOW - SUMMARY_KEEP_DAYS * DAY)
    ((oldest_day,),) = await store.db.read("SELECT min(day) FROM spend_daily")
    assert oldest_day == first_kept
    assert await count(store, "SELECT count(DISTINCT day) FROM spend_daily") == (
        SUMMARY_KEEP_DAYS + 1
    )
    older_found = "SELECT count(*) FROM guardrails_daily WHERE day < ?"
    assert await count(store, older_found, first_kept) == 0
    assert await count(store, "SELECT count(*) FROM guardrails_daily") > 0
    assert swept.spend_daily == (OLDEST_DAYS_BACK - SUMMARY_KEEP_DAYS) * len(APPS)
    assert swept.guardrails_daily > 0


async def test_a_retention_longer_than_62_days_keeps_the_summaries_as_long(
    store: Store,
) -> None:
    await seed(store)
    store.retention.reconfigure(90)
    swept = await store.retention.sweep()
    assert swept.ledger == (OLDEST_DAYS_BACK + 1 - 90) * len(APPS)
    ((oldest_row,), (oldest_day,)) = (
        *await store.db.read("SELECT min(time) FROM ledger"),
        *await store.db.read("SELECT min(day) FROM spend_daily"),
    )
    assert oldest_row == seconds_back(89)
    assert oldest_day == CALENDAR.day(NOW - 90 * DAY)


async def test_no_retention_deletes_nothing(directory: Path) -> None:
    store = Store(store_config(0), directory, clock=VirtualClock(epoch=NOW))
    await store.open()
    try:
        await seed(store)
        tables = ("ledger", "audit", "spend_daily", "guardrails_daily")
        counts = [await count(store, f"SELECT count(*) FROM {table}") for table in tables]
        transactions = store.db.stats.transactions
        assert await store.retention.sweep() == Swept()
        assert store.db.stats.transactions == transactions  # not even an empty write
        assert [await count(store, f"SELECT count(*) FROM {table}") for table in tables] == counts
        assert counts[0] == (OLDEST_DAYS_BACK + 1) * len(APPS)
    finally:
        await store.close()


async def test_a_sweep_of_many_rows_goes_in_batches(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = seconds_back(10)  # past the retention; its day's summary is kept
    await store.db.write(
        [s for number in range(5000) for s in statements(row(number, at=old - number))]
    )
    await store.ledger.record(row(9999))
    retention = store.retention
    retention.batch_rows = 400
    retention.pause_s = 0.0
    transactions = store.db.stats.transactions
    deletes_seen: list[int] = []
    rows_left = [await count(store, "SELECT count(*) FROM ledger")]
    write = store.db.write

    async def counted_write(batch: Any, *, durable: bool = True) -> None:
        deletes_seen.append(len(batch))
        await write(batch, durable=durable)
        rows_left.append(await count(store, "SELECT count(*) FROM ledger"))

    monkeypatch.setattr(store.db, "write", counted_write)
    swept = await retention.sweep()
    monkeypatch.undo()

    assert swept.ledger == 5000
    assert swept.writes == 13  # 5000 / 400, the last one of 200
    assert store.db.stats.transactions - transactions == 13
    assert deletes_seen == [1] * 13  # one DELETE statement per write
    removed = [earlier - later for earlier, later in itertools.pairwise(rows_left)]
    assert removed == [400] * 12 + [200]
    assert rows_left[-1] == 1


async def test_the_task_sweeps_at_start_and_on_a_reload_and_stops_when_cancelled(
    directory: Path,
) -> None:
    store = Store(store_config(0), directory, clock=VirtualClock(epoch=NOW))
    await store.open()
    try:
        await seed(store)
        retention = store.retention
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(retention.run, name=SWEEPER)
            await run_loop_until(lambda: retention._changed is not None)
            assert retention.sweeps == 0  # 0: the task waits, nothing is swept
            store.reconfigure(store_config(30))  # a reload turns it on: swept at once
            await run_loop_until(lambda: retention.sweeps == 1)
            assert await count(store, "SELECT count(*) FROM ledger") == 30 * len(APPS)
            store.reconfigure(store_config(RETENTION_DAYS))
            await run_loop_until(lambda: retention.sweeps == 2)
            assert await count(store, "SELECT count(*) FROM ledger") == RETENTION_DAYS * len(APPS)
            assert sweepers() == 1
            tasks.cancel_scope.cancel()
        assert sweepers() == 0  # the sweeper's task ended with its group
    finally:
        await store.close()


async def test_a_retention_starting_with_the_daemon_is_swept_at_start(directory: Path) -> None:
    store = Store(store_config(RETENTION_DAYS), directory, clock=VirtualClock(epoch=NOW))
    await store.open()
    try:
        await seed(store)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.retention.run)
            await run_loop_until(lambda: store.retention.sweeps == 1)
            tasks.cancel_scope.cancel()
        assert await count(store, "SELECT count(*) FROM ledger") == RETENTION_DAYS * len(APPS)
    finally:
        await store.close()


async def test_rows_kept_in_memory_are_left_alone(store: Store) -> None:
    kept = row(1, at=seconds_back(30))
    store.ledger.unrecorded.append(kept)
    await store.retention.sweep()
    assert store.ledger.unrecorded == [kept]


def test_a_retention_is_built_from_the_config(directory: Path) -> None:
    store = Store(store_config(14.5), directory)
    assert isinstance(store.retention, Retention)
    assert store.retention.days == 14.5
    store.reconfigure(store_config(0))
    assert store.retention.days == 0
    assert isinstance(store.ledger, Ledger)


SWEEPER = "retention-sweeper"


def sweepers() -> int:
    """Tasks running :meth:`Retention.run` under the name :data:`SWEEPER`."""
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == SWEEPER and not task.done())
