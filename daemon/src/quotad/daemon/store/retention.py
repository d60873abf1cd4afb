"""Retention (``daemon.ledger_retention_days``): old ledger and audit rows deleted, in batches.

The ledger gains a row per request (180-400 bytes with its index), so without a bound
``quotad.db`` grows for as long as the daemon runs (100 requests/s: 1.6-3.5 GB a day). With
``daemon.ledger_retention_days`` above 0, :meth:`Retention.run` (a task of the running daemon,
cancelled at shutdown) sweeps at start and every :data:`SWEEP_EVERY_S`: it deletes the
``ledger`` and ``audit`` rows whose ``time`` is older than that many days, and the daily
summaries (``spend_daily``, ``guardrails_daily``) of the local days older than the larger of
the retention and :data:`SUMMARY_KEEP_DAYS`. 0 (the default) deletes nothing.

What reads what is kept: reports and budgets read the daily summaries, never the ledger's rows
(:mod:`.spend`, :meth:`.ledger.Ledger.spent_by_app`), so deleting rows changes no figure. The
longest span anything reads from the summaries is the fleet's (:mod:`quotad.daemon.cluster`:
the last 62 days); ``quotad spend`` reads at most this month and the 28 days before it (the
anomaly flags' history), 58 days back at most. Rows kept in memory because they could not be
written (:attr:`.ledger.Ledger.unrecorded`) are not in the file and are not touched.

Each batch is one write of at most :attr:`Retention.batch_rows` rows through the database's
group commit (:meth:`.db.Database.write`, not durable: losing a deletion to a power cut only
means it is done again), preceded by a read that counts what it will delete; between batches the
sweep pauses, so that requests' commits never wait behind more than one batch. Deleted rows free
pages that later rows reuse: the file stops growing, it does not shrink.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Final

import anyio

from quotad.daemon.clock import Clock
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.db import Database, StoreError, WriteFailed

log = logging.getLogger("quotad.store")

DAY_S: Final = 86400.0
SWEEP_EVERY_S: Final = 3600.0
"""Time between two sweeps (one at start): retention is counted in days."""
BATCH_ROWS: Final = 2000
"""Rows deleted per write."""
PAUSE_BETWEEN_BATCHES_S: Final = 0.02
"""How long a sweep waits between two batches, leaving the writer to requests."""
SUMMARY_KEEP_DAYS: Final = 62
"""Local days of ``spend_daily``/``guardrails_daily`` kept whatever the retention: the fleet
shares the last 62 days (:data:`quotad.daemon.cluster.spend.KEPT_DAYS`), ``quotad spend`` reads
this month and the 28 days before it, budgets this day and month."""


@dataclass(slots=True)
class Swept:
    """What one sweep deleted, and in how many writes."""

    ledger: int = 0
    audit: int = 0
    spend_daily: int = 0
    guardrails_daily: int = 0
    writes: int = 0

    @property
    def rows(self) -> int:
        """Rows deleted in all."""
        return self.ledger + self.audit + self.spend_daily + self.guardrails_daily


_TABLES: Final = (
    # (table, the columns of its key, the column its age is read from)
    ("ledger", "id", "time"),
    ("audit", "id", "time"),
    ("spend_daily", "day, app, model, target", "day"),
    ("guardrails_daily", "day, app, model, target, kind", "day"),
)


class Retention:
    """Deletes what is older than ``daemon.ledger_retention_days`` from one database."""

    def __init__(self, db: Database, calendar: Calendar, clock: Clock, days: float) -> None:
        self._db = db
        self.calendar = calendar
        self.clock = clock
        self.days = days
        """The retention in days; 0: nothing is deleted."""
        self.batch_rows = BATCH_ROWS
        self.sweep_every_s = SWEEP_EVERY_S
        self.pause_s = PAUSE_BETWEEN_BATCHES_S
        self.sweeps = 0
        """Sweeps done (whether or not they found anything)."""
        self._changed: anyio.Event | None = None
        """Set by a reload that changes the retention (made by :meth:`run`, on its loop)."""

    def reconfigure(self, days: float) -> None:
        """A reloaded retention: applied by a sweep at once when it changed."""
        if days != self.days:
            self.days = days
            if self._changed is not None:
                self._changed.set()

    async def run(self) -> None:
        """Sweep at once and every :attr:`sweep_every_s` (at once too when a reload changes
        the retention), until cancelled. A sweep that fails is logged and done again next
        time."""
        while True:
            changed = self._changed = anyio.Event()
            if self.days > 0:
                try:
                    await self.sweep()
                except (WriteFailed, StoreError) as error:
                    log.warning("retention: the sweep stopped (done again later): %s", error)
            with anyio.move_on_after(self.sweep_every_s):
                await changed.wait()

    async def sweep(self) -> Swept:
        """Delete, batch by batch, what is past the retention (nothing when it is 0)."""
        swept = Swept()
        days = self.days
        if days <= 0:
            return swept
        now = self.clock.time()
        cutoff_time = now - days * DAY_S
        keep_days = math.ceil(max(days, SUMMARY_KEEP_DAYS))
        cutoff_day = self.calendar.day(self.calendar.days_back(now, keep_days))
        for table, key, column in _TABLES:
            cutoff: float | str = cutoff_day if column == "day" else cutoff_time
            deleted = await self._delete_older(table, key, column, cutoff, swept)
            setattr(swept, table, deleted)
        self.sweeps += 1
        if swept.rows:
            log.info(
                "retention: deleted %d ledger and %d audit rows older than %g days, %d daily "
                "summary rows before %s, in %d writes",
                swept.ledger,
                swept.audit,
                days,
                swept.spend_daily + swept.guardrails_daily,
                cutoff_day,
                swept.writes,
            )
        return swept

    async def _delete_older(
        self, table: str, key: str, column: str, cutoff: float | str, swept: Swept
    ) -> int:
        """Delete the rows of ``table`` whose ``column`` is below ``cutoff``, at most
        :attr:`batch_rows` per write; how many were deleted."""
        count_sql = f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {column} < ? LIMIT ?)"
        delete_sql = (
            f"DELETE FROM {table} WHERE ({key}) IN "
            f"(SELECT {key} FROM {table} WHERE {column} < ? LIMIT ?)"
        )
        deleted = 0
        while True:
            batch = self.batch_rows
            ((count,),) = await self._db.read(count_sql, (cutoff, batch))
            if not count:
                return deleted
            if swept.writes:
                await anyio.sleep(self.pause_s)
            await self._db.write([(delete_sql, (cutoff, batch))], durable=False)
            swept.writes += 1
            deleted += int(count)
