"""Opening ``quotad.db``: the lock that makes one daemon its owner, each connection's pragmas,
the integrity check and the migrations of the writer's first call, and SQLite's errors as
sentences that name the file and say what to do."""

from __future__ import annotations

import fcntl
import logging
import os
import reprlib
import sqlite3
from pathlib import Path
from typing import Final

from quotad.daemon.store.schema import MIGRATIONS, SCHEMA_VERSION, SCHEMA_VERSION_TABLE
from quotad.daemon.store.transactions import (
    BUSY_TIMEOUT_MS,
    LOOP_BUSY_TIMEOUT_MS,
    Statement,
    StoreError,
    run_transaction,
)

log = logging.getLogger("quotad.store")

PAGE_SIZE: Final = 4096


def lock_directory(path: Path) -> int:
    """Take the database at ``path`` for this process (a lock on ``quotad.db.lock`` beside
    it, released when its descriptor is closed), or say which process has it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StoreError(f"cannot write {lock_path}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(
            f"another quotad (pid {holder}) is already serving from {path.parent}: "
            "one daemon owns a state directory; stop it, or give this one another "
            "daemon.state_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def describe(path: Path, error: sqlite3.Error) -> str:
    """A clear sentence for an SQLite error about the file at ``path``."""
    text = str(error)
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return (
            f"{path} is corrupt or not a quotad database ({text}); move it away to "
            "start afresh, or restore it from a backup"
        )
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return f"cannot write {path} ({text}): check that its directory is writable"
    return f"{path}: {text}"


def prepare_writer(
    connection: sqlite3.Connection, *, path: Path, journal_size_limit: int, max_size_mb: float
) -> None:
    """The writer's first call, on its thread: pragmas, integrity check, migrations (these
    wait for a lock; the writer's later calls on the event loop do not)."""
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot use WAL journaling (got {mode!r})")
    connection.execute("PRAGMA synchronous = NORMAL")  # FULL per commit: Database.write
    connection.execute("PRAGMA wal_autocheckpoint = 0")  # quotad's own: see .db
    connection.execute(f"PRAGMA journal_size_limit = {journal_size_limit}")
    if max_size_mb:
        pages = max(16, int(max_size_mb * 1024 * 1024 // PAGE_SIZE))
        connection.execute(f"PRAGMA max_page_count = {pages}")
    problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        raise StoreError(
            f"{path} is corrupt ({'; '.join(problems)}); move it away to start "
            "afresh, or restore it from a backup"
        )
    version = schema_version(connection, path)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this quotad knows "
            f"({SCHEMA_VERSION}): it was written by a newer quotad; upgrade quotad, or "
            "give this one another daemon.state_dir"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        statements: list[Statement] = [(sql, ()) for sql in MIGRATIONS[number - 1]]
        statements.append(("DELETE FROM schema_version", ()))
        statements.append(("INSERT INTO schema_version (version) VALUES (?)", (number,)))
        run_transaction(connection, statements)
        log.info("%s: migrated to schema version %d", path, number)
    connection.execute(f"PRAGMA busy_timeout = {LOOP_BUSY_TIMEOUT_MS}")


def schema_version(connection: sqlite3.Connection, path: Path) -> int:
    """The schema version of the file at ``path`` (0 for a new one), or a :class:`StoreError`
    when ``schema_version`` holds something else than a whole number from 0: SQLite keeps any
    value in any column, and a damaged or hand-edited file made the start fail with a
    ValueError (a text) or an OverflowError (infinity), or, with a version below 0, run the
    newest migrations first (Python's negative indexes) and fail on a table that exists.
    Skipping such a row cannot do: the version decides which migrations run."""
    connection.execute(SCHEMA_VERSION_TABLE)
    versions: list[int] = []
    for (version,) in connection.execute("SELECT version FROM schema_version"):
        if type(version) is not int or version < 0:
            raise StoreError(
                f"{path}: table schema_version holds {reprlib.repr(version)}, which is no "
                f"schema version (a whole number from 0; this quotad writes {SCHEMA_VERSION}), "
                "so quotad cannot tell which migrations the file has had: restore it from a "
                "backup or, knowing its version N, set it with "
                f"`sqlite3 {path} 'DELETE FROM schema_version; "
                "INSERT INTO schema_version VALUES (N)'`"
            )
        versions.append(version)
    return max(versions, default=0)


def prepare_reader(connection: sqlite3.Connection, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """A reader's pragmas: how long it waits for a lock; it never writes."""
    connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    connection.execute("PRAGMA query_only = ON")
