"""The ledger (rows kept through a failed write), spend reports (grouping, totals, forecast,
anomalies), HTTP keys and the audit trail."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.cluster.spend import FleetSpend
from quotad.daemon.errors import RequestError
from quotad.daemon.store import ledger as ledger_module
from quotad.daemon.store.audit import Audit
from quotad.daemon.store.db import Database, WriteFailed
from quotad.daemon.store.keys import KEY_PREFIX, Keys, key_hash
from quotad.daemon.store.ledger import Ledger, LedgerRow, LedgerWriteFailed
from quotad.daemon.store.spend import forecast_month, is_anomalous
from tests.support.disk import fill_disk, small_tmpfs
from tests.support.store import CALENDAR, NOW
from tests.support.store import ledger_row as row

pytestmark = pytest.mark.anyio

DAY = 86400.0


# --------------------------------------------------------------------------- the ledger


async def test_rows_are_committed_with_every_column(db: Database) -> None:
    ledger = Ledger(db, CALENDAR)
    await ledger.record(row(1))
    (stored,) = await db.read(f"SELECT {', '.join(LedgerRow._fields)} FROM ledger")
    assert LedgerRow(*stored)._replace(cached=bool(stored[18]), unpriced=bool(stored[19])) == row(1)


@pytest.fixture
async def small_ledger(directory: Path) -> AsyncIterator[tuple[Database, Ledger]]:
    """A ledger on a database of at most 0.25 MB (that fills up); its kept rows flushed and
    the database closed afterwards."""
    db = Database(directory / "quotad.db", max_size_mb=0.25)
    await db.open()
    ledger = Ledger(db, CALENDAR)
    try:
        yield db, ledger
    finally:
        await ledger.flush()
        await db.close()


async def fill_then_fail_a_row(db: Database, ledger: Ledger, kept: LedgerRow) -> LedgerWriteFailed:
    """Fill ``db`` (a small max_size_mb) with audit rows, then record ``kept``: the failure."""
    for _ in range(2000):
        try:
            await db.write(
                [("INSERT INTO audit VALUES (NULL, 0, ?, '', NULL, NULL, '{}')", ("x" * 3000,))]
            )
        except WriteFailed:
            break
    for number in range(100):  # a page or two may still take a row
        try:
            await ledger.record(kept._replace(request_id=f"{kept.request_id}-{number}"))
        except LedgerWriteFailed as failed:
            return failed
    raise AssertionError("the ledger never filled up")


async def test_a_row_that_cannot_be_written_is_kept_and_written_later(
    small_ledger: tuple[Database, Ledger],
) -> None:
    db, ledger = small_ledger
    failed = await fill_then_fail_a_row(db, ledger, row(0))
    assert "database or disk is full" in str(failed)
    assert [kept.request_id for kept in ledger.unrecorded] == [failed.request_id]
    assert ledger.unrecorded[0].status == "internal"  # what its caller got instead
    await db.write([("DELETE FROM audit", ())])
    ledger.retry_every_s = 60.0  # not the timer's retry: the next write's
    await ledger.record(row(99999))  # starts a retry of the kept row, as a write of its own
    await kept_rows_written(ledger)
    ids = {r[0] for r in await db.read("SELECT request_id FROM ledger")}
    assert {failed.request_id, "qd-test-99999"} <= ids


async def kept_rows_written(ledger: Ledger) -> None:
    """Wait for the retry under way to write every kept row."""
    with anyio.fail_after(10):
        while ledger.unrecorded:  # noqa: ASYNC110 (the retry's task)
            await anyio.sleep(0.01)


async def test_the_error_says_the_provider_was_paid_and_the_row_will_be_written(
    small_ledger: tuple[Database, Ledger],
) -> None:
    db, ledger = small_ledger
    paid = row(1, target="openai/gpt-4o-mini", cost=0.0123)
    failed = await fill_then_fail_a_row(db, ledger, paid)
    message = str(failed)
    assert message.startswith(f"request {failed.request_id} was answered by openai/gpt-4o-mini")
    assert "the provider was called and paid (0.012300 USD" in message
    assert "database or disk is full" in message
    assert "the reply is withheld" in message
    assert "will be written to the ledger when space returns" in message
    assert message.endswith(f"quote request id {failed.request_id}")
    hit = await fill_then_fail_a_row(db, ledger, row(2, cost=0.0, cached=True))
    assert "answered from the cache (no provider called, nothing spent)" in str(hit)


async def test_kept_rows_are_written_once_space_returns_with_no_other_write(
    small_ledger: tuple[Database, Ledger],
) -> None:
    db, ledger = small_ledger
    ledger.retry_every_s = 0.05
    failed = await fill_then_fail_a_row(db, ledger, row(1))
    await anyio.sleep(0.2)  # tried again meanwhile: still full
    assert [kept.request_id for kept in ledger.unrecorded] == [failed.request_id]
    await db.write([("DELETE FROM audit", ())])  # space returns; no request comes
    with anyio.fail_after(10):
        while ledger.unrecorded or ledger._retry_timer:  # noqa: ASYNC110 (the timer's)
            await anyio.sleep(0.01)
    rows = await db.read("SELECT status FROM ledger WHERE request_id = ?", (failed.request_id,))
    assert rows == [("internal",)]  # recorded as what its caller got


async def test_flush_writes_kept_rows_at_shutdown(db: Database) -> None:
    ledger = Ledger(db, CALENDAR)
    ledger.unrecorded.append(row(7))
    await ledger.flush()
    assert await db.read("SELECT request_id FROM ledger") == [("qd-test-7",)]


async def test_flush_during_a_retry_writes_each_kept_row_once(db: Database) -> None:
    ledger = Ledger(db, CALENDAR)
    ledger.unrecorded.append(row(7))
    ledger._retry_unrecorded()  # what the next record() does first; not committed yet
    await ledger.flush()
    assert await db.read("SELECT request_id FROM ledger") == [("qd-test-7",)]
    assert ledger.unrecorded == []


async def test_a_row_unwritable_for_its_values_holds_back_no_kept_row(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The kept rows were tried again as one write: one of them that SQLite cannot bind (a
    count past 64 bits) failed it every time, and the others were never written."""
    ledger = Ledger(db, CALENDAR)
    unbindable = row(8)._replace(prompt_tokens=2**70)
    ledger.unrecorded += [row(7), unbindable, row(9)]
    await ledger.record(row(10))  # starts a retry of the kept rows
    await kept_rows_written(ledger)
    ids = {r[0] for r in await db.read("SELECT request_id FROM ledger")}
    assert ids == {"qd-test-7", "qd-test-9", "qd-test-10"}
    assert ledger.unrecorded == []  # the unbindable row is let go, logged whole:
    [logged] = [r.getMessage() for r in caplog.records if "qd-test-8" in r.getMessage()]
    assert logged.startswith("unwritten ledger row (could not write to ")
    assert f'"prompt_tokens":{2**70}' in logged


