"""The database: group commit, isolation of a bad write, migrations, clear errors for a newer
schema, a corrupt or unwritable file, and a full database; readers never block the writer."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import CacheConfig
from quotad.daemon.store import transactions
from quotad.daemon.store.cache import Cache, CachedChat
from quotad.daemon.store.db import (
    CHECKPOINT_EVERY,
    Database,
    StoreError,
    WriteFailed,
)
from quotad.daemon.store.ledger import COLUMNS, statements
from quotad.daemon.store.schema import MIGRATIONS, SCHEMA_VERSION, SCHEMA_VERSION_TABLE
from quotad.daemon.store.transactions import in_thread
from quotad.protocol.messages import Usage
from tests.support.store import ledger_row

pytestmark = pytest.mark.anyio

INSERT_AUDIT = (
    "INSERT INTO audit (time, action, target, caller_uid, caller_pid, detail) "
    "VALUES (?, ?, ?, NULL, NULL, '{}')"
)


def audit_count(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM audit").fetchone()[0])


async def test_open_creates_and_migrates_and_reopening_keeps_the_data(directory: Path) -> None:
    path = directory / "deeper" / "quotad.db"
    first = Database(path)
    await first.open()
    await first.write([(INSERT_AUDIT, (1.0, "a", "t"))])
    await first.close()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    second = Database(path)
    await second.open()
    assert await second.read("SELECT action FROM audit") == [("a",)]
    assert await second.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    await second.close()


V1_COLUMNS = COLUMNS[: COLUMNS.index("tags") + 1]
INSERT_V1_ROW = (
    f"INSERT INTO ledger ({', '.join(V1_COLUMNS)}) VALUES ({', '.join('?' * len(V1_COLUMNS))})"
)


def file_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A connection to a new file at schema ``version``, as quotad at that version left it."""
    connection = sqlite3.connect(path)
    for migration in MIGRATIONS[:version]:
        for sql in migration:
            connection.execute(sql)
    connection.execute(SCHEMA_VERSION_TABLE)
    connection.execute("INSERT INTO schema_version VALUES (?)", (version,))
    return connection


async def test_a_version_1_file_is_migrated_and_its_day_sums_carry_on(directory: Path) -> None:
    path = directory / "quotad.db"
    row = ledger_row(1)
    summed = (row.prompt_tokens, row.completion_tokens, row.cost_usd)
    with file_at_version(path, 1) as connection:
        connection.execute(INSERT_V1_ROW, row[: len(V1_COLUMNS)])
        connection.execute(
            "INSERT INTO spend_daily VALUES (?, ?, ?, ?, 1, 0, ?, ?, 0, ?, 0, 0.0, 0)",
            (row.day, row.app, row.model, row.target, *summed),
        )
    database = Database(path)
    await database.open()
    try:
        await database.write(statements(row._replace(request_id="qd-2", status="timeout")))
        assert await database.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
        assert await database.read(
            "SELECT requests, errors, prompt_tokens, cost_usd FROM spend_daily"
        ) == [(2, 1, 2 * row.prompt_tokens, 2 * row.cost_usd)]
        assert await database.read("SELECT entities FROM ledger ORDER BY id") == [("",), ("",)]
    finally:
        await database.close()


async def test_version_3_marks_semantic_hits_and_counts_them_per_day(directory: Path) -> None:
    """A file at version 2 gains the semantic cache's table, the ledger's mark and the day
    sums' count; its earlier rows are not semantic hits."""
    path = directory / "quotad.db"
    row = ledger_row(1)
    with file_at_version(path, 2) as connection:
        connection.execute(INSERT_V1_ROW, row[: len(V1_COLUMNS)])
    database = Database(path)
    await database.open()
    try:
        exact = row._replace(request_id="qd-2", cached=True, cost_usd=0.0, saved_usd=0.5)
        semantic = exact._replace(request_id="qd-3", saved_usd=0.25, semantic_similarity=0.97)
        await database.write(statements(exact) + statements(semantic))
        assert await database.read(
            "SELECT requests, errors, cache_hits, semantic_hits, saved_usd FROM spend_daily"
        ) == [(3, 0, 2, 1, 0.75)]
        assert await database.read(
            "SELECT request_id, semantic_similarity FROM ledger ORDER BY id"
        ) == [("qd-test-1", None), ("qd-2", None), ("qd-3", 0.97)]
        assert await database.read("SELECT count(*) FROM semantic_questions") == [(0,)]
    finally:
        await database.close()


