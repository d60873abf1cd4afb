"""What the store's start does with a ``quotad.db`` that holds rows of odd values (SQLite keeps
any value in any column; a file damaged or edited by hand): the spend the budgets count."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.store import Store, StoreError
from quotad.daemon.store.ledger import INTERRUPTED
from tests.support.store import CALENDAR, NOW
from tests.support.store import ledger_row as row

pytestmark = pytest.mark.anyio

TODAY = CALENDAR.day(NOW)


def store(directory: Path, budgets: dict[str, Any]) -> Store:
    config = parse_config({"daemon": {"timezone": "UTC"}, "budgets": budgets})
    return Store(config, directory, clock=VirtualClock(epoch=NOW))


async def spent_once(directory: Path) -> Path:
    """A file whose ledger holds one request of app ``agent`` that cost $0.25 today."""
    first = store(directory, {})
    await first.open()
    await first.ledger.record(row(1, cost=0.25))
    await first.close()
    return first.path


@pytest.mark.parametrize("cost", ["text", b"\x01", -100.0, float("inf"), 2e9])
async def test_a_cost_a_budget_counts_that_cannot_be_read_stops_the_start_until_mended(
    directory: Path, cost: object
) -> None:
    """Read as 0 (a text, bytes) or taking off what was spent (below 0), the row let requests
    spend past the budget after a restart; infinite, it made the fleet's figures fail. Skipped,
    its money would vanish all the same: the start is refused, naming the file, the row and
    the command that mends it from the ledger."""
    path = await spent_once(directory)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE spend_daily SET cost_usd = ?", (cost,))
    refused = store(directory, {"daily_usd": 1.0})
    with pytest.raises(StoreError) as error:
        await refused.open()
    message = str(error.value)
    assert f"{path}: table spend_daily has 1 row(s)" in message
    assert f"day='{TODAY}' app='agent' model='fast'" in message
    [command] = re.findall(r'`sqlite3 \S+ "([^"]+)"`', message)
    with sqlite3.connect(path) as connection:
        connection.execute(command)
    mended = store(directory, {"daily_usd": 1.0})
    await mended.open()
    try:
        [budget] = mended.budgets.of_app("agent")
        assert budget.spent_usd == pytest.approx(0.25)
    finally:
        await mended.close()


@pytest.mark.parametrize("day", ["", "yesterday", b"2026-11-20"])
async def test_a_day_that_cannot_be_read_stops_the_start_when_a_budget_counts_it(
    directory: Path, day: object
) -> None:
    """A day that is no date sorted before the month's first (an empty text) and its spend was
    left out of the budgets; which period it belongs to is unknown."""
    path = await spent_once(directory)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE spend_daily SET day = ?", (day,))
    with pytest.raises(StoreError, match="whose cost or day cannot be read"):
        await store(directory, {"monthly_usd": 10.0}).open()


async def test_rows_that_cannot_be_read_and_no_budget_counts_are_logged(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = await spent_once(directory)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE spend_daily SET cost_usd = 'text'")
    opened = store(directory, {})
    await opened.open()
    await opened.close()
    [warning] = [r.getMessage() for r in caplog.records if "spend_daily" in r.getMessage()]
    assert "1 row(s) of spend_daily of this month" in warning


@pytest.mark.parametrize("cost", [-100.0, float("inf")])
async def test_a_journal_entry_whose_cost_is_no_amount_does_not_stop_the_start(
    directory: Path, cost: float
) -> None:
    """Charged as it was, the entry made this day's spend one no budget can read, and the
    start was refused with a command that rebuilt the same figure from the ledger: the
    daemon could not start again until its ledger was edited by hand. Now it is charged its
    bound, and the budget counts it."""
    path = await spent_once(directory)
    entry = row(2, cost=cost, status=INTERRUPTED)
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO in_flight VALUES (?, ?)",
            (entry.request_id, msgspec.msgpack.Encoder().encode(entry)),
        )
    started = store(directory, {"daily_usd": 1.0})
    await started.open()
    try:
        [budget] = started.budgets.of_app("agent")
        assert budget.spent_usd == pytest.approx(0.25 + (100 * 0.15 + 20 * 0.60) / 1e6)
        assert [r.request_id for r in started.interrupted] == ["qd-test-2"]
    finally:
        await started.close()
