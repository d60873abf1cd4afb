"""``quotad.db``: one writer connection with group commit, one read connection, migrations.

Writes. Every write is a list of statements handed to :meth:`Database.write` (which waits for
the commit) or :meth:`Database.write_later` (which does not). The first submission schedules a
commit for the next pass of the event loop; that commit takes everything submitted until then
and commits it as ONE transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), then wakes every
submitter: the rows of concurrent requests share one commit (group commit), and no submitter
waits longer than the commit in progress plus its own. A commit without fsync (synchronous=
NORMAL) runs on the event loop itself; one that waits for the disk (``durability = "full"``) or
holds a large value (a big answer for the cache: SQLite copies it with the GIL let go) is run
by the committer task on the writer connection's thread. If a shared transaction fails,
each submission is retried in a transaction of its own, so that one bad submission cannot fail
the others; a submission that still fails raises :class:`WriteFailed` in whoever waits for it,
naming the file and SQLite's reason (``database or disk is full``).

Reads run on a second connection, each in its own short autocommit transaction: in WAL mode
readers never block the writer nor it them, and short read transactions let checkpoints run.
:meth:`Database.read_now` is the exception: one indexed lookup (a cache hit's answer) on a third
connection, on the event loop itself, where it costs ~10 µs against a round trip to a thread.

The WAL is bounded. Checkpoints (the WAL copied into the database file) run on the read
connection's thread, off the loop, as PASSIVE checkpoints that never wait for the writer: every
:data:`CHECKPOINT_EVERY` transactions, and whenever the WAL has grown by a quarter of its limit.
Under sustained writes such a checkpoint never catches up with the writer, so SQLite never
starts the WAL over and it grows without end (584 MB after 100k cached requests). So when the
WAL file passes ``wal_limit_mb`` (:data:`WAL_LIMIT_MB` by default), the committer starts it
over: a passive checkpoint copies what the WAL holds, writes going on; then the committer holds
the writer (submissions queue meanwhile) while a RESTART checkpoint on the writer's thread
copies what was committed in between and waits out the readers; the next commit starts the WAL
from its beginning and cuts the file back to the limit (``journal_size_limit``). The WAL file
stays under one and a half times the limit: past that, the writer is held at once.

One daemon owns a database: opening takes an exclusive lock on ``quotad.db.lock`` beside it
(two daemons on one ledger would each keep their own budget totals and together overshoot).
Opening then checks the file (``PRAGMA quick_check``), applies pending migrations (:mod:`.schema`)
and refuses a schema newer than this quotad knows (:mod:`.opening`); every failure is a
:class:`StoreError` naming the path. What runs on a connection's thread in one call (a
transaction, a batch, a checkpoint) is in :mod:`.transactions`. ``durability = "normal"``
commits with ``synchronous=NORMAL`` (survives a crash of the daemon), ``"full"`` with
``synchronous=FULL`` (survives power loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite

from quotad.daemon.store.opening import describe, lock_directory, prepare_reader, prepare_writer
from quotad.daemon.store.transactions import (
    BUSY_TIMEOUT_MS,
    REFUSED_FOR_ITS_VALUES,
    Statement,
    StoreError,
    WriteFailed,
    checkpoint_passive,
    checkpoint_restart,
    checkpoint_truncate,
    commit_batch,
    commit_waiting,
    in_thread,
    is_locked,
)

__all__ = ["Database", "Durability", "Statement", "StoreError", "WriteFailed", "WriteStats"]

log = logging.getLogger("quotad.store")


Durability = Literal["normal", "full"]

CHECKPOINT_EVERY: Final = 256
"""Transactions committed between two passive checkpoints of the WAL into the database file."""
WAL_LIMIT_MB: Final = 32.0
"""The WAL's bound by default: past it, a checkpoint holding the writer starts it over. Each
such hold takes ~20-40 ms whatever the limit (fsyncs, on this project's loaded 2-core
machine), so the share of the time the writer is held falls as the limit grows: under
saturating writes, 4.9 % at 16 MiB (commit p99 1.5x that with no bound), 2.1 % at 32 MiB
(1.3x), 0.6 % at 64 MiB (1.2x): bench/store_load.py."""
UNBOUNDED_WAL_SIZE_LIMIT_BYTES: Final = 64 * 1024 * 1024
"""``journal_size_limit`` when the WAL is not bounded (``wal_limit_mb=0``)."""
POINT_READ_BUSY_TIMEOUT_MS: Final = 50
"""The most a lookup on the event loop waits for a lock (only ever met while SQLite recovers
or starts the WAL over): a cache hit that cannot be read is a miss, not a stalled loop."""


@dataclass(slots=True)
class _Submission:
    statements: Sequence[Statement]
    future: asyncio.Future[None] | None
    """Who waits for the outcome (:meth:`Database.write`)."""
    durable: bool
    done: Callable[[WriteFailed | None], None] | None = None
    """Who is told the outcome (:meth:`Database.write_later`); with no future and no
    ``done``, nobody waits and a failure is logged."""
    large: bool = False
    """It holds a large value (a big answer for the cache): committed on the writer's thread."""


