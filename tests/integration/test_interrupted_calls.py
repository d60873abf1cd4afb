"""Calls a provider has when the daemon dies are charged at its next start: the provider bills
them all the same, but no reply, and so no ledger row, ever came back for them. Before, a
daemon killed with four calls under way started again with its budget as if they had never
been made ($0 spent), so every crash under load let the providers bill past the budget. Now a
call a provider has had for ``JOURNAL_AFTER_S`` is journaled (table ``in_flight``) and the
next start charges what is left there as ``interrupted`` rows, at their bounds; a call that
ends, after a clean stop's drain too, deletes its entry with its own row."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from quotad.client import Client
from tests.support.daemon import (
    DaemonProcess,
    app_budget_config,
    daemon_config,
    sim_provider_config,
)
from tests.support.polling import wait_until
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
PER_TOKEN = 100.0 / 1_000_000
CALLS = 4
T = TypeVar("T")


def query(daemon: DaemonProcess, sql: str) -> list[dict[str, Any]]:
    """Rows of ``quotad.db`` (none when the table is not there)."""
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute(sql).fetchall()]
    except sqlite3.OperationalError:  # no such table
        return []
    finally:
        connection.close()


def calls_in_background(daemon: DaemonProcess, count: int) -> list[threading.Thread]:
    """``count`` chats of app ``busy``, each from its own thread; how they end is not asked."""

    def chat(n: int) -> None:
        try:
            with Client(daemon.socket_path, app="busy", timeout=30) as client:
                messages = [{"role": "user", "content": f"a long question number {n}"}]
                client.chat(MODEL, messages, max_tokens=50, user=f"caller-{n}")
        except Exception:  # the daemon is killed under it
            pass

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads


@contextlib.contextmanager
def busy_daemon(sim: SimProcess) -> Iterator[DaemonProcess]:
    """A daemon whose app ``busy`` has a daily budget, over ``sim`` priced $100 per million
    tokens, with no cache."""
    config = daemon_config(
        sim_provider_config("sim", sim.base_url),
        app_budget_config("busy", 100.0, MODEL, 100.0),
        cache='mode = "off"',
    )
    with DaemonProcess(config) as daemon:
        yield daemon


def restart_once_journaled(
    daemon: DaemonProcess, threads: list[threading.Thread], stop: Callable[[], T]
) -> T:
    """Once the calls of ``threads`` are journaled, ``stop`` the daemon, let them end and
    start it again; what ``stop`` returned."""
    wait_until(lambda: len(query(daemon, "SELECT * FROM in_flight")) == CALLS)
    stopped = stop()
    for thread in threads:
        thread.join(30)
    daemon.start()
    return stopped


def spent_today(daemon: DaemonProcess) -> float:
    with Client(daemon.socket_path, app="busy") as client:
        return next(b.spent_usd for b in client.status().budgets if b.name == "app busy daily")


def test_calls_a_provider_has_when_the_daemon_is_killed_are_charged_at_its_next_start() -> None:
    with SimProcess(latency_ms=5000) as sim, busy_daemon(sim) as daemon:
        threads = calls_in_background(daemon, CALLS)
        wait_until(lambda: sim.stats()["requests"] == CALLS)  # the provider has them all
        restart_once_journaled(daemon, threads, daemon.kill)
        spent = spent_today(daemon)
        rows = query(daemon, "SELECT * FROM ledger WHERE status = 'interrupted'")
        journal = query(daemon, "SELECT * FROM in_flight")
        log = daemon.log()
    assert sorted(row["user"] for row in rows) == [f"caller-{n}" for n in range(CALLS)]
    for row in rows:
        assert row["app"] == "busy"
        assert row["target"] == MODEL
        assert row["attempts"] == 1
        assert row["completion_tokens"] == 50  # its limit: the provider may have finished
        assert row["prompt_tokens"] >= len("a long question number 0")
        assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] + 50) * PER_TOKEN)
    assert spent == pytest.approx(sum(row["cost_usd"] for row in rows))
    assert journal == []
    assert f"interrupted_calls: {CALLS} call(s) a provider had" in log


def test_calls_that_end_and_a_clean_stop_charge_nothing_twice() -> None:
    with SimProcess(latency_ms=600) as sim, busy_daemon(sim) as daemon:
        for thread in calls_in_background(daemon, CALLS):  # journaled, then answered
            thread.join(30)
        threads = calls_in_background(daemon, CALLS)
        assert restart_once_journaled(daemon, threads, daemon.stop) == 0  # the drain: they end
        spent = spent_today(daemon)
        rows = query(daemon, "SELECT status, cost_usd FROM ledger")
        journal = query(daemon, "SELECT * FROM in_flight")
    assert [row["status"] for row in rows] == ["ok"] * 2 * CALLS
    assert spent == pytest.approx(sum(row["cost_usd"] for row in rows))
    assert journal == []
