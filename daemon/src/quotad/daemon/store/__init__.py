"""The daemon's state in one SQLite file, ``quotad.db`` in the state directory (DESIGN §4, §8).

:class:`Store` owns the file's lifetime and builds the parts the broker composes, which never
call each other:

- :mod:`.db` — the database: one writer with group commit, a reader, migrations;
- :mod:`.cache` — the response cache;
- :mod:`.ledger` — one row per request; :mod:`.spend` — reports over it;
- :mod:`.budgets` — spend limits with reservations; :mod:`.prices` — what tokens cost;
- :mod:`.keys` — HTTP front door keys; :mod:`.audit` — operator actions;
- :mod:`.retention` — old ledger and audit rows deleted (``daemon.ledger_retention_days``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.store.audit import Audit
from quotad.daemon.store.budgets import Budget, BudgetAlert, Budgets, Calendar
from quotad.daemon.store.cache import Cache
from quotad.daemon.store.db import Database, StoreError
from quotad.daemon.store.keys import Keys
from quotad.daemon.store.ledger import Ledger, LedgerRow
from quotad.daemon.store.prices import PriceTable
from quotad.daemon.store.retention import Retention
from quotad.daemon.store.spend import unreadable_spend, unreadable_spend_message

__all__ = ["DB_FILE", "Store", "StoreError"]

DB_FILE: Final = "quotad.db"

log = logging.getLogger("quotad.store")


class Store:
    """Everything the daemon keeps in ``quotad.db``, opened and closed together."""

    def __init__(self, config: Config, directory: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.path = directory / DB_FILE
        self.clock = clock
        self.db = Database(
            self.path, durability=config.daemon.durability, max_size_mb=config.daemon.max_db_mb
        )
        self.calendar = Calendar(config.daemon.timezone)
        self.prices = PriceTable(config.prices)
        self.cache = Cache(config.cache, self.db, clock)
        self.ledger = Ledger(self.db, self.calendar)
        self.budgets = Budgets(config, self.calendar)
        self.keys = Keys(self.db, clock)
        self.audit = Audit(self.db, clock)
        self.retention = Retention(
            self.db, self.calendar, clock, config.daemon.ledger_retention_days
        )
        """Its :meth:`~.retention.Retention.run` is a task of the running daemon."""
        self._new_budgets: list[Budget] = []
        self.interrupted: list[LedgerRow] = []
        """Calls a daemon that died had handed to providers, charged at :meth:`open`."""
        self.spent_at_open: list[tuple[str, float, float]] = []
        """``(app, spent today, spent this month)`` per app as read at :meth:`open`."""

    async def open(self) -> list[BudgetAlert]:
        """Open, check and migrate the file; load the cache, the budgets' totals and the
        keys. Returns the budgets already past their alert threshold. Raises
        :class:`StoreError` naming the file when it cannot be used, or when a budget would
        count a ``spend_daily`` row whose cost or day cannot be read (:meth:`_check_spend`)."""
        await self.db.open()
        try:
            await self.cache.load()
            self.interrupted = await self.ledger.recover_interrupted(self.prices)  # before totals
            now = self.clock.time()
            self.spent_at_open = await self.ledger.spent_by_app(now)
            await self._check_spend(now, self.budgets.of_app)
            alerts = self.budgets.load(self.spent_at_open, now)
            await self.keys.load()
        except BaseException:
            await self.db.close()
            raise
        log.info(
            "store %s: %d cache entries, %d keys, durability %s",
            self.path,
            len(self.cache),
            len(self.keys.list()),
            self.db.durability,
        )
        return alerts

    async def _check_spend(
        self, now: float, budgets_of: Callable[[str], tuple[Budget, ...]]
    ) -> None:
        """Refuse budgets (``budgets_of`` an app: those its requests hold on) that would count
        a ``spend_daily`` row of this month (or of no day) whose cost or day cannot be read
        (:func:`.spend.unreadable_spend`: a damaged or hand-edited file), raising
        :class:`StoreError` naming the file, the rows and the command that mends them: read as
        0, a text let requests spend past the budget, and a cost below 0 gave money back. Not
        skipped: skipping makes the same money vanish, and no figure can stand for it. Such
        rows that none of them counts are only logged."""
        rows = await unreadable_spend(self.db, self.calendar.month_bounds(now)[2] + "-01")
        counting = [budgets_of(str(row[1])) for row in rows]
        if counted := [row for row, budgets in zip(rows, counting, strict=True) if budgets]:
            names = sorted({budget.name for budgets in counting for budget in budgets})
            raise StoreError(unreadable_spend_message(self.path, counted, names))
        if rows:
            log.warning(
                "%s: %d row(s) of spend_daily of this month, or of no day, hold a cost or a day "
                "that cannot be read (no budget counts them): `quotad spend` shows them wrong",
                self.path,
                len(rows),
            )

    async def check_reload(self, config: Config) -> None:
        """Before a reloaded ``config`` is applied: raise :class:`StoreError` as the start does
        (:meth:`_check_spend`) when a budget it adds would count a row whose cost or day
        cannot be read. Such a budget reads its totals so far from the ledger
        (:meth:`count_new_budgets`), where the row counted as $0 or as money given back; a
        budget that stays reads nothing."""
        added = self.budgets.added_by(config)
        if added is not None:
            await self._check_spend(self.clock.time(), added)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (SIGHUP): prices, budgets, cache settings, durability, the
        ledger's retention; the file, its size bound and the time zone keep their running
        values until a restart. Budgets the reload adds get their totals so far in
        :meth:`count_new_budgets`."""
        self.prices.reconfigure(config.prices)
        self._new_budgets += self.budgets.reconfigure(config)
        self.cache.reconfigure(config.cache)
        self.db.durability = config.daemon.durability
        self.retention.reconfigure(config.daemon.ledger_retention_days)

    async def count_new_budgets(self) -> None:
        """Give budgets added by a reload what the ledger says was spent this day and month.
        The rows of requests settled before the reload were submitted, but may not be
        committed yet: they are waited for (:meth:`.db.Database.committed`), or the read,
        on another thread, could miss them and the new budget never count their cost."""
        if self._new_budgets:
            new, self._new_budgets = self._new_budgets, []
            await self.db.committed()
            now = self.clock.time()
            self.budgets.add_spent(new, await self.ledger.spent_by_app(now), now)

    async def close(self) -> None:
        """Write what is pending (ledger rows kept after a failed write too) and close."""
        await self.ledger.flush()
        await self.db.close()
