"""What runs on a connection of ``quotad.db`` as ONE call on its thread (a transaction, a
batch of submissions, a checkpoint), and :func:`in_thread`, the round trip that runs it there.
:mod:`.db` decides when each runs and on which connection."""

from __future__ import annotations

import itertools
import operator
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import aiosqlite

Statement = tuple[str, Sequence[Any]]
"""One SQL statement and its parameters."""

BUSY_TIMEOUT_MS: Final = 5000
"""How long a connection waits for a lock before SQLITE_BUSY, on its own thread. The writer
waits on its thread only (:func:`commit_waiting`): a commit on the event loop does not wait
(:data:`LOOP_BUSY_TIMEOUT_MS`)."""
LOOP_BUSY_TIMEOUT_MS: Final = 0
"""The writer's busy timeout: a commit run on the event loop that meets another process's
write lock (an operator's ``sqlite3`` shell, a backup tool) fails at once and is handed to the
writer's thread (:func:`commit_waiting`), instead of freezing the loop."""
RESTART_BUSY_TIMEOUT_MS: Final = 250
"""How long the RESTART checkpoint waits for a reader to end before giving up (and retrying
after :data:`CHECKPOINT_EVERY` more transactions): the writer is held meanwhile."""
T = TypeVar("T")


class StoreError(Exception):
    """``quotad.db`` cannot be opened or used; the message names the file and why."""


class WriteFailed(StoreError):
    """A write could not be committed (disk full, I/O error…); nothing of it was written.

    ``for_its_values``: refused for what it holds (a value SQLite cannot bind, a constraint),
    so that trying it again can never succeed; otherwise for the database's state (full,
    read-only, an I/O error), which may pass."""

    def __init__(self, message: str, *, for_its_values: bool = False) -> None:
        super().__init__(message)
        self.for_its_values = for_its_values


async def in_thread(connection: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``work`` on the sqlite3 connection, on ``connection``'s own thread, as ONE call.

    Each public aiosqlite method is a round trip to its thread; a whole transaction (BEGIN
    IMMEDIATE, the statements, COMMIT) as one call is one round trip (58 µs against 132 µs
    per commit, measured on the project's 2-core machine). ``_execute`` is how aiosqlite
    queues a call on its thread; the version is pinned in uv.lock and the suite covers it.
    """
    raw = connection._conn
    result: T = await connection._execute(work, raw)  # type: ignore[no-untyped-call]
    return result


def run_transaction(connection: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """``statements`` in one transaction; nothing of them is written if any fails.

    A single statement runs in SQLite's autocommit: it is its own transaction, without the
    calls for BEGIN and COMMIT (a lone ledger row, measured inside the daemon: 171 µs in four
    calls, 106 µs in one). More run in ``BEGIN IMMEDIATE`` … ``COMMIT``: runs of one SQL text
    through ``executemany``, a statement alone through ``execute`` (``executemany`` of a
    single row costs more than the row)."""
    if len(statements) == 1:
        connection.execute(*statements[0])
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        for sql, group in itertools.groupby(statements, key=operator.itemgetter(0)):
            run = [parameters for _, parameters in group]
            if len(run) == 1:
                connection.execute(sql, run[0])
            else:
                connection.executemany(sql, run)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


WRITE_REFUSED: Final = (sqlite3.Error, OverflowError, ValueError)
"""What a write can raise for its own statements or values, the connection being sound: SQLite's
errors, and the binding's (an integer past 64 bits is an OverflowError, text that is not
UTF-8 a ValueError). Such a write fails alone (:func:`commit_batch`)."""
REFUSED_FOR_ITS_VALUES: Final = (
    OverflowError,
    ValueError,
    sqlite3.InterfaceError,
    sqlite3.IntegrityError,
)
"""Of those, what the write's own values cause (a value that cannot be bound, a constraint): the
same write fails again however often it is tried."""


def is_locked(error: BaseException | None) -> bool:
    """Whether ``error`` is SQLITE_BUSY: another connection holds the write lock."""
    return isinstance(error, sqlite3.OperationalError) and (
        error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    )


def commit_batch(
    batch: Sequence[Sequence[Statement]], connection: sqlite3.Connection
) -> tuple[int, list[Exception | None]]:
    """Commit every submission of ``batch`` in one transaction; if that fails, each on its
    own. Returns the number of transactions committed and each submission's error. Locked
    out (:func:`is_locked`), the batch is not tried submission by submission: each gets that
    error."""
    try:
        run_transaction(connection, [s for statements in batch for s in statements])
        return 1, [None] * len(batch)
    except WRITE_REFUSED as error:
        if len(batch) == 1 or is_locked(error):
            return 0, [error] * len(batch)
    committed = 0
    errors: list[Exception | None] = []
    for statements in batch:
        try:
            run_transaction(connection, statements)
        except WRITE_REFUSED as error:
            errors.append(error)
        else:
            committed += 1
            errors.append(None)
    return committed, errors


def commit_waiting(
    batch: Sequence[Sequence[Statement]], connection: sqlite3.Connection
) -> tuple[int, list[Exception | None]]:
    """:func:`commit_batch` on the writer's thread, trying the submissions that meet another
    process's write lock again, with pauses growing from 1 to 50 ms, for up to
    :data:`BUSY_TIMEOUT_MS` (what SQLite's busy handler would do, without two pragmas a
    commit to switch it on and off)."""
    committed, errors = commit_batch(batch, connection)
    if not any(errors):
        return committed, errors
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause_s = 0.001
    while locked := [index for index, error in enumerate(errors) if is_locked(error)]:
        if time.monotonic() + pause_s > deadline:
            break
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.05)
        more, retried = commit_batch([batch[index] for index in locked], connection)
        committed += more
        for index, error in zip(locked, retried, strict=True):
            errors[index] = error
    return committed, errors


def checkpoint_passive(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def checkpoint_restart(connection: sqlite3.Connection) -> bool:
    """A RESTART checkpoint on the writer (ours and held): every frame copied, and readers
    waited for, so that the next commit starts the WAL over. Whether it completed."""
    return _checkpoint_waiting(connection, "RESTART", LOOP_BUSY_TIMEOUT_MS)


def checkpoint_truncate(connection: sqlite3.Connection) -> bool:
    """A TRUNCATE checkpoint on the reader: a RESTART that also cuts the WAL file to nothing,
    giving its space back to the disk. Whether it completed."""
    return _checkpoint_waiting(connection, "TRUNCATE", BUSY_TIMEOUT_MS)


def _checkpoint_waiting(connection: sqlite3.Connection, mode: str, busy_timeout_ms: int) -> bool:
    """A checkpoint that waits for the readers (and the writer), :data:`RESTART_BUSY_TIMEOUT_MS`
    at the most; ``busy_timeout_ms``, the connection's own, is put back after."""
    connection.execute(f"PRAGMA busy_timeout = {RESTART_BUSY_TIMEOUT_MS}")
    try:
        busy, _, _ = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    finally:
        connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return not busy