async def test_while_kept_rows_cannot_be_written_requests_are_refused_before_any_spending(
    small_ledger: tuple[Database, Ledger],
) -> None:
    """Step 2 asks :meth:`Ledger.ready`: with the disk full, a request used to go on to the
    provider (paid) and have its reply withheld at step 7, every request, each row kept in
    memory without bound."""
    db, ledger = small_ledger
    await ledger.ready()  # nothing kept: nothing to do
    failed = await fill_then_fail_a_row(db, ledger, row(1))
    with pytest.raises(RequestError) as refused:
        await ledger.ready()
    assert refused.value.code == "overloaded"
    assert refused.value.retry_after_s == ledger.retry_every_s
    assert refused.value.message.startswith("the ledger cannot be written (could not write to ")
    assert "database or disk is full" in refused.value.message
    assert "request refused before any provider was called; 1 row(s) are kept" in str(refused.value)
    [problem] = ledger.problems()
    assert problem.startswith("ledger: 1 row(s) kept in memory, not yet written (could not ")
    assert problem.endswith("; requests are refused with overloaded until they are")
    await db.write([("DELETE FROM audit", ())])  # space returns
    await ledger.ready()  # the kept row written first
    assert ledger.unrecorded == []
    assert ledger.problems() == []
    assert await db.read("SELECT 1 FROM ledger WHERE request_id = ?", (failed.request_id,))