async def test_version_5_gives_semantic_hits_their_own_status_and_no_error(
    directory: Path,
) -> None:
    """A file at version 4 whose semantic hits were rows with status ``ok``: they are given
    the status ``semantic``, and a new one counts as an answer, not an error."""
    path = directory / "quotad.db"
    row = ledger_row(1)
    earlier = row._replace(request_id="qd-2", cached=True, semantic_similarity=0.95)
    with file_at_version(path, 4) as connection:
        for old_row in (row, earlier):
            connection.execute(*statements(old_row)[0])
    database = Database(path)
    await database.open()
    try:
        later = earlier._replace(request_id="qd-3", status="semantic")
        failed = row._replace(request_id="qd-4", status="timeout")
        await database.write(statements(later) + statements(failed))
        assert await database.read("SELECT request_id, status FROM ledger ORDER BY id") == [
            ("qd-test-1", "ok"),
            ("qd-2", "semantic"),
            ("qd-3", "semantic"),
            ("qd-4", "timeout"),
        ]
        assert await database.read("SELECT requests, errors, semantic_hits FROM spend_daily") == [
            (4, 1, 2)
        ]
    finally:
        await database.close()


async def test_version_7_keeps_the_hit_counts_a_version_6_file_had(directory: Path) -> None:
    """A file at version 6 counted an entry's hits in its row: they are read from there until
    a hit writes them in ``cache_use``, so eviction after the upgrade weighs them as before."""
    path = directory / "quotad.db"
    key = bytes(range(16))
    payload = msgspec.msgpack.encode(CachedChat("hi", None, "stop", Usage(), "p/m"))
    clock = VirtualClock()
    with file_at_version(path, 6) as connection:
        connection.execute(
            "INSERT INTO cache VALUES (?, 'chat', 'fast', ?, ?, ?, 3, 0.5)",
            (key, payload, clock.time(), clock.time() + 1),
        )
    database = Database(path)
    await database.open()
    try:
        cache = Cache(CacheConfig(), database, clock)
        await cache.load()
        hit = await cache.lookup(key, "use")
        assert hit is not None
        assert (hit.hits, hit.cost_usd) == (4, 0.5)  # three before the upgrade, and this one
        await database.committed()
        assert await database.read("SELECT hits FROM cache_use") == [(4,)]
    finally:
        await database.close()


async def test_a_file_of_answers_stored_once_is_refused_by_a_quotad_that_cannot_read_them(
    directory: Path,
) -> None:
    """A streamed answer's text is stored once, in its chunks: a quotad of schema version 7
    would read such an entry's content as None (an empty answer served as a hit), so the file
    says it is newer, and that quotad refuses it ("newer than this quotad knows")."""
    path = directory / "quotad.db"
    with file_at_version(path, 7):
        pass
    database = Database(path)
    await database.open()
    try:
        [(version,)] = await database.read("SELECT version FROM schema_version")
        assert version >= 8
    finally:
        await database.close()


