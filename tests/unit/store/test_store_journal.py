"""The journal of calls in flight (table ``in_flight``): a call a provider has had for
``JOURNAL_AFTER_S`` is journaled with the row it costs if the daemon dies; its own row deletes
that in the same commit; a start charges what is left as ``interrupted`` rows, counted in the
day's spend. A call that answers sooner writes nothing."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quotad.daemon.store.db import Database, WriteFailed
from quotad.daemon.store.ledger import INTERRUPTED, Ledger, LedgerRow, LedgerWriteFailed
from quotad.daemon.store.prices import PriceTable
from tests.support.polling import run_loop_until
from tests.support.store import CALENDAR
from tests.support.store import ledger_row as row

pytestmark = pytest.mark.anyio

PRICES = PriceTable({})
BOUND_USD = (100 * 0.15 + 20 * 0.60) / 1e6
"""What a call of :func:`tests.support.store.ledger_row`'s tokens (100 prompt, 20 completion)
costs at most on its target, gpt-4o-mini ($0.15 and $0.60 per 1M tokens)."""


def bound(number: int) -> LedgerRow:
    """What call ``number`` costs if the daemon dies: its bounds, no day yet (the ledger's)."""
    return row(number, cost=0.5, status=INTERRUPTED)._replace(day="")


async def journal(db: Database) -> list[str]:
    return [str(request_id) for (request_id,) in await db.read("SELECT request_id FROM in_flight")]


async def journaled(db: Database, *numbers: int) -> Ledger:
    """A ledger on ``db`` that has journaled calls ``numbers`` (handed off, then past
    JOURNAL_AFTER_S, committed)."""
    ledger = Ledger(db, CALENDAR)
    for number in numbers:
        ledger.handed_off(f"qd-test-{number}", functools.partial(bound, number))
    await run_loop_until(lambda: ledger._journal_timer is None)
    await db.committed()
    return ledger


async def test_a_call_that_answers_soon_writes_no_journal_entry(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    journaled: list[object] = []  # what reaches the group commit without being waited for
    ledger = Ledger(db, CALENDAR)
    monkeypatch.setattr(db, "write_later", lambda *args, **kwargs: journaled.append(args))
    ledger.handed_off("qd-test-1", lambda: bound(1))
    await ledger.record(row(1))  # its row (a write waited for) within JOURNAL_AFTER_S
    await run_loop_until(lambda: ledger._journal_timer is None)  # the timer came and went
    assert journaled == []
    assert await journal(db) == []


async def test_a_call_that_lasts_is_journaled_until_its_row_comes(db: Database) -> None:
    ledger = await journaled(db, 1, 2)
    assert sorted(await journal(db)) == ["qd-test-1", "qd-test-2"]
    await ledger.record(row(1))
    assert await journal(db) == ["qd-test-2"]


async def test_a_start_charges_what_a_dead_daemon_left_journaled(directory: Path) -> None:
    db = Database(directory / "quotad.db")
    await db.open()
    ledger = await journaled(db, 1, 2)
    await ledger.record(row(2))  # answered: its own row, not its bound
    await db.close()  # the daemon dies with call 1 under way

    db = Database(directory / "quotad.db")
    await db.open()
    try:
        ledger = Ledger(db, CALENDAR)
        charged = await ledger.recover_interrupted(PRICES)
        assert [r.request_id for r in charged] == ["qd-test-1"]
        assert charged[0].status == INTERRUPTED
        assert charged[0].day == CALENDAR.day(charged[0].time)
        assert await journal(db) == []
        rows = await db.read("SELECT request_id, status, cost_usd FROM ledger ORDER BY id")
        assert rows == [("qd-test-2", "ok", 0.01), ("qd-test-1", INTERRUPTED, 0.5)]
        (spent,) = await db.read("SELECT total(cost_usd) FROM spend_daily")
        assert spent[0] == pytest.approx(0.51)
        assert await ledger.recover_interrupted(PRICES) == []  # charged once
    finally:
        await db.close()


async def test_an_entry_that_cannot_be_read_is_dropped_and_the_others_charged(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = await journaled(db, 1)
    await db.write([("INSERT INTO in_flight VALUES (?, ?)", ("qd-bad", b"\xc1junk"))])
    with caplog.at_level(logging.ERROR):
        charged = await ledger.recover_interrupted(PRICES)
    assert [r.request_id for r in charged] == ["qd-test-1"]
    assert "journal entry of request qd-bad cannot be read" in caplog.text
    assert await journal(db) == []


async def test_a_second_attempt_journals_its_own_bound(db: Database) -> None:
    ledger = await journaled(db, 1)
    ledger.handed_off("qd-test-1", lambda: bound(1)._replace(target="other/m", cost_usd=0.7))
    await run_loop_until(lambda: ledger._journal_timer is None)
    await db.committed()
    charged = await ledger.recover_interrupted(PRICES)
    assert [(r.target, r.cost_usd) for r in charged] == [("other/m", 0.7)]


async def test_a_call_its_provider_refused_leaves_no_entry(db: Database) -> None:
    """A call journaled, then refused (an error status: it will not be billed) while its
    request waits for another attempt: a daemon dying then charged its bound at the next
    start; now the entry goes (and one not yet journaled never is)."""
    ledger = await journaled(db, 1)
    ledger.handed_off("qd-test-2", lambda: bound(2))
    ledger.not_handed_off("qd-test-1")
    ledger.not_handed_off("qd-test-2")
    await run_loop_until(lambda: ledger._journal_timer is None)
    await db.committed()
    assert await journal(db) == []
    assert await ledger.recover_interrupted(PRICES) == []
    await ledger.record(row(1))  # its row, when it comes, deletes nothing more
    assert await journal(db) == []


async def test_an_entry_that_cannot_be_made_costs_only_itself(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> LedgerRow:
        raise AssertionError("a bug")

    ledger = Ledger(db, CALENDAR)
    ledger.handed_off("qd-test-1", broken)
    ledger.handed_off("qd-test-2", lambda: bound(2))
    with caplog.at_level(logging.ERROR):
        await run_loop_until(lambda: ledger._journal_timer is None)
    await db.committed()
    assert await journal(db) == ["qd-test-2"]
    assert "could not journal request qd-test-1" in caplog.text


async def test_an_entry_the_ledger_refuses_is_dropped_and_the_others_charged(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry whose row the ledger refuses (a time that is NaN: NOT NULL) failed the one
    commit of them all, so every start left all of them uncharged ($0 of four calls)."""
    encoder = msgspec.msgpack.Encoder()
    bad = bound(9)._replace(request_id="qd-bad", time=math.nan)
    entries = [(f"qd-test-{n}", encoder.encode(bound(n))) for n in (1, 2, 3)]
    entries.append(("qd-bad", encoder.encode(bad)))
    for entry in entries:
        await db.write([("INSERT INTO in_flight VALUES (?, ?)", entry)])
    ledger = Ledger(db, CALENDAR)
    with caplog.at_level(logging.ERROR):
        charged = await ledger.recover_interrupted(PRICES)
    assert sorted(r.request_id for r in charged) == ["qd-test-1", "qd-test-2", "qd-test-3"]
    (spent,) = await db.read("SELECT total(cost_usd) FROM spend_daily")
    assert spent[0] == pytest.approx(1.5)
    assert "unwritten ledger row" in caplog.text
    assert '"request_id":"qd-bad"' in caplog.text
    assert await journal(db) == []
    assert await ledger.recover_interrupted(PRICES) == []  # charged once


async def test_entries_the_disk_refuses_stay_journaled_for_the_next_start(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Charged each on its own (an entry refused for its values held back the others), an
    entry the disk refuses stays journaled for the next start, and so do those refused for
    their values (nothing is dropped while the disk refuses); every row written is reported,
    those after a refused one too (the start's event counts them)."""
    encoder = msgspec.msgpack.Encoder()
    bad = bound(9)._replace(request_id="qd-bad", time=math.nan)
    for request_id, entry in [("qd-test-1", bound(1)), ("qd-test-2", bound(2)), ("qd-bad", bad)]:
        statement = ("INSERT INTO in_flight VALUES (?, ?)", (request_id, encoder.encode(entry)))
        await db.write([statement])
    write = db.write

    async def disk_full_for_call_1(statements: Any, *, durable: bool = True) -> None:
        if any(parameters == ("qd-test-1",) for _, parameters in statements):
            raise WriteFailed("database or disk is full")
        await write(statements, durable=durable)

    monkeypatch.setattr(db, "write", disk_full_for_call_1)
    charged = await Ledger(db, CALENDAR).recover_interrupted(PRICES)
    assert [r.request_id for r in charged] == ["qd-test-2"]
    assert sorted(await journal(db)) == ["qd-bad", "qd-test-1"]
    monkeypatch.undo()
    charged = await Ledger(db, CALENDAR).recover_interrupted(PRICES)  # the next start: space again
    assert [r.request_id for r in charged] == ["qd-test-1"]
    assert await journal(db) == []


async def test_a_call_never_journaled_costs_its_row_no_delete(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most calls answer before JOURNAL_AFTER_S: their commit has nothing to delete (a
    delete costs a commit 5-10 µs)."""
    written: list[list[Any]] = []
    write = db.write

    async def noted(statements: Any, *, durable: bool = True) -> None:
        written.append([sql for sql, _ in statements])
        await write(statements, durable=durable)

    monkeypatch.setattr(db, "write", noted)
    ledger = Ledger(db, CALENDAR)
    ledger.handed_off("qd-test-1", lambda: bound(1))
    await ledger.record(row(1))
    assert [len(sqls) for sqls in written] == [1]


async def test_a_journaled_row_kept_through_a_failed_write_deletes_its_entry_later(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await journaled(db, 1)
    write = db.write

    async def disk_full(statements: Any, *, durable: bool = True) -> None:
        raise WriteFailed("database or disk is full")

    monkeypatch.setattr(db, "write", disk_full)
    with pytest.raises(LedgerWriteFailed):
        await ledger.record(row(1))
    monkeypatch.setattr(db, "write", write)
    await ledger.flush()  # the kept row, written at last
    assert await journal(db) == []
    assert await db.read("SELECT request_id FROM ledger") == [("qd-test-1",)]


async def put_entry(db: Database, row: LedgerRow) -> None:
    """A journal entry of ``row``, as a dead daemon (or a hand) left it."""
    entry = (row.request_id, msgspec.msgpack.Encoder().encode(row))
    await db.write([("INSERT INTO in_flight VALUES (?, ?)", entry)])


@pytest.mark.parametrize("cost", [-100.0, math.inf, -math.inf, math.nan, 1e300])
async def test_an_entry_whose_cost_is_no_amount_is_charged_its_bound(
    db: Database, caplog: pytest.LogCaptureFixture, cost: float
) -> None:
    """An entry's cost was charged as it was: -$100 gave money back, an infinite or 1e300 one
    made the day's spend one no budget can read (every start was refused, and the command
    the refusal gives rebuilt the same figure from the ledger), a NaN one was dropped (NOT
    NULL). Now such an entry is charged the bound the daemon journals, its tokens at its
    target's price, with a warning naming it."""
    await put_entry(db, row(1, cost=cost, status=INTERRUPTED))
    await put_entry(db, row(2, cost=0.5, status=INTERRUPTED))
    with caplog.at_level(logging.WARNING):
        charged = await Ledger(db, CALENDAR).recover_interrupted(PRICES)
    assert sorted((r.request_id, r.cost_usd) for r in charged) == [
        ("qd-test-1", pytest.approx(BOUND_USD)),
        ("qd-test-2", 0.5),
    ]
    (spent,) = await db.read("SELECT total(cost_usd) FROM spend_daily")
    assert spent[0] == pytest.approx(0.5 + BOUND_USD)
    assert "journal entry of request qd-test-1 (table in_flight) holds a cost of" in caplog.text
    assert await journal(db) == []


async def test_an_entry_whose_cost_and_tokens_bound_no_amount_is_dropped(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Its tokens no counts either, nothing can stand for its cost: it is dropped, never
    charged as money given back, and the others are charged."""
    await put_entry(db, row(1, cost=-100.0, status=INTERRUPTED)._replace(prompt_tokens=-5))
    await put_entry(db, row(2, cost=0.5, status=INTERRUPTED))
    with caplog.at_level(logging.ERROR):
        charged = await Ledger(db, CALENDAR).recover_interrupted(PRICES)
    assert [r.request_id for r in charged] == ["qd-test-2"]
    assert "journal entry of request qd-test-1 (table in_flight)" in caplog.text
    assert "dropped, not charged" in caplog.text
    assert await journal(db) == []


async def test_an_entry_of_a_target_with_no_price_is_charged_nothing_and_flagged(
    db: Database,
) -> None:
    await put_entry(db, row(1, cost=math.inf, status=INTERRUPTED, target="own/model"))
    [charged] = await Ledger(db, CALENDAR).recover_interrupted(PRICES)
    assert (charged.cost_usd, charged.unpriced) == (0.0, True)
