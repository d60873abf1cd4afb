"""The ledger: one row per request, hits and failures included, committed before the reply.

Each row is committed together with its share of ``spend_daily`` (the ledger summed per local
day, app, model and target, kept by a trigger on the insert: see :mod:`.schema`), which reports
and budgets read instead of scanning the ledger.

:meth:`Ledger.record` hands the row to the group commit and returns once it is committed
(DESIGN §8: a reply is sent only after its row is). When the row cannot be written (disk full,
I/O error), :meth:`record` raises :class:`LedgerWriteFailed` and the row is kept in memory
(with status ``internal`` if the request had succeeded: what its caller gets instead),
retried with every later write, every :data:`RETRY_EVERY_S` seconds while any is kept (so
that it is written once space returns, even if no request comes), and at shutdown, and
logged with all its fields if it still cannot be written then: a row is never silently lost.
The error says what happened to the request: the provider called and paid (its cost), or
answered from the cache; the reply withheld; the row kept and written when space returns.

A call a provider has had for :data:`JOURNAL_AFTER_S` without its row is *journaled*
(:meth:`Ledger.handed_off`, table ``in_flight``): the row it costs if the daemon dies before
its own (its bounds, as an abandoned call is charged), which its own row deletes in the same
commit. A daemon that starts finds what is left there (a crash, a kill, a power loss) and
charges it as ``interrupted`` rows (:meth:`Ledger.recover_interrupted`) before it serves, so
budgets count what providers bill for calls no reply came back for.

Columns (table ``ledger``): request_id, time (Unix), day (local calendar day, YYYY-MM-DD, in
``daemon.timezone``), kind (chat, stream, embed), app, user, uid/pid/gid of the peer, model (as
asked: a group, target or bare model), target (that answered; empty when none did), attempts,
status (``ok``, ``semantic`` for a semantic cache hit, an error code, ``cancelled``, or
``interrupted``: the daemon died while a provider had the call),
prompt/completion/cached tokens, cost_usd, saved_usd (what a cache hit saved), cached (1 for a
hit), unpriced (1 when the target has no price), wait_s, latency_s, priority, tags (JSON list),
semantic_similarity (a semantic cache hit, DESIGN §11: status ``semantic``, cached 1, and the
similarity of the two questions here; NULL for every other row, exact hits included), entities
(what the guardrails found in the request and its reply: ``{"kind": count}`` as JSON, "" when
nothing; never what).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import msgspec

from quotad.daemon.errors import RequestError, encodable
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.db import Database, Statement, WriteFailed
from quotad.daemon.store.prices import PriceTable
from quotad.daemon.store.spend import (
    DAY_OR_NULL,
    MAX_DAY_COUNT,
    SpendReport,
    amount,
    counted,
    is_amount,
)
from quotad.protocol.messages import ANSWERED, RequestRecord, SpendReply, Usage

LedgerDay = tuple[str, str, str, str, float, int, int, int, int, int, float, int]
"""``(day, app, model, target, cost, requests, prompt, completion, errors, cache hits,
saved, semantic hits)``: one row of the ledger's ``spend_daily``."""
LedgerFound = tuple[str, str, str, str, str, int]
"""``(day, app, model, target, kind, count)``: one row of the ledger's ``guardrails_daily``
(``kind``: ``blocked`` or an entity kind)."""

log = logging.getLogger("quotad.ledger")


class LedgerRow(NamedTuple):
    """One ledger row, in column order."""

    request_id: str
    time: float
    day: str
    kind: str
    app: str
    user: str
    uid: int | None
    pid: int | None
    gid: int | None
    model: str
    target: str
    attempts: int
    status: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    saved_usd: float
    cached: bool
    unpriced: bool
    wait_s: float
    latency_s: float
    priority: str
    tags: str
    semantic_similarity: float | None = None
    """A semantic cache hit: the similarity of the question it was served for (its status is
    ``semantic`` and ``cached`` 1); None for every other row."""
    entities: str = ""