async def test_a_file_of_chunks_stored_as_lengths_is_refused_by_a_quotad_that_cannot_read_them(
    directory: Path,
) -> None:
    """A streamed answer's chunks are stored as the lengths of their deltas in its content: a
    quotad of schema version 8 would replay such an entry as one chunk of its whole content,
    so the file says it is newer, and that quotad refuses it ("newer than this quotad
    knows"). What a quotad of version 8 stored still serves, chunk by chunk."""
    path = directory / "quotad.db"
    key = bytes(range(16))
    chunks = [["a", None, None], ["b", None, None], ["", None, "stop"]]
    payload = msgspec.msgpack.encode([None, None, "stop", Usage(), "p/m", chunks, True])
    clock = VirtualClock()
    with file_at_version(path, 8) as connection:
        connection.execute(
            "INSERT INTO cache VALUES (?, 'chat', 'fast', ?, ?, ?, 0, 0.5)",
            (key, payload, clock.time(), clock.time()),
        )
    database = Database(path)
    await database.open()
    try:
        assert await database.read("SELECT version FROM schema_version") == [(9,)]
        cache = Cache(CacheConfig(), database, clock)
        await cache.load()
        hit = await cache.lookup(key, "use")
        assert hit is not None
        assert isinstance(hit.answer, CachedChat)
        assert hit.answer.content == "ab"
        replayed = [(chunk.delta, chunk.finish_reason) for chunk in hit.answer.replay(1)]
        assert replayed == [("a", None), ("b", None), ("", "stop")]
    finally:
        await database.close()


async def test_entities_found_are_summed_per_day_and_kind_with_blocked_requests(
    db: Database,
) -> None:
    row = ledger_row(1)
    await db.write(statements(row._replace(entities='{"email":2,"phone":1}')))
    await db.write(statements(row._replace(request_id="qd-2", entities='{"email":1}')))
    blocked = row._replace(request_id="qd-3", status="blocked", target="", entities='{"secret":1}')
    await db.write(statements(blocked))
    await db.write(statements(row._replace(request_id="qd-4")))  # nothing found: no row
    assert await db.read(
        "SELECT target, kind, count FROM guardrails_daily ORDER BY target, kind"
    ) == [
        ("", "blocked", 1),
        ("", "secret", 1),
        (row.target, "email", 3),
        (row.target, "phone", 1),
    ]


async def test_the_wal_is_checkpointed_off_the_event_loop(db: Database) -> None:
    size_before = db.path.stat().st_size
    for number in range(CHECKPOINT_EVERY * 2 + 1):
        await db.write([(INSERT_AUDIT, (float(number), "w", str(number)))])
    with anyio.fail_after(5):
        while db.stats.checkpoints < 2:  # noqa: ASYNC110 (a counter, no event to wait on)
            await anyio.sleep(0.01)
    assert db.path.stat().st_size > size_before  # the pages reached the database file
    await db.close()
    assert audit_count(db.path) == CHECKPOINT_EVERY * 2 + 1


async def write_without_pause(database: Database, rows: int, writers: int = 32) -> int:
    """``rows`` audit rows of ~2 KB from ``writers`` tasks writing back to back (the WAL never
    sees a pause); the WAL file's largest size seen after a commit."""
    wal = database.wal_path
    peak = 0
    remaining = rows

    async def writer() -> None:
        nonlocal peak, remaining
        while remaining > 0:
            remaining -= 1
            await database.write([(INSERT_AUDIT, (float(remaining), "x" * 2000, "t"))])
            peak = max(peak, wal.stat().st_size)

    async with anyio.create_task_group() as tasks:
        for _ in range(writers):
            tasks.start_soon(writer)
    return peak


async def test_the_wal_stays_near_its_limit_under_writes_that_never_pause(
    directory: Path,
) -> None:
    # 16 MB of rows against a 1 MiB bound: passive checkpoints alone let the WAL grow to
    # about all of it (they never catch up with a writer that never pauses)
    database = Database(directory / "quotad.db", wal_limit_mb=1)
    await database.open()
    try:
        with anyio.fail_after(60):
            peak = await write_without_pause(database, rows=8000)
        assert database.stats.wal_restarts >= 4
        assert database.stats.wal_restarts_busy == 0
        # held at one and a half times the limit at the most (plus the commit that passed it)
        assert peak < 2 * database.wal_limit_bytes
        assert database.wal_path.stat().st_size < 2 * database.wal_limit_bytes
    finally:
        await database.close()
    assert audit_count(database.path) == 8000