async def test_while_the_database_still_fails_a_retry_is_one_write(
    small_ledger: tuple[Database, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry tries the oldest kept row alone; the others follow once it is written. Trying
    each of 50 kept rows on its own was 50 failed transactions a retry, each request's."""
    db, ledger = small_ledger
    await fill_then_fail_a_row(db, ledger, row(1))
    ledger.unrecorded += [row(number) for number in range(100, 149)]
    submitted: list[int] = []
    write_later = db.write_later

    def counted(statements: Any, *args: Any, **kwargs: Any) -> None:
        submitted.append(len(statements))
        write_later(statements, *args, **kwargs)

    monkeypatch.setattr(db, "write_later", counted)
    with pytest.raises(RequestError):
        await ledger.ready()
    assert len(submitted) == 1
    await db.write([("DELETE FROM audit", ())])  # space returns
    await ledger.ready()
    assert ledger.unrecorded == []
    assert len(submitted) == 1 + 1 + 49  # the failed one, the first again, then the others
    [(count,)] = await db.read("SELECT count(*) FROM ledger WHERE request_id LIKE 'qd-test-1%'")
    assert count >= 50


async def test_rows_kept_through_a_full_disk_go_into_the_space_freed_paid_ones_first(
    directory: Path,
) -> None:
    """A real full disk (a 2 MiB tmpfs), 3,000 refusals' rows kept, then 20 paid ones, then
    192 KiB freed. All the kept rows used to be written at once: the WAL took back the space
    freed (it also held what the failed writes had taken), 10 refusals' rows went in, no paid
    one, and at shutdown the paid rows were only logged: the budgets forgot their cost."""
    with small_tmpfs(directory / "disk", size_kb=2048) as disk:
        db = Database(disk / "quotad.db")
        await db.open()
        ledger = Ledger(db, CALENDAR)
        ledger.retry_every_s = 0.05
        try:
            for number in range(50):
                await ledger.record(row(number))
            filler = fill_disk(disk)
            refusals = [row(1000 + n, status="overloaded", cost=0.0) for n in range(3000)]
            paid = [row(9000 + n, cost=0.01) for n in range(20)]
            for kept in refusals + paid:
                with contextlib.suppress(LedgerWriteFailed):
                    await ledger.record(kept)
            assert any(kept.cost_usd > 0 for kept in ledger.unrecorded)
            os.truncate(filler, filler.stat().st_size - 192 * 1024)
            with anyio.move_on_after(20):
                while ledger.unrecorded:  # noqa: ASYNC110 (the retries' task)
                    await anyio.sleep(0.05)
            written = {r[0] for r in await db.read("SELECT request_id FROM ledger")}
        finally:
            await ledger.flush()
            await db.close()
    assert {kept.request_id for kept in paid} <= written
    assert len(written) == 50 + 3000 + 20  # every row
    assert db.stats.checkpoints > 0


async def test_rows_that_cost_nothing_are_not_logged_one_line_each(
    small_ledger: tuple[Database, Ledger], caplog: pytest.LogCaptureFixture
) -> None:
    """While the disk is full every request is refused, and each refusal's row is kept: a log
    line each was one per request, at the rate requests came."""
    db, ledger = small_ledger
    await fill_then_fail_a_row(db, ledger, row(1))
    for number in range(2, 7):
        await fill_then_fail_a_row(db, ledger, row(number, status="overloaded", cost=0.0))
    await fill_then_fail_a_row(db, ledger, row(7))
    said = [r.getMessage() for r in caplog.records if "not written yet" in r.getMessage()]
    assert [line.split()[4].rsplit("-", 1)[0] for line in said] == ["qd-test-1", "qd-test-7"]
    assert len(ledger.unrecorded) == 7


async def test_past_the_bound_only_rows_that_cost_something_are_kept(
    small_ledger: tuple[Database, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, ledger = small_ledger
    monkeypatch.setattr(ledger_module, "MAX_KEPT_ROWS", 2)
    await fill_then_fail_a_row(db, ledger, row(1))
    await fill_then_fail_a_row(db, ledger, row(2))
    refusal = await fill_then_fail_a_row(db, ledger, row(3, status="rate_limited", cost=0.0))
    assert "The row (it cost nothing) is not kept: 2 rows already are" in str(refusal)
    paid = await fill_then_fail_a_row(db, ledger, row(4))
    assert "The row is kept in memory" in str(paid)
    kept_numbers = [kept.request_id.rsplit("-", 1)[0] for kept in ledger.unrecorded]
    assert kept_numbers == ["qd-test-1", "qd-test-2", "qd-test-4"]
    assert ledger.not_kept == 1
    await db.write([("DELETE FROM audit", ())])
    await ledger.ready()
    assert ledger.unrecorded == []
    assert ledger.not_kept == 0  # said in the log, counting starts over


async def test_spent_by_app_sums_today_and_this_month(db: Database) -> None:
    """A day after today was spent while the clock was ahead: it counts today (a restart
    after the clock was put right had let today spend its limit on top of it)."""
    ledger = Ledger(db, CALENDAR)
    for number, (at, app, cost) in enumerate(
        [
            (NOW, "agent", 0.5),
            (NOW - 3600, "agent", 0.25),
            (NOW - 5 * DAY, "agent", 1.0),
            (NOW - 40 * DAY, "agent", 9.0),  # last month
            (NOW - 2 * DAY, "indexer", 2.0),
            (NOW + DAY, "indexer", 0.125),  # the clock was a day ahead
        ]
    ):
        await ledger.record(row(number, at=at, app=app, cost=cost))
    found = sorted(await ledger.spent_by_app(NOW))
    assert found == [("agent", 0.75, 1.75), ("indexer", 0.125, 2.125)]


# --------------------------------------------------------------------------- reports


async def test_reports_group_and_total_the_period(db: Database) -> None:
    ledger = Ledger(db, CALENDAR)
    rows = [
        row(1, app="agent", cost=0.03),
        row(2, app="agent", cost=0.01, status="upstream_error"),
        row(3, app="agent", cost=0.02, cached=True),
        row(4, app="indexer", cost=0.5, target="local/llama", unpriced=True),
        row(5, app="indexer", cost=0.1, at=NOW - 2 * DAY),  # this week, not today
        row(6, app="old", cost=7.0, at=NOW - 30 * DAY),  # last month
    ]
    for entry in rows:
        await ledger.record(entry)

    today = await ledger.report("day", "app", NOW)
    assert [r.key for r in today.rows] == ["indexer", "agent"]  # dearest first
    agent = today.rows[1]
    assert (agent.requests, agent.errors, agent.cache_hits) == (3, 1, 1)
    assert agent.prompt_tokens == 200  # the hit's tokens are not billed
    assert agent.cost_usd == pytest.approx(0.04)
    assert agent.saved_usd == pytest.approx(0.02)
    assert today.rows[0].unpriced
    assert not agent.unpriced
    assert today.total.requests == 4
    assert today.total.unpriced
    assert today.total.cost_usd == pytest.approx(0.54)
    assert today.since == datetime(2026, 11, 20, tzinfo=UTC).timestamp()

    week = await ledger.report("week", "target", NOW)
    assert {r.key: r.requests for r in week.rows} == {"openai/gpt-4o-mini": 4, "local/llama": 1}
    month = await ledger.report("month", "model", NOW)
    assert month.total.requests == 5
    by_day = await ledger.report("month", "day", NOW)
    assert [r.key for r in by_day.rows] == ["2026-11-18", "2026-11-20"]


async def test_reports_flag_anomalous_days_and_forecast_the_month(db: Database) -> None:
    ledger = Ledger(db, CALENDAR)
    number = 0
    for back in range(1, 20):  # a steady dollar a day for 19 days
        for _ in range(4):
            number += 1
            await ledger.record(row(number, at=NOW - back * DAY, cost=0.25 + 0.01 * (back % 3)))
    for _ in range(20):  # today: ten times as much
        number += 1
        await ledger.record(row(number, cost=0.5))
    report = await ledger.report("month", "day", NOW)
    flags = {r.key: r.anomalous for r in report.rows}
    assert flags["2026-11-20"] is True
    assert not any(flag for day, flag in flags.items() if day != "2026-11-20")
    assert report.forecast_month_usd is not None
    assert 25 < report.forecast_month_usd < 45  # 19 days at ~$1.05, today $10, then ~$1/day


ODD_SPEND_ROW = (
    "INSERT INTO spend_daily (day, app, model, target, requests, errors, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd, cache_hits, saved_usd, unpriced) "
    "VALUES (?, 'odd', ?, 't', ?, 0, 0, 0, 0, 0.5, 0, 0, 0)"
)
ODD_FOUND_ROW = "INSERT INTO guardrails_daily VALUES (?, 'odd', ?, 't', 'email', ?)"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("requests", float("inf")),  # no integer holds it
        ("requests", 2**63 - 1),  # three of them are past what a reply carries (2**64)
        ("count", float("inf")),
        ("day", "2026-11-1x"),  # between two days of the month: no date
    ],
)
async def test_a_report_reads_past_rows_of_odd_values(
    db: Database, column: str, value: object
) -> None:
    """``quotad.db`` is the daemon's to write, but one damaged or edited by hand held
    ``spend_daily`` or ``guardrails_daily`` rows of odd values: ``quotad spend`` failed with
    ``internal`` (an OverflowError, or a ValueError by day). A count that is no count is not
    counted; a day that is no date is shown as it is, never flagged."""
    ledger = Ledger(db, CALENDAR)
    await ledger.record(row(1, app="agent", cost=0.25))
    odd: list[dict[str, object]] = []
    for day in ("2026-11-17", "2026-11-18", "2026-11-19"):
        odd.append({"day": day, "model": day, "requests": 1, "count": 1, column: value})
    await db.write(
        [(ODD_SPEND_ROW, (r["day"], r["model"], r["requests"])) for r in odd]
        + [(ODD_FOUND_ROW, (r["day"], r["model"], r["count"])) for r in odd]
    )
    for by in ("app", "day"):
        report = await ledger.report("month", by, NOW)
        msgspec.msgpack.encode(report)  # what the reply carries
        assert report.total.cost_usd == pytest.approx(0.25 + 3 * 0.5)
        assert report.total.requests == (1 if column == "requests" else 4)
        assert report.total.entities == {"email": 0 if column == "count" else 3}
        assert not any(r.anomalous for r in report.rows)
    assert "2026-11-1x" in {r.key for r in report.rows} or column != "day"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("cost_usd", "text"),
        ("cost_usd", float("inf")),
        ("cost_usd", 1e300),
        ("saved_usd", -1.0),
        ("requests", "text"),
        ("requests", float("inf")),
        ("day", b"2026-11-19"),
        ("count", "text"),
        ("count", float("inf")),
    ],
)
async def test_what_a_fleet_is_told_leaves_out_rows_of_odd_values(
    db: Database, column: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """``quotad.db`` is the daemon's to write, but in one damaged or edited by hand, a value
    that is no figure made the start of a daemon in a fleet fail: a ValueError (a text) or an
    OverflowError (infinity, or a cost past what nano-USD hold) as this host's spend by day
    was read and loaded."""
    ledger = Ledger(db, CALENDAR)
    await ledger.record(row(1, app="agent", cost=0.25))
    odd: dict[str, object] = {"day": "2026-11-19", "requests": 1, "count": 1}
    odd |= {"cost_usd": 0.5, "saved_usd": 0.0, column: value}
    await db.write(
        [
            (
                "INSERT INTO spend_daily (day, app, model, target, requests, errors, "
                "prompt_tokens, completion_tokens, cached_tokens, cost_usd, cache_hits, "
                "saved_usd, unpriced) VALUES (?, 'odd', 'm', 't', ?, 0, 0, 0, 0, ?, 0, ?, 0)",
                (odd["day"], odd["requests"], odd["cost_usd"], odd["saved_usd"]),
            ),
            (ODD_FOUND_ROW, (odd["day"], "m", odd["count"])),
        ]
    )
    days = await ledger.daily_totals("2026-11-01")
    found = await ledger.daily_guardrails("2026-11-01")
    FleetSpend("host").load(days, found)
    odd_found = column in ("count", "day")
    assert sorted(d[1] for d in days) == (["agent", "odd"] if column == "count" else ["agent"])
    assert [f[1] for f in found] == ([] if odd_found else ["odd"])
    warnings = [r.getMessage() for r in caplog.records if r.name == "quotad.ledger"]
    assert len(warnings) == (2 if column == "day" else 1)
    assert all(warning.startswith("1 row(s) of ") for warning in warnings)


def test_anomaly_needs_history_and_a_real_jump() -> None:
    steady = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]
    assert is_anomalous(5.0, steady)
    assert not is_anomalous(1.2, steady)
    assert not is_anomalous(5.0, steady[:5])  # too little history
    assert not is_anomalous(0.009, [0.0] * 10)  # under a cent above the mean
    assert is_anomalous(0.5, [0.0] * 10)