@dataclass(slots=True)
class WriteStats:
    """What the committer has done since the database was opened."""

    transactions: int = 0
    statements: int = 0
    largest_batch: int = 0
    synced: int = 0
    """Transactions committed with synchronous=FULL."""
    checkpoints: int = 0
    """Passive checkpoints, off the loop, not holding the writer."""
    wal_restarts: int = 0
    """RESTART checkpoints that started the WAL over because it had passed its limit."""
    wal_restarts_busy: int = 0
    """RESTART checkpoints that a reader kept from completing (tried again later)."""
    wal_restart_held_s: float = 0.0
    """How long those held the writer, in all."""
    wal_restart_held_max_s: float = 0.0


class Database:
    """``quotad.db``: the writer with its committer, the reader, and their lifetime."""

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability = "normal",
        max_size_mb: float = 0.0,
        wal_limit_mb: float = WAL_LIMIT_MB,
    ) -> None:
        self.path = path
        self.wal_path = path.with_name(path.name + "-wal")
        self.durability: Durability = durability
        self.max_size_mb = max_size_mb
        self.wal_limit_bytes = int(wal_limit_mb * 1024 * 1024)
        """Past this, the WAL is started over (0: passive checkpoints only)."""
        self.stats = WriteStats()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point_reader: sqlite3.Connection | None = None
        self._queue: list[_Submission] = []
        self._wakeup = asyncio.Event()
        self._commit_scheduled = False
        self._committing = False
        """The committer task is committing in the writer's thread."""
        self._locked_out = False
        """The last commit met another process's write lock: commits wait for it on the
        writer's thread until one gets through."""
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._lock_fd: int | None = None
        self._synchronous_full = False
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._wal_at_checkpoint = 0
        """The WAL's size when the last passive checkpoint started."""
        self._restart_due = False
        self._restart_retry_at = (0, 0)
        """After a RESTART that a reader kept from completing: it is not tried again before
        this transaction count or this WAL size, whichever comes first."""

    # ------------------------------------------------------------------ lifetime

    async def open(self) -> None:
        """Open (creating if needed), check and migrate the file; start the committer."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the state directory {directory}: {error.strerror or error}"
            ) from None
        self._lock_fd = lock_directory(self.path)
        try:
            # check_same_thread=False: NORMAL commits run on the event loop's thread
            self._writer = await aiosqlite.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            self._unlock()
            raise StoreError(f"cannot open {self.path}: {error}") from None
        try:
            await in_thread(
                self._writer,
                functools.partial(
                    prepare_writer,
                    path=self.path,
                    journal_size_limit=self.wal_limit_bytes or UNBOUNDED_WAL_SIZE_LIMIT_BYTES,
                    max_size_mb=self.max_size_mb,
                ),
            )
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await in_thread(self._reader, prepare_reader)
            self._point_reader = sqlite3.connect(self.path, isolation_level=None)
            prepare_reader(self._point_reader, busy_timeout_ms=POINT_READ_BUSY_TIMEOUT_MS)
        except StoreError:
            await self._close_connections()
            raise
        except sqlite3.Error as error:
            await self._close_connections()
            raise StoreError(describe(self.path, error)) from None
        self._closing = False
        self._committer = asyncio.create_task(self._commit_loop(), name="quotad-store-committer")

    async def close(self) -> None:
        """Commit what is queued, stop the committer, close both connections (their threads
        are not daemon threads: an open connection would keep the process alive)."""
        self._closing = True
        self._wakeup.set()
        if self._committer is not None:
            await self._committer
            self._committer = None
        while self._checkpoint is not None:
            await self._checkpoint
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._point_reader is not None:
            self._point_reader.close()
            self._point_reader = None
        for connection in (self._reader, self._writer):
            if connection is not None:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await connection.close()
        self._reader = self._writer = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the lock
            self._lock_fd = None

    # ------------------------------------------------------------------ writes

    def check_open(self) -> None:
        """Raise :class:`WriteFailed` if the database is closed (or closing): no write is taken."""
        if self._writer is None or self._closing:
            raise WriteFailed(f"{self.path} is closed")

    def _submit(
        self,
        statements: Sequence[Statement],
        durable: bool,
        waited: bool = True,
        done: Callable[[WriteFailed | None], None] | None = None,
        large: bool = False,
    ) -> asyncio.Future[None] | None:
        self.check_open()
        loop = asyncio.get_running_loop()
        future = loop.create_future() if waited else None
        self._queue.append(_Submission(statements, future, durable, done, large))
        if not self._commit_scheduled:
            self._commit_scheduled = True
            loop.call_soon(self._commit_pending)
        return future

    async def write(self, statements: Sequence[Statement], *, durable: bool = True) -> None:
        """Commit ``statements`` together with whatever else is pending; returns once they
        are committed, or raises :class:`WriteFailed`. Once submitted, a write is committed
        even if the caller is cancelled while waiting (the committer owns it).

        With ``durability = "full"``, a commit holding a ``durable`` write waits for the WAL
        to reach the disk (synchronous=FULL). One holding only writes that are not durable
        (records of no spend: cache hits, refusals) commits with synchronous=NORMAL: safe
        from a crash of the daemon at once, safe from power loss with the next durable
        commit or checkpoint, which syncs the whole WAL before it."""
        future = self._submit(statements, durable)
        assert future is not None
        await future

    async def committed(self) -> None:
        """Return once everything submitted so far is committed, or has failed: an empty
        write, committed after them (submissions are committed in order)."""
        with contextlib.suppress(WriteFailed):
            await self.write([], durable=False)

    def write_later(
        self,
        statements: Sequence[Statement],
        done: Callable[[WriteFailed | None], None] | None = None,
        *,
        durable: bool = False,
        large: bool = False,
    ) -> None:
        """Commit ``statements`` with the next batch, without waiting; ``done`` is called
        with the outcome once it is known, when the batch is settled (a failure is logged
        when there is no ``done``). No future is made: this is on every request's path.
        ``large``: they hold a large value (a big answer), and the batch is committed on the
        writer's thread, where SQLite copies it into the WAL with the GIL let go, instead of
        on the event loop (13 MB: ~30 ms)."""
        self._submit(statements, durable, waited=False, done=done, large=large)

    def _syncs(self, batch: Sequence[_Submission]) -> bool:
        """Whether committing ``batch`` waits for the disk (synchronous=FULL)."""
        return self.durability == "full" and any(submission.durable for submission in batch)

    def _on_thread(self, batch: Sequence[_Submission]) -> bool:
        """Whether ``batch`` is committed on the writer's thread: it waits for the disk, or
        for another process's write lock, or it holds a large value."""
        return (
            self._locked_out or self._syncs(batch) or any(submission.large for submission in batch)
        )

    def _commit_pending(self) -> None:
        """Commit what was submitted, one pass of the event loop after the first submission:
        every write made in the meantime (those of concurrent requests) shares the commit.

        A commit that needs no fsync runs right here, on the loop: a plain callback costs
        less than waking a task (the committer used to take every commit, ~15 µs more per
        request), and the commit itself (~65 µs) less than a round trip to the writer's
        thread (~190 µs). A commit that waits for the disk, or for a lock another process
        holds, is the committer task's, which runs it on the writer's thread; so is whatever
        is submitted while it does."""
        self._commit_scheduled = False
        queue = self._queue
        if not queue or self._committing or self._writer is None:
            return
        if self._on_thread(queue):
            self._wakeup.set()
            return
        self._queue = []
        self._commit_here(queue)

    def _set_synchronous(self, full: bool) -> None:
        """synchronous=FULL or NORMAL on the writer (a pragma run only when it changes)."""
        if full != self._synchronous_full:
            assert self._writer is not None
            self._writer._conn.execute(f"PRAGMA synchronous = {'FULL' if full else 'NORMAL'}")
            self._synchronous_full = full

    def _commit_here(self, batch: list[_Submission]) -> None:
        """Commit ``batch`` on the event loop's thread, with synchronous=NORMAL, never waiting
        for a lock: what meets another process's write lock goes back to the queue, for the
        committer to commit on the writer's thread when the lock is released."""
        writer = self._writer
        assert writer is not None
        statements = [submission.statements for submission in batch]
        errors: list[Exception | None]
        try:
            self._set_synchronous(False)
            committed, errors = commit_batch(statements, writer._conn)
        except Exception as broken:  # the connection itself is gone
            committed = 0
            errors = [sqlite3.OperationalError(str(broken))] * len(batch)
        if any(errors) and any(is_locked(error) for error in errors):
            self._locked_out = True
            self._queue[:0] = [batch[i] for i, error in enumerate(errors) if is_locked(error)]
            self._wakeup.set()
            unlocked = [i for i, error in enumerate(errors) if not is_locked(error)]
            batch, errors = [batch[i] for i in unlocked], [errors[i] for i in unlocked]
        self._settle(batch, committed, errors, synced=False)

    async def _commit_loop(self) -> None:
        """The committer task: the commits that wait for the disk, on the writer's thread
        (off the event loop), what is submitted meanwhile, and what is left at close."""
        writer = self._writer
        assert writer is not None
        while True:
            while not self._queue and not self._restart_due:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._restart_due:
                await self._restart_wal()
                continue
            batch, self._queue = self._queue, []
            if not self._on_thread(batch):
                self._commit_here(batch)
                continue
            statements = [submission.statements for submission in batch]
            errors: list[Exception | None]
            synced = self._syncs(batch)
            self._committing = True
            try:
                self._set_synchronous(synced)
                committed, errors = await in_thread(
                    writer, functools.partial(commit_waiting, statements)
                )
            except Exception as broken:  # the connection itself is gone
                committed = 0
                errors = [sqlite3.OperationalError(str(broken))] * len(batch)
            finally:
                self._committing = False
            self._locked_out = any(is_locked(error) for error in errors)
            self._settle(batch, committed, errors, synced=synced)

    def _settle(
        self,
        batch: list[_Submission],
        committed: int,
        errors: list[Exception | None],
        *,
        synced: bool,
    ) -> None:
        """Count a batch's commit and give each submission its outcome; start a checkpoint
        when one is due (:meth:`_check_wal`)."""
        stats = self.stats
        self._since_checkpoint += committed
        stats.transactions += committed
        if committed:
            self._check_wal()
        stats.synced += committed if synced else 0
        stats.statements += sum(len(submission.statements) for submission in batch)
        stats.largest_batch = max(stats.largest_batch, len(batch))
        for submission, failure in zip(batch, errors, strict=True):
            future = submission.future
            outcome = None
            if failure is not None:
                reason = str(failure)
                if is_locked(failure):
                    reason = (
                        "another process holds its write lock (waited "
                        f"{BUSY_TIMEOUT_MS / 1000:g} s for it)"
                    )
                outcome = WriteFailed(
                    f"could not write to {self.path}: {reason}",
                    for_its_values=isinstance(failure, REFUSED_FOR_ITS_VALUES),
                )
                if future is not None:
                    if not future.done():
                        future.set_exception(outcome)
                elif submission.done is None:
                    log.error("%s", outcome)
            elif future is not None and not future.done():
                future.set_result(None)
            if submission.done is not None:
                try:
                    submission.done(outcome)
                except Exception:  # one caller's bug must not keep the others waiting
                    log.exception("%s: a write's outcome could not be handled", self.path)

    def _check_wal(self) -> None:
        """After a commit: a passive checkpoint every :data:`CHECKPOINT_EVERY` transactions
        or a quarter of the limit of WAL growth; a RESTART past the limit; the writer held
        at once past one and a half times the limit while that RESTART is under way.

        SQLite's own checkpoints run in the commit that crosses 1,000 WAL pages, on the event
        loop here, with an fsync of the WAL and of the database (milliseconds every few
        hundred requests); quotad's passive ones run on the read connection's thread instead,
        off the loop (they never wait for the writer nor block it). Reading the WAL's size is
        one ``fstat`` (~1 µs), against ~65 µs for a commit."""
        limit = self.wal_limit_bytes
        wal_size = 0
        if limit:
            wal_size = self._wal_size()
            if self._restart_due:
                if wal_size > limit + limit // 2:  # the ceiling: hold the writer at once
                    self._committing = True
                return
            transactions, size = self._restart_retry_at
            if wal_size > limit and (self.stats.transactions >= transactions or wal_size >= size):
                self._restart_due = True
                self._wakeup.set()
                return
        if self._since_checkpoint >= CHECKPOINT_EVERY or (
            limit and wal_size - self._wal_at_checkpoint >= limit // 4
        ):
            self._start_checkpoint(wal_size)

    def _wal_size(self) -> int:
        """The WAL file's size now (0 when there is none)."""
        try:
            return os.stat(self.wal_path).st_size
        except OSError:
            return 0

    async def give_back_wal(self) -> None:
        """A TRUNCATE checkpoint now, after the passive one under way, on the read
        connection's thread (off the loop): the WAL copied into the database and its file cut
        to nothing, so that the space it held returns to the disk. The ledger runs one between
        the pieces of rows it kept through a full disk: the WAL held the space the failed
        writes had taken, and written all at once the rows took back what had been freed.
        Waits :data:`RESTART_BUSY_TIMEOUT_MS` at the most for a reader (or the writer)."""
        while (under_way := self._checkpoint) is not None:
            await under_way
        reader = self._reader
        if reader is None or self._closing:
            return
        try:
            if await in_thread(reader, checkpoint_truncate):
                self._since_checkpoint = 0
                self._wal_at_checkpoint = 0
            self.stats.checkpoints += 1
        except (sqlite3.Error, ValueError) as error:
            log.warning("%s: checkpoint failed: %s", self.path, error)

    def _start_checkpoint(self, wal_size: int) -> None:
        """A passive checkpoint on the read connection's thread, unless one is under way
        (which starts the next when it ends, if one is due by then)."""
        if self._checkpoint is None and not self._closing:
            self._since_checkpoint = 0
            self._wal_at_checkpoint = wal_size
            self._checkpoint = asyncio.create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        reader = self._reader
        try:
            if reader is not None:
                await in_thread(reader, checkpoint_passive)
                self.stats.checkpoints += 1
        except (sqlite3.Error, ValueError) as error:  # the next one retries
            log.warning("%s: checkpoint failed: %s", self.path, error)
        finally:
            self._checkpoint = None
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._restart_due:
            self._start_checkpoint(self._wal_at_checkpoint)

    async def _restart_wal(self) -> None:
        """The committer's, in two steps. First, writes going on, a passive checkpoint
        copies what the WAL holds so far (after the one under way, if any: two checkpoints
        cannot run at once). Then the writer is held (what is submitted meanwhile waits in
        the queue) while a RESTART checkpoint copies what was committed during the first step
        and waits out the readers, so that the next commit starts the WAL over and cuts the
        file back to the limit. The writer is held for the second step only, unless the WAL
        passes one and a half times its limit during the first (:meth:`_check_wal` holds it
        then). A reader that keeps it from completing within :data:`RESTART_BUSY_TIMEOUT_MS`
        defers it by :data:`CHECKPOINT_EVERY` transactions or half the limit of growth."""
        writer, reader = self._writer, self._reader
        assert writer is not None
        assert reader is not None
        held_since = 0.0
        try:
            if self._checkpoint is not None:
                await self._checkpoint
            await in_thread(reader, checkpoint_passive)
            self.stats.checkpoints += 1
            self._committing = True
            held_since = time.perf_counter()
            completed = await in_thread(writer, checkpoint_restart)
        except (sqlite3.Error, ValueError) as error:
            log.warning("%s: checkpoint failed: %s", self.path, error)
            completed = False
        finally:
            self._committing = False
            self._restart_due = False
        held = time.perf_counter() - held_since if held_since else 0.0
        stats = self.stats
        stats.wal_restart_held_s += held
        stats.wal_restart_held_max_s = max(stats.wal_restart_held_max_s, held)
        self._since_checkpoint = 0
        self._wal_at_checkpoint = 0
        if completed:
            stats.wal_restarts += 1
            return
        stats.wal_restarts_busy += 1
        limit = self.wal_limit_bytes
        self._wal_at_checkpoint = self._wal_size()
        self._restart_retry_at = (
            stats.transactions + CHECKPOINT_EVERY,
            self._wal_at_checkpoint + limit // 2,
        )
        log.warning(
            "%s: the WAL (%d bytes) is past its limit of %d bytes and a reader kept the "
            "checkpoint from starting it over; tried again after %d more transactions or "
            "%d more bytes",
            self.path,
            self._wal_at_checkpoint,
            limit,
            CHECKPOINT_EVERY,
            limit // 2,
        )

    # ------------------------------------------------------------------ reads

    async def read(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query, run on the read connection in its own short transaction."""
        reader = self._reader
        if reader is None:
            raise StoreError(f"{self.path} is closed")

        def query(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return connection.execute(sql, parameters).fetchall()

        try:
            return await in_thread(reader, query)
        except sqlite3.Error as error:
            raise StoreError(describe(self.path, error)) from None

    def read_now(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one indexed lookup, read here on the event loop (a third connection,
        each read its own short transaction): for the hit path, where ~10 µs of SQLite
        costs less than a round trip to the read connection's thread. Never a scan."""
        connection = self._point_reader
        if connection is None:
            raise StoreError(f"{self.path} is closed")
        try:
            return connection.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise StoreError(describe(self.path, error)) from None