async def test_a_reader_that_keeps_the_wal_from_restarting_holds_the_writer_briefly(
    directory: Path,
) -> None:
    database = Database(directory / "quotad.db", wal_limit_mb=0.25)
    await database.open()
    reader = sqlite3.connect(database.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit").fetchone()  # a snapshot it keeps
        with anyio.fail_after(30):
            await write_without_pause(database, rows=300, writers=8)
        stats = database.stats
        assert stats.wal_restarts == 0
        assert stats.wal_restarts_busy >= 1
        # each try waited RESTART_BUSY_TIMEOUT_MS at the most, then let the writes go on
        assert stats.wal_restart_held_max_s < 5
        reader.execute("COMMIT")  # the reader is gone: the next try starts the WAL over
        written = 300
        with anyio.fail_after(30):
            while stats.wal_restarts == 0:
                await write_without_pause(database, rows=100, writers=8)
                written += 100
        await database.write([(INSERT_AUDIT, (0.0, "after", "t"))])  # cuts the file back
        assert database.wal_path.stat().st_size < 2 * database.wal_limit_bytes
    finally:
        reader.close()
        await database.close()
    assert audit_count(database.path) == written + 1


async def test_one_database_has_one_owner(db: Database) -> None:
    with pytest.raises(StoreError, match="already serving") as refused:
        await Database(db.path).open()
    assert f"pid {os.getpid()}" in str(refused.value)
    assert str(db.path.parent) in str(refused.value)
    await db.close()
    again = Database(db.path)
    await again.open()  # the lock went with the close
    await again.close()


async def test_concurrent_writes_share_commits(db: Database) -> None:
    async with anyio.create_task_group() as writers:
        for number in range(200):
            writers.start_soon(db.write, [(INSERT_AUDIT, (float(number), "w", str(number)))])
    assert audit_count(db.path) == 200
    assert db.stats.statements == 200
    assert db.stats.transactions < 200 / 4  # most commits carried several writers' rows
    assert db.stats.largest_batch > 4


async def test_a_bad_write_fails_alone(db: Database) -> None:
    outcomes: dict[str, str] = {}

    async def write(name: str, sql: str) -> None:
        try:
            await db.write([(sql, (1.0, name, name))])
            outcomes[name] = "ok"
        except WriteFailed as error:
            outcomes[name] = str(error)

    async with anyio.create_task_group() as writers:
        for name in ("one", "two", "three"):
            writers.start_soon(write, name, INSERT_AUDIT)
        writers.start_soon(write, "bad", INSERT_AUDIT.replace("audit", "no_such_table"))
    assert outcomes["one"] == outcomes["two"] == outcomes["three"] == "ok"
    assert "no such table" in outcomes["bad"]
    assert str(db.path) in outcomes["bad"]
    assert audit_count(db.path) == 3


@pytest.mark.parametrize(
    ("value", "said"),
    [(2**64, "too large"), ("\ud800", "surrogates not allowed")],
    ids=["int-past-64-bits", "lone-surrogate"],
)
async def test_a_value_sqlite_cannot_bind_fails_its_write_alone(
    db: Database, value: object, said: str
) -> None:
    """Binding raises OverflowError (or UnicodeEncodeError), not sqlite3.Error: it was taken
    for a broken connection, so every write committed with it failed too. A ledger row with
    a provider's 2**64 tokens, kept and retried with every later write, failed them all."""
    outcomes: dict[str, str] = {}

    async def write(name: str, parameters: tuple[object, ...]) -> None:
        try:
            await db.write([(INSERT_AUDIT, parameters)])
            outcomes[name] = "ok"
        except WriteFailed as error:
            outcomes[name] = str(error)

    async with anyio.create_task_group() as writers:
        for name in ("one", "two"):
            writers.start_soon(write, name, (1.0, name, name))
        writers.start_soon(write, "bad", (1.0, "bad", value))
        writers.start_soon(write, "three", (1.0, "three", "three"))
    assert outcomes["one"] == outcomes["two"] == outcomes["three"] == "ok"
    assert said in outcomes["bad"]
    assert audit_count(db.path) == 3
    await db.write([(INSERT_AUDIT, (2.0, "after", "x"))])  # and the writer goes on
    assert audit_count(db.path) == 4


async def test_a_write_whose_caller_is_cancelled_is_still_committed(db: Database) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await db.write([(INSERT_AUDIT, (1.0, "cancelled", "x"))])
    await db.write([(INSERT_AUDIT, (2.0, "after", "x"))])  # FIFO: the first is in by now
    assert audit_count(db.path) == 2


async def test_write_later_reports_its_outcome(db: Database) -> None:
    done = anyio.Event()
    outcome: list[WriteFailed | None] = []

    def finished(failure: WriteFailed | None) -> None:
        outcome.append(failure)
        done.set()

    db.write_later([(INSERT_AUDIT, (1.0, "later", "x"))], finished)
    await done.wait()
    assert outcome == [None]


async def test_a_long_reader_does_not_block_the_writer(db: Database) -> None:
    reader = sqlite3.connect(db.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit").fetchone()  # holds a read snapshot
        with anyio.fail_after(5):
            await db.write([(INSERT_AUDIT, (1.0, "while reading", "x"))])
            assert await db.read("SELECT count(*) FROM audit") == [(1,)]
        assert reader.execute("SELECT count(*) FROM audit").fetchone() == (0,)  # its snapshot
        reader.execute("COMMIT")
    finally:
        reader.close()


async def test_another_process_write_lock_never_holds_the_event_loop(db: Database) -> None:
    """An operator's ``sqlite3`` shell (or a backup tool) holding the write lock: the commit on
    the loop used to wait the 5 s busy timeout there, freezing every request (then failed the
    write). Now the loop runs on, and the write waits for the lock on the writer's thread."""
    outside = sqlite3.connect(db.path, isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")
        written = anyio.Event()

        async def write() -> None:
            await db.write([(INSERT_AUDIT, (1.0, "while locked", "x"))])
            written.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write)
            for _ in range(50):  # the loop turns: the commit did not hold it
                await anyio.lowlevel.checkpoint()
            assert not written.is_set()
            outside.execute("COMMIT")  # released from the loop, while the write waits
            with anyio.fail_after(30):
                await written.wait()
    finally:
        outside.close()
    assert audit_count(db.path) == 1
    await db.write([(INSERT_AUDIT, (2.0, "after", "x"))])
    assert not db._locked_out  # back to committing on the loop
    assert audit_count(db.path) == 2


async def test_a_write_lock_held_past_the_busy_timeout_fails_the_write_clearly(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "BUSY_TIMEOUT_MS", 50)
    outside = sqlite3.connect(db.path, isolation_level=None)
    try:
        outside.execute("BEGIN IMMEDIATE")
        with pytest.raises(WriteFailed, match="another process holds its write lock"):
            await db.write([(INSERT_AUDIT, (1.0, "locked out", "x"))])
    finally:
        outside.execute("COMMIT")
        outside.close()
    await db.write([(INSERT_AUDIT, (2.0, "after", "x"))])
    assert audit_count(db.path) == 1


async def test_durability_full_syncs_every_commit_that_holds_a_durable_write(
    directory: Path,
) -> None:
    database = Database(directory / "quotad.db", durability="full")
    await database.open()
    try:
        assert database._writer is not None

        def synchronous(connection: sqlite3.Connection) -> int:
            return int(connection.execute("PRAGMA synchronous").fetchone()[0])

        await database.write([(INSERT_AUDIT, (1.0, "spent", "x"))])
        assert database.stats.synced == 1
        assert await in_thread(database._writer, synchronous) == 2  # FULL
        await database.write([(INSERT_AUDIT, (2.0, "free", "x"))], durable=False)
        assert database.stats.synced == 1
        assert await in_thread(database._writer, synchronous) == 1  # NORMAL
        assert audit_count(database.path) == 2
    finally:
        await database.close()


async def test_durability_normal_never_syncs_a_commit(db: Database) -> None:
    await db.write([(INSERT_AUDIT, (1.0, "spent", "x"))])
    assert db.stats.transactions == 1
    assert db.stats.synced == 0


async def test_close_ends_the_connection_threads_and_later_writes_fail(directory: Path) -> None:
    before = threading.active_count()
    database = Database(directory / "quotad.db")
    await database.open()
    assert threading.active_count() == before + 2  # the writer's and the reader's
    await database.close()
    assert threading.active_count() == before
    with pytest.raises(WriteFailed, match="closed"):
        await database.write([(INSERT_AUDIT, (1.0, "late", "x"))])


# --------------------------------------------------------------------------- clear errors


async def test_a_newer_schema_is_refused_with_a_clear_error(directory: Path) -> None:
    path = directory / "quotad.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 5,))
    with pytest.raises(StoreError) as refused:
        await Database(path).open()
    message = str(refused.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 5}" in message
    assert f"newer than this quotad knows ({SCHEMA_VERSION})" in message


@pytest.mark.parametrize("version", [str(SCHEMA_VERSION), "abc", b"\x07", -1, 6.5, float("inf")])
async def test_a_schema_version_that_is_no_version_is_refused_with_a_clear_error(
    directory: Path, version: object
) -> None:
    """SQLite keeps any value in any column: a damaged or hand-edited ``schema_version``
    made the start fail with a ValueError or an OverflowError, or (below 0) run the newest
    migration first and fail on a table that exists; a text of digits is the integer."""
    path = directory / "quotad.db"
    with file_at_version(path, SCHEMA_VERSION) as connection:
        connection.execute("UPDATE schema_version SET version = ?", (version,))
    database = Database(path)
    if version == str(SCHEMA_VERSION):
        await database.open()
        await database.close()
        return
    with pytest.raises(StoreError) as refused:
        await database.open()
    message = str(refused.value)
    assert f"{path}: table schema_version holds " in message
    assert "which is no schema version" in message
    assert "INSERT INTO schema_version VALUES (N)" in message


async def test_a_file_that_is_not_a_database_is_refused(directory: Path) -> None:
    path = directory / "quotad.db"
    path.write_bytes(b"this is no SQLite file, just text that happens to be here\n" * 200)
    with pytest.raises(StoreError, match="corrupt or not a quotad database") as refused:
        await Database(path).open()
    assert str(path) in str(refused.value)
    assert path.read_bytes().startswith(b"this is no SQLite")  # left as it was


async def test_damaged_pages_are_found_at_open(directory: Path) -> None:
    path = directory / "quotad.db"
    database = Database(path)
    await database.open()
    await database.write([(INSERT_AUDIT, (float(n), "x" * 500, "t")) for n in range(400)])
    await database.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 20 * 4096
    for page in range(3, len(data) // 4096):  # leave the header and the first pages whole
        data[page * 4096 + 8 : page * 4096 + 200] = b"\xa5" * 192
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt") as refused:
        await Database(path).open()
    assert str(path) in str(refused.value)


async def test_an_unusable_state_directory_is_a_clear_error(directory: Path) -> None:
    blocker = directory / "a-file"
    blocker.write_text("not a directory")
    path = blocker / "state" / "quotad.db"
    with pytest.raises(StoreError, match="cannot create the state directory") as refused:
        await Database(path).open()
    assert str(blocker / "state") in str(refused.value)


async def fill(database: Database) -> WriteFailed:
    """Write until the database is full; the failure that says so."""
    for number in range(1000):
        try:
            await database.write([(INSERT_AUDIT, (float(number), "x" * 3000, "t"))])
        except WriteFailed as failure:
            return failure
    raise AssertionError("the database never filled up")


async def test_a_full_database_fails_writes_clearly_and_recovers(directory: Path) -> None:
    database = Database(directory / "quotad.db", max_size_mb=0.25)
    await database.open()
    try:
        full = await fill(database)
        assert "database or disk is full" in str(full)
        assert str(database.path) in str(full)
        await database.write([("DELETE FROM audit WHERE time < 20", ())])
        await database.write([(INSERT_AUDIT, (1.0, "fits again", "t"))])
        assert await database.read("SELECT count(*) FROM audit WHERE action = 'fits again'") == [
            (1,)
        ]
    finally:
        await database.close()