COLUMNS: Final = LedgerRow._fields
_INSERT: Final = (
    f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_JOURNAL: Final = "INSERT OR REPLACE INTO in_flight (request_id, row) VALUES (?, ?)"
_UNJOURNAL: Final = "DELETE FROM in_flight WHERE request_id = ?"
_JOURNALED_ROWS: Final = "SELECT request_id, row FROM in_flight"
_JOURNAL_ENCODER: Final = msgspec.msgpack.Encoder()
_JOURNAL_DECODER: Final = msgspec.msgpack.Decoder(LedgerRow)
INTERRUPTED: Final = "interrupted"
"""The status of a row charged at start for a call a provider had when the daemon died."""
JOURNAL_AFTER_S: Final = 0.1
"""How long a provider may have a call before it is journaled: a call that answers sooner
costs no write, and a daemon that dies loses at most the calls handed off this long before."""
_TAGS_ENCODER: Final = msgspec.json.Encoder()
NO_TAGS: Final = "[]"
RETRY_EVERY_S: Final = 5.0
"""How often rows that could not be written are tried again while no other write comes."""
KEPT_ROWS_PER_WRITE: Final = 256
"""Once space returns, kept rows are written this many at a time, the WAL copied and cut
between (:meth:`.db.Database.give_back_wal`): written all at once, they went into the WAL in
one go and took back the space that had been freed, and what was left failed again."""


def encode_tags(tags: Sequence[str]) -> str:
    """The ``tags`` column of a request's tags."""
    return _TAGS_ENCODER.encode(tags).decode() if tags else NO_TAGS


def statements(row: LedgerRow, journaled: bool = False) -> list[Statement]:
    """The writes of one row: its insert (the schema's trigger adds it to its day's summary,
    in the same statement) and, for a ``journaled`` call, the removal of its journal entry
    (most calls answer within :data:`JOURNAL_AFTER_S` and have none: a delete costs a commit
    5-10 µs)."""
    if journaled:
        return [(_INSERT, row), (_UNJOURNAL, (row.request_id,))]
    return [(_INSERT, row)]


def interrupted_message(rows: Sequence[LedgerRow]) -> str:
    """What the start says of the ``interrupted`` rows it charged."""
    cost = sum(row.cost_usd for row in rows)
    return (
        f"{len(rows)} call(s) a provider had when quotad last ended without finishing them (a "
        f"crash, a kill, a power loss) charged at their bounds: ${cost:.6f} (ledger status "
        f"{INTERRUPTED})"
    )


def live_record(row: LedgerRow) -> RequestRecord:
    """What a live tail (``Subscribe`` snapshots) shows of a row."""
    return RequestRecord(
        request_id=row.request_id,
        time=row.time,
        kind=row.kind,
        app=row.app,
        target=row.target or row.model,
        status=row.status,
        wait_s=row.wait_s,
        latency_s=row.latency_s,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        cached=row.cached,
        attempts=row.attempts,
        priority=row.priority,
        semantic=row.semantic_similarity is not None,
    )


class LedgerWriteFailed(Exception):
    """A request's row could not be committed; it is kept in memory and retried."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


def withheld_message(row: LedgerRow, error: WriteFailed, fate: str | None = None) -> str:
    """What the caller of a request whose row could not be written is told: what was done
    for it (was a provider paid?), that its reply is withheld, and what becomes of the row."""
    if row.cached:
        done = "was answered from the cache (no provider called, nothing spent)"
    elif row.target and row.unpriced:
        done = f"was answered by {row.target}: the provider was called and paid (at no known price)"
    elif row.target:
        done = (
            f"was answered by {row.target}: the provider was called and paid "
            f"({row.cost_usd:.6f} USD, counted against the budgets)"
        )
    else:
        done = "reached no provider"
    return (
        f"request {row.request_id} {done}, but its ledger row could not be written ({error}); "
        f"the reply is withheld. {fate or KEPT}; quote request id {row.request_id}"
    )


KEPT: Final = (
    "The row is kept in memory and will be written to the ledger when space returns (tried "
    f"again with every write, every {RETRY_EVERY_S:g} s, and at shutdown)"
)


def _log_unwritable(row: LedgerRow, error: WriteFailed) -> None:
    """Log a row that cannot be written, with all its fields: never silently lost."""
    log.error("unwritten ledger row (%s): %s", error, _TAGS_ENCODER.encode(row._asdict()).decode())


def _not_recovered(count: int, error: WriteFailed) -> None:
    """Log journal entries that could not be charged at start (they stay journaled)."""
    log.error(
        "%d call(s) journaled by a daemon that died cannot be charged now (%s): they stay "
        "journaled, and the next start tries again",
        count,
        error,
    )


MAX_KEPT_ROWS: Final = 10_000
"""Rows kept in memory while the ledger cannot be written (about 1 KB each), past which only
those of requests that cost something are kept. Few come: step 2 refuses requests while rows
are kept (:meth:`Ledger.ready`), but each refusal has a row too."""


class Ledger:
    """Writes rows through the group commit; reads spend totals and reports."""

    def __init__(self, db: Database, calendar: Calendar) -> None:
        self._db = db
        self.calendar = calendar
        self.unrecorded: list[LedgerRow] = []
        """Rows that could not be written yet (the database full or failing), oldest first."""
        self.not_kept = 0
        """Rows of requests that cost nothing, not kept because :data:`MAX_KEPT_ROWS` were."""
        self.last_failure: WriteFailed | None = None
        """Why the last write of a row failed."""
        self._retry: asyncio.Task[WriteFailed | None] | None = None
        self._retry_timer: asyncio.Task[None] | None = None
        self.retry_every_s = RETRY_EVERY_S
        self.reports = SpendReport(db, calendar)
        self._handed_off: dict[str, Callable[[], LedgerRow]] = {}
        """Calls a provider has, not journaled yet: the row each costs if the daemon dies."""
        self._in_journal: set[str] = set()
        """Calls journaled whose rows are not written yet (each row deletes its entry)."""
        self._journal_timer: asyncio.TimerHandle | None = None
        self._journal_failing = False

    def problems(self) -> list[str]:
        """What keeps requests from being served now (``quotad status``, ``/healthz``): rows
        kept from a failed write."""
        if not self.unrecorded:
            return []
        return [
            f"ledger: {len(self.unrecorded)} row(s) kept in memory, not yet written "
            f"({encodable(str(self.last_failure))}); requests are refused with overloaded "
            "until they are"
        ]

    async def ready(self) -> None:
        """Step 2: whether a new row can be written, before anything is spent on the request.
        With rows kept from a failed write, those are tried first (one attempt, whoever asks
        meanwhile waits for it); while they still cannot be written, the request is refused
        with ``overloaded``, so that no provider is paid for a reply its row could not carry."""
        if not self.unrecorded:
            return
        self._retry_unrecorded()
        if self._retry is None:
            return
        failure = await asyncio.shield(self._retry)
        if failure is not None:
            raise RequestError(
                "overloaded",
                f"the ledger cannot be written ({failure}): request refused before any "
                f"provider was called; {len(self.unrecorded)} row(s) are kept in memory and "
                f"tried again every {self.retry_every_s:g} s (`quotad cache clear` frees space)",
                retry_after_s=self.retry_every_s,
            )

    async def record(self, row: LedgerRow) -> None:
        """Commit ``row`` (with whatever else is pending); raise :class:`LedgerWriteFailed`
        if it cannot be, after keeping it for later."""
        self._handed_off.pop(row.request_id, None)
        try:
            self._retry_unrecorded()
            await self._db.write(self._statements(row), durable=row.cost_usd > 0)
            self._in_journal.discard(row.request_id)
        except WriteFailed as error:
            answered = row.status in ANSWERED  # what the caller gets instead of the answer
            fate = self._keep(row._replace(status="internal") if answered else row, error)
            raise LedgerWriteFailed(withheld_message(row, error, fate), row.request_id) from None

    def _statements(self, row: LedgerRow) -> list[Statement]:
        return statements(row, row.request_id in self._in_journal)

    # ------------------------------------------------------------------ the journal

    def handed_off(self, request_id: str, interrupted_row: Callable[[], LedgerRow]) -> None:
        """A provider has request ``request_id`` now (again, after a failed attempt): unless
        its row is recorded within :data:`JOURNAL_AFTER_S`, journal ``interrupted_row()``
        then (its ``day`` is filled in here)."""
        self._handed_off[request_id] = interrupted_row
        if self._journal_timer is None:
            loop = asyncio.get_running_loop()
            self._journal_timer = loop.call_later(JOURNAL_AFTER_S, self._journal)

    def not_handed_off(self, request_id: str) -> None:
        """No provider may bill request ``request_id`` now (its call failed, refused): its
        entry is not journaled, or is deleted (its row's commit deletes it again, in case
        this write fails)."""
        self._handed_off.pop(request_id, None)
        if request_id in self._in_journal:
            with contextlib.suppress(WriteFailed):  # closing: its row's commit deletes it
                self._db.write_later([(_UNJOURNAL, (request_id,))])

    def _journal(self) -> None:
        """Journal the calls handed off since the last time (one commit for them all)."""
        self._journal_timer = None
        pending, self._handed_off = self._handed_off, {}
        writes: list[Statement] = []
        for request_id, interrupted_row in pending.items():
            try:
                row = interrupted_row()
                row = row._replace(day=self.calendar.day(row.time))
                writes.append((_JOURNAL, (request_id, _JOURNAL_ENCODER.encode(row))))
                self._in_journal.add(request_id)
            except Exception:  # a bug: it costs this entry only
                log.exception("could not journal request %s", encodable(request_id))
        if not writes:  # every call answered in time
            return
        try:
            self._db.write_later(writes, self._journaled, durable=True)
        except WriteFailed as closed:  # the database is closing: its rows come by the drain
            self._journaled(closed)

    def _journaled(self, failure: WriteFailed | None) -> None:
        if failure is not None and not self._journal_failing:
            log.error(
                "calls in flight could not be journaled (%s): a daemon that dies "
                "now leaves their cost unrecorded",
                failure,
            )
        elif failure is None and self._journal_failing:
            log.info("calls in flight are journaled again")
        self._journal_failing = failure is not None

    async def recover_interrupted(self, prices: PriceTable) -> list[LedgerRow]:
        """At start, before serving: the calls journaled by a daemon that died before their
        rows, charged as :data:`INTERRUPTED` rows (their bounds), the journal emptied in the
        same commit. The rows written; an entry that cannot be read is logged and dropped, so
        is one whose row the ledger refuses for its values (logged whole), each of the others
        then charged on its own; one whose cost is no amount is charged its bound at
        ``prices`` (:func:`_bounded`). When they cannot be written (a full disk), they stay
        journaled for the next start, and the error is logged."""
        found = await self._db.read(_JOURNALED_ROWS)
        if not found:
            return []
        entries: list[tuple[str, LedgerRow]] = []
        for request_id, data in found:
            try:
                row = _JOURNAL_DECODER.decode(data)._replace(status=INTERRUPTED)
            except (msgspec.DecodeError, TypeError) as error:
                log.error(
                    "journal entry of request %s cannot be read (%s): dropped",
                    encodable(str(request_id)),
                    error,
                )
            else:
                if (bounded := _bounded(str(request_id), row, prices)) is not None:
                    entries.append((str(request_id), bounded))
        writes: list[Statement] = [(_INSERT, row) for _, row in entries]
        try:
            await self._db.write([*writes, ("DELETE FROM in_flight", ())], durable=True)
        except WriteFailed as error:
            if error.for_its_values:  # an entry's row held back the others: each on its own
                return await self._recover_each(entries)
            _not_recovered(len(entries), error)
            return []
        return [row for _, row in entries]

    async def _recover_each(self, entries: list[tuple[str, LedgerRow]]) -> list[LedgerRow]:
        """Charge each journal entry with a write of its own (one commit: each fails alone),
        then drop the entries left: unreadable, or refused for their values (logged whole).
        The rows written."""
        outcomes = await asyncio.gather(
            *(
                self._db.write([(_INSERT, row), (_UNJOURNAL, (request_id,))], durable=True)
                for request_id, row in entries
            ),
            return_exceptions=True,
        )
        charged = []
        left: list[WriteFailed] = []  # failed for the disk: left journaled, for the next start
        for (_, row), outcome in zip(entries, outcomes, strict=True):
            if outcome is None:
                charged.append(row)
            elif isinstance(outcome, WriteFailed) and outcome.for_its_values:
                _log_unwritable(row, outcome)
            elif isinstance(outcome, WriteFailed):
                left.append(outcome)
            else:
                raise outcome
        if left:  # the entries refused for their values are tried (and logged) again then
            _not_recovered(len(left), left[0])
            return charged
        try:
            await self._db.write([("DELETE FROM in_flight", ())], durable=True)
        except WriteFailed as error:  # dropped at the next start instead
            log.error("journal entries that cannot be charged not dropped: %s", error)
        return charged

    # ------------------------------------------------------------------ kept rows

    def _keep(self, row: LedgerRow, error: WriteFailed) -> str | None:
        """Keep a row that could not be written, to write it later; past :data:`MAX_KEPT_ROWS`
        only if it cost something (a refusal's or a hit's row is counted in :attr:`not_kept`).
        What became of it when it was not kept."""
        if error.for_its_values:  # kept, it would fail every retry
            _log_unwritable(row, error)
            return "The row cannot be written for what it holds: the daemon's log has it whole"
        if len(self.unrecorded) >= MAX_KEPT_ROWS and row.cost_usd <= 0:
            self.not_kept += 1
            if self.not_kept == 1:
                log.error(
                    "%d ledger rows kept in memory: the rows of requests that cost nothing are "
                    "no longer kept (counted until a write succeeds)",
                    len(self.unrecorded),
                )
            return f"The row (it cost nothing) is not kept: {MAX_KEPT_ROWS} rows already are"
        self.unrecorded.append(row)
        self.last_failure = error
        if row.cost_usd > 0 or len(self.unrecorded) % 1000 == 1:  # refusals: not one line each
            log.error(
                "ledger row of request %s not written yet (%d kept in memory to retry): %s",
                row.request_id,
                len(self.unrecorded),
                error,
            )
        if self._retry_timer is None:
            self._retry_timer = asyncio.create_task(self._retry_while_kept())
        return None

    async def _retry_while_kept(self) -> None:
        """Every :attr:`retry_every_s`, try the kept rows again, until none is left."""
        try:
            while self.unrecorded:
                await asyncio.sleep(self.retry_every_s)
                try:
                    self._retry_unrecorded()
                except WriteFailed:  # the database is closed: flush() logs what is left
                    return
        finally:
            self._retry_timer = None

    def _retry_unrecorded(self) -> None:
        """Start trying the rows that could not be written again (:meth:`_write_kept`), unless
        a retry is under way; a closed database raises :class:`WriteFailed` here."""
        if not self.unrecorded or self._retry is not None:
            return
        self._db.check_open()
        self._retry = asyncio.create_task(self._write_kept(), name="quotad-ledger-retry")

    async def _write_kept(self) -> WriteFailed | None:
        """The retry. First the WAL is copied and cut (:meth:`.db.Database.give_back_wal`),
        giving back the space it held: its pages since the last checkpoint, often the most of
        what a full disk took from the database. Then the oldest kept row that cost something
        (else the oldest) alone: while the database still fails, one failed write is all a
        retry costs. Once one is written, the others follow, those that cost something first
        (what budgets count), :data:`KEPT_ROWS_PER_WRITE` at a time, each row a write of its
        own, the WAL copied and cut between. A row that cannot be written for what it holds
        is logged whole and let go, so that it holds back no other. The outcome, for whoever
        waits on it (:meth:`ready`, :meth:`flush`): the database's failure, or None once every
        row is written."""
        try:
            await self._db.give_back_wal()
            at_once = 1
            while self.unrecorded:
                paid_first = sorted(self.unrecorded, key=lambda kept: kept.cost_usd <= 0)
                written, failure = await self._write_rows(paid_first[:at_once])
                if failure is not None:
                    self.last_failure = failure
                    return failure
                at_once = KEPT_ROWS_PER_WRITE if written else 1
                if written and self.unrecorded:
                    await self._db.give_back_wal()
        finally:
            self._retry = None
        log.info("wrote the ledger rows kept in memory")
        if self.not_kept:
            log.error(
                "%d ledger row(s) of requests that cost nothing were not kept "
                "while the ledger could not be written",
                self.not_kept,
            )
            self.not_kept = 0
        return None

    async def _write_rows(self, rows: list[LedgerRow]) -> tuple[int, WriteFailed | None]:
        """Write kept ``rows``, each as a write of its own, and take those written (or let
        go) out of :attr:`unrecorded`: how many were written, and the database's failure if
        any (the first)."""
        pending = len(rows)
        all_settled = asyncio.get_running_loop().create_future()
        let_go: set[int] = set()  # ids of the rows written, or logged and let go
        failures: list[WriteFailed] = []
        written = 0

        def settled(row: LedgerRow, failure: WriteFailed | None) -> None:
            nonlocal pending, written
            if failure is None or failure.for_its_values:
                let_go.add(id(row))
                self._in_journal.discard(row.request_id)
                if failure is None:
                    written += 1
                else:
                    _log_unwritable(row, failure)
            else:
                failures.append(failure)
            pending -= 1
            if not pending:
                all_settled.set_result(None)

        try:
            for row in rows:
                self._db.write_later(
                    self._statements(row), functools.partial(settled, row), durable=True
                )
        except WriteFailed as closed:  # at the first row: nothing of them was submitted
            return 0, closed
        await all_settled
        self.unrecorded = [kept for kept in self.unrecorded if id(kept) not in let_go]
        return written, (failures[0] if failures else None)

    async def flush(self) -> None:
        """At shutdown: a last try for the rows kept in memory; log those that still fail.
        Calls still handed off (none, after a drain) are journaled now."""
        if self._journal_timer is not None:
            self._journal_timer.cancel()
            self._journal()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self._retry is not None:  # a retry is under way: its outcome comes with its commit
            await asyncio.shield(self._retry)
        if not self.unrecorded:
            return
        rows, self.unrecorded = self.unrecorded, []
        try:
            await self._db.write([s for row in rows for s in self._statements(row)])
        except WriteFailed:  # each on its own: those that can be written are
            for row in rows:
                try:
                    await self._db.write(self._statements(row))
                except WriteFailed as error:
                    _log_unwritable(row, error)
        log.info("%d ledger row(s) kept in memory written or logged", len(rows))

    async def spent_by_app(self, now: float) -> list[tuple[str, float, float]]:
        """``(app, spent today, spent this month)`` per app, for the budgets at start. Days
        after today count as today, as days of later months count in this month: they were
        spent while the clock was ahead, in a period that has not begun yet."""
        today = self.calendar.day(now)
        first_day = self.calendar.month_bounds(now)[2] + "-01"
        rows = await self._db.read(
            "SELECT app, total(CASE WHEN day >= ? THEN cost_usd ELSE 0 END), total(cost_usd) "
            "FROM spend_daily WHERE day >= ? GROUP BY app",
            (today, first_day),
        )
        return [(str(app), float(today), float(month)) for app, today, month in rows]

    async def daily_totals(self, since_day: str) -> list[LedgerDay]:
        """``(day, app, model, target, cost, requests, prompt tokens, completion tokens,
        errors, cache hits, saved, semantic hits)`` of every day from ``since_day``:
        ``spend_daily`` as it is (what a fleet is told this host spent,
        :mod:`quotad.daemon.cluster.spend`), but for rows of values that are no figures
        (:func:`_figures_only`)."""
        figures = (
            amount("cost_usd"),
            *map(counted, ("requests", "prompt_tokens", "completion_tokens", "errors")),
            counted("cache_hits"),
            amount("saved_usd"),
            counted("semantic_hits"),
        )
        rows = await self._db.read(
            f"SELECT {DAY_OR_NULL}, app, model, target, {', '.join(figures)} "
            "FROM spend_daily WHERE day >= ?",
            (since_day,),
        )
        return [
            (str(d), str(a), str(m), str(t), float(c), int(r), int(p), int(o), int(e), int(h),
             float(v), int(s))
            for d, a, m, t, c, r, p, o, e, h, v, s in _figures_only(rows, "spend_daily")
        ]  # fmt: skip

    async def daily_guardrails(self, since_day: str) -> list[LedgerFound]:
        """``(day, app, model, target, kind, count)`` of every day from ``since_day``:
        ``guardrails_daily`` as it is (what a fleet is told this host's guardrails found), but
        for rows of values that are no figures (:func:`_figures_only`)."""
        rows = await self._db.read(
            f"SELECT {DAY_OR_NULL}, app, model, target, kind, {counted('count')} "
            "FROM guardrails_daily WHERE day >= ?",
            (since_day,),
        )
        found = _figures_only(rows, "guardrails_daily")
        return [(str(d), str(a), str(m), str(t), str(k), int(c)) for d, a, m, t, k, c in found]

    async def report(self, period: str, by: str, now: float) -> SpendReply:
        """``quotad spend``: totals of ``period`` grouped ``by`` a column (see
        :mod:`.spend`)."""
        return await self.reports.build(period, by, now)


def _bounded(request_id: str, row: LedgerRow, prices: PriceTable) -> LedgerRow | None:
    """The row a journal entry is charged: as it is when its cost is an amount (from 0 to
    :data:`~.spend.MAX_DAY_USD`); else (a file damaged or edited by hand: charged as it was,
    a cost below 0 gave money back, and an infinite or NaN one made the day's spend one
    that no budget can read, so that every start was refused) at the bound the daemon
    journals, recomputed: its prompt and completion tokens at its target's price now, none of
    them cached (0 when it has no price, flagged unpriced), with a warning. None, with an
    error, when that is no amount either (its tokens no counts): the entry is dropped."""
    if is_amount(row.cost_usd):
        return row
    who = encodable(request_id)
    tokens = (row.prompt_tokens, row.completion_tokens)
    if all(0 <= count <= MAX_DAY_COUNT for count in tokens):
        prompt, completion = tokens
        cost = prices.cost(row.target, Usage(prompt_tokens=prompt, completion_tokens=completion))
        if is_amount(cost):
            log.warning(
                "journal entry of request %s (table in_flight) holds a cost of %r, which is no "
                "amount: charged its bound, %d prompt and %d completion tokens at %s's price: "
                "$%.6f",
                who,
                row.cost_usd,
                prompt,
                completion,
                encodable(row.target),
                cost,
            )
            return row._replace(cost_usd=cost, unpriced=prices.for_target(row.target) is None)
    log.error(
        "journal entry of request %s (table in_flight) holds a cost of %r and tokens %r, "
        "which bound no amount: dropped, not charged",
        who,
        row.cost_usd,
        tokens,
    )
    return None


def _figures_only(rows: list[tuple[Any, ...]], table: str) -> list[tuple[Any, ...]]:
    """``rows`` but those where a day, a count or an amount read as NULL: a value that is no
    figure (a text, bytes, below 0, past its bound, :mod:`.spend`), in a file damaged or
    edited by hand. Told to a fleet, one failed the start (a ValueError, or an OverflowError
    for infinity); they are logged once. This host's budgets count no such cost or day: the
    start refuses those of this month that a budget counts (:meth:`.Store.open`)."""
    readable = [row for row in rows if None not in row]
    if len(readable) < len(rows):
        log.warning(
            "%d row(s) of %s hold a day, a count or an amount that is no figure: left out "
            "of what the fleet is told",
            len(rows) - len(readable),
            table,
        )
    return readable
