"""A reload that adds a budget, over a ``quotad.db`` whose ``spend_daily`` holds a row of this
month whose cost cannot be read (SQLite keeps any value in any column; a file damaged or
edited by hand): the start refuses such a file when a budget counts the row
(tests/unit/store/test_store_open.py), and so does a reload that adds one."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotad.daemon.runtime import Daemon
from tests.support.store import ledger_row
from tests.unit.test_reload import daemon_on_file, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

NO_BUDGET = ""
GLOBAL_DAILY = "[budgets]\ndaily_usd = 1.0\n"


@contextlib.asynccontextmanager
async def spent_and_damaged(tables: str, cost: object) -> AsyncIterator[tuple[Daemon, Path, Path]]:
    """A daemon on a config of ``tables`` (not serving; its store open) whose ledger holds one
    request of app ``agent`` that cost $0.25 now, its ``spend_daily`` cost then set to
    ``cost``; the daemon, its config file and its ``quotad.db``."""
    async with daemon_on_file(tables) as (daemon, path):
        await daemon.store.open()
        try:
            await daemon.store.ledger.record(ledger_row(1, at=time.time(), cost=0.25))
            with sqlite3.connect(daemon.store.path) as connection:
                connection.execute("UPDATE spend_daily SET cost_usd = ?", (cost,))
            yield daemon, path, daemon.store.path
        finally:
            await daemon.store.close()


@pytest.mark.parametrize("cost", ["text", b"\x01", -100.0, float("inf"), 2e9])
async def test_a_reload_adding_a_budget_that_counts_a_cost_it_cannot_read_is_rejected(
    anyio_backend: str, cost: object
) -> None:
    """The start refused such a file, but a budget a reload added read the ledger's totals
    as before: the text counted $0 (-$100: $100 given back) and requests spent past the
    budget at once. Now the reload is rejected as an invalid config is, naming the file, the
    row and the command that mends it; once mended, the same reload applies and the budget
    counts the row's $0.25."""
    async with spent_and_damaged(NO_BUDGET, cost) as (daemon, path, db_path):
        write_config(path, GLOBAL_DAILY)
        rejected = await daemon.try_reload()
        assert rejected is not None
        assert rejected.source == str(path)
        [problem] = rejected.problems
        assert problem.startswith(f"budgets: {db_path}: table spend_daily has 1 row(s)")
        assert "a budget counts ('global daily')" in problem
        assert "app='agent'" in problem
        assert daemon.config.budgets.daily_usd is None  # the running config is kept
        assert not daemon.store.budgets.configured
        assert [event.kind for event in daemon.events.recent()] == ["reload_rejected"]
        [command] = re.findall(r'`sqlite3 \S+ "([^"]+)"`', problem)
        with sqlite3.connect(db_path) as connection:
            connection.execute(command)
        assert await daemon.try_reload() is None
        [budget] = daemon.store.budgets.of_app("agent")
        assert budget.spent_usd == pytest.approx(0.25)


async def test_a_reload_that_widens_the_budgets_to_an_app_with_such_a_row_is_rejected(
    anyio_backend: str,
) -> None:
    """An app's own budget counts only its rows: adding one for another app applies, but
    adding the global budget, which counts every app's, is rejected."""
    async with spent_and_damaged("[apps.other]\ndaily_usd = 1.0\n", "text") as (daemon, path, _):
        write_config(path, "[apps.other]\ndaily_usd = 1.0\n[apps.third]\nmonthly_usd = 5.0\n")
        assert await daemon.try_reload() is None
        write_config(path, "[apps.other]\ndaily_usd = 1.0\n" + GLOBAL_DAILY)
        rejected = await daemon.try_reload()
        assert rejected is not None
        assert "a budget counts ('global daily')" in rejected.problems[0]
        assert daemon.config.budgets.daily_usd is None


async def test_a_reload_keeping_its_budgets_reads_nothing_again(anyio_backend: str) -> None:
    """A budget that stays keeps its running total (it read the row at start, or the row
    was damaged since): a reload that changes its limit applies."""
    async with spent_and_damaged(GLOBAL_DAILY, 0.25) as (daemon, path, db_path):
        with sqlite3.connect(db_path) as connection:
            connection.execute("UPDATE spend_daily SET cost_usd = 'text'")
        write_config(path, "[budgets]\ndaily_usd = 2.0\n")
        assert await daemon.try_reload() is None
        [budget] = daemon.store.budgets.of_app("agent")
        assert (budget.limit_usd, budget.spent_usd) == (2.0, 0.0)  # as loaded: none at open