def test_forecast_follows_the_trend_or_the_rate() -> None:
    assert forecast_month([], 2.0, 30, 0.5) == pytest.approx(120.0)  # $2 in half a day
    rising = [1.0, 2.0, 3.0, 4.0]
    expected = sum(rising) + 5.0 + sum(range(6, 31))  # the line y = x + 1 to day 30
    assert forecast_month(rising, 0.5, 30, 4.5) == pytest.approx(expected)
    falling = [5.0, 3.0, 1.0]
    assert forecast_month(falling, 0.0, 30, 3.5) == pytest.approx(9.0)  # never below zero


# --------------------------------------------------------------------------- keys and audit


async def test_keys_are_shown_once_stored_hashed_and_revocable(db: Database) -> None:
    keys = Keys(db, VirtualClock())
    key, record = await keys.create("indexer")
    assert key.startswith(KEY_PREFIX)
    assert len(key) > 40
    assert record.prefix == key[:10]
    assert record.app == "indexer"
    assert keys.app_for_key(key) == "indexer"
    assert keys.app_for_key(key + "x") is None
    assert keys.app_for_key("sk-not-ours") is None
    await db.write([])
    raw = b"".join(path.read_bytes() for path in db.path.parent.glob("quotad.db*"))
    assert key.encode() not in raw  # only its hash is stored

    reloaded = Keys(db, VirtualClock())
    await reloaded.load()
    assert reloaded.app_for_key(key) == "indexer"
    assert await reloaded.revoke(record.id)
    assert not await reloaded.revoke(record.id)
    assert not await reloaded.revoke("k-nope")
    assert reloaded.app_for_key(key) is None
    (listed,) = reloaded.list()
    assert listed.revoked is not None

    again = Keys(db, VirtualClock())
    await again.load()
    assert again.app_for_key(key) is None


