"""A reload that adds a budget: its total so far comes from the ledger, the rows of requests
settled just before the reload included."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.store import Store
from tests.support.store import NOW
from tests.support.store import ledger_row as row

pytestmark = pytest.mark.anyio


async def test_a_budget_a_reload_adds_counts_a_row_submitted_but_not_yet_committed(
    directory: Path,
) -> None:
    """The row of a request settled before the reload was submitted, its commit still to
    come (here it waits for another process's write lock): the ledger was read on the read
    connection's thread at once, missed it, and the new budget never counted its cost."""
    store = Store(
        parse_config({"daemon": {"timezone": "UTC"}}), directory, clock=VirtualClock(epoch=NOW)
    )
    await store.open()
    outside = sqlite3.connect(store.db.path, isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(store.ledger.record, row(1, app="agent", cost=0.25))
            await anyio.lowlevel.checkpoint()  # submitted; its commit waits for the lock
            store.reconfigure(
                parse_config({"daemon": {"timezone": "UTC"}, "budgets": {"daily_usd": 1.0}})
            )
            tasks.start_soon(store.count_new_budgets)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            outside.execute("COMMIT")
        [budget] = store.budgets.of_app("agent")
        assert budget.name == "global daily"
        assert budget.spent_usd == pytest.approx(0.25)
    finally:
        outside.close()
        await store.close()