ODD_KEY = KEY_PREFIX + "o" * 43


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("created", "text"),
        ("created", b"\x01"),
        ("created", float("inf")),
        ("revoked", "text"),
        ("app", b"\xff"),
        ("app", ""),
        ("id", b"k1"),
        ("hash", key_hash(ODD_KEY).encode()),
    ],
)
async def test_a_row_that_is_no_key_is_skipped_at_load_and_the_others_load(
    db: Database, column: str, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    """``quotad.db`` is the daemon's to write, but one damaged or edited by hand held a keys
    row of odd values: ``quotad keys list`` failed in the client (a text where a time is),
    a key let requests in under an app of bytes, or an empty one."""
    keys = Keys(db, VirtualClock())
    key, record = await keys.create("indexer")
    odd: dict[str, object] = {"id": "kodd", "app": "web", "hash": key_hash(ODD_KEY)}
    odd |= {"prefix": ODD_KEY[:10], "created": NOW, "revoked": None, column: value}
    await db.write([("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?)", tuple(odd.values()))])
    reloaded = Keys(db, VirtualClock())
    await reloaded.load()
    assert reloaded.list() == [record]
    assert reloaded.app_for_key(key) == "indexer"
    assert reloaded.app_for_key(ODD_KEY) is None
    [warning] = [r.getMessage() for r in caplog.records if r.name == "quotad.store"]
    assert "1 row(s) of table keys are no key" in warning
    assert "rowid 2" in warning


async def test_audit_records_who_did_what(db: Database) -> None:
    audit = Audit(db, VirtualClock())
    await audit.record("key_create", "k1", 1000, 4242, {"app": "web"})
    with sqlite3.connect(db.path) as connection:
        rows = connection.execute(
            "SELECT action, target, caller_uid, caller_pid, detail FROM audit"
        ).fetchall()
    assert rows == [("key_create", "k1", 1000, 4242, '{"app":"web"}')]
