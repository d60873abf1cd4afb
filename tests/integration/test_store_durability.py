"""What the store must survive, through real daemons: concurrent requests against a budget, a
state file that cannot be used, a full database, kill -9 under load from several client
processes, and a report over 100k ledger rows."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from quotad.client import (
    AsyncClient,
    BudgetExceededError,
    Client,
    InternalError,
    OverloadedError,
)
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.db import Database
from quotad.daemon.store.ledger import LedgerRow, statements
from quotad.daemon.store.schema import SCHEMA_VERSION
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.disk import fill_disk, small_tmpfs
from tests.support.polling import wait_until
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"


def base_config(base_url: str, extra: str = "", daemon: str = "") -> str:
    """Provider ``sim`` at ``base_url``, then the tables in ``extra``; ``drain_s = 5`` and the
    lines in ``daemon`` in ``[daemon]``."""
    return daemon_config(
        sim_provider_config("sim", base_url), extra, daemon=f"drain_s = 5\n{daemon}"
    )


def ledger_ids(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as connection:
        return dict(connection.execute("SELECT request_id, status FROM ledger").fetchall())


# --------------------------------------------------------------------------- budgets


PRICED = """
[budgets]
daily_usd = {limit}
[prices."sim/slow-model"]
input = 1000.0
output = 1000.0
"""


@pytest.mark.slow
def test_concurrent_requests_never_spend_more_than_the_budget() -> None:
    """32 requests at once, each able to cost up to ~$0.11, against $1.15: about 10 fit."""
    limit = 1.15
    with (
        SimProcess(latency_ms=400) as sim,
        DaemonProcess(base_config(sim.base_url, PRICED.format(limit=limit))) as daemon,
    ):
        outcomes: list[Any] = []

        async def one(client: AsyncClient, number: int) -> None:
            try:
                messages = [{"role": "user", "content": f"spend {number}"}]
                outcomes.append(
                    await client.chat("sim/slow-model", messages, max_tokens=100, cache="bypass")
                )
            except BudgetExceededError as error:
                outcomes.append(error)

        async def burst() -> None:
            async with (
                AsyncClient(socket=daemon.socket_path, app="burst") as client,
                anyio.create_task_group() as tasks,
            ):
                for number in range(32):
                    tasks.start_soon(one, client, number)

        anyio.run(burst)
        replies = [o for o in outcomes if not isinstance(o, BudgetExceededError)]
        refused = [o for o in outcomes if isinstance(o, BudgetExceededError)]
        assert len(outcomes) == 32
        assert 5 <= len(replies) <= 11
        assert len(refused) >= 21
        assert all(error.details["budget"] == "global daily" for error in refused)
        assert all(error.details["limit_usd"] == limit for error in refused)
        spent = sum(reply.cost_usd for reply in replies)
        with sqlite3.connect(daemon.state_dir / "quotad.db") as connection:
            (ledger_spent,) = connection.execute("SELECT total(cost_usd) FROM ledger").fetchone()
        assert ledger_spent == pytest.approx(spent)
        assert ledger_spent <= limit + 1e-9
        with Client(socket=daemon.socket_path, app="burst") as client:
            (budget,) = client.status().budgets
            assert budget.reserved_usd == 0
            assert budget.spent_usd == pytest.approx(spent)
            # an unpriced (local) model is never blocked, however spent the budget is
            free = client.chat("sim/local-model", [{"role": "user", "content": "hi"}])
            assert free.cost_usd == 0


# --------------------------------------------------------------------------- refusing to start


def serve(directory: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    config = directory / "quotad.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state_dir}"\n[http]\nlisten = ""\n')
    return subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QUOTAD_SOCKET": str(directory / "q.sock")},
    )


def newer_schema(state: Path) -> str:
    state.mkdir()
    with sqlite3.connect(state / "quotad.db") as connection:
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    return "newer than this quotad knows"


def corrupt_file(state: Path) -> str:
    state.mkdir()
    (state / "quotad.db").write_bytes(os.urandom(64 * 1024))
    return "corrupt or not a quotad database"


def unusable_directory(state: Path) -> str:
    state.write_text("a file where the state directory should be")
    return "cannot create the state directory"


@pytest.mark.parametrize("spoil", [newer_schema, corrupt_file, unusable_directory])
def test_an_unusable_state_file_stops_the_daemon_with_a_clear_error(
    directory: Path, spoil: Callable[[Path], str]
) -> None:
    state = directory / "state"
    expected = spoil(state)
    if spoil is unusable_directory:
        state = state / "inner"
    result = serve(directory, state)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr
    assert str(state) in result.stderr
    assert not (directory / "q.sock").exists()  # it never started serving


# --------------------------------------------------------------------------- a full database


def fill_with_cache_entries(client: Client) -> InternalError:
    """Warm big cache entries until the database is full; the error that says so."""
    for number in range(200):
        entry = {
            "request": {"model": MODEL, "messages": [{"role": "user", "content": str(number)}]},
            "response": {"content": "x" * 20_000},
        }
        try:
            client.admin("cache_warm", entries=[entry])
        except InternalError as error:
            return error
    raise AssertionError("the database never filled up")


def test_a_full_database_fails_requests_clearly_keeps_serving_and_loses_no_row() -> None:
    with (
        SimProcess(latency_ms=0) as sim,
        DaemonProcess(base_config(sim.base_url, daemon="max_db_mb = 0.3")) as daemon,
        Client(socket=daemon.socket_path, app="filler") as client,
    ):
        filled = fill_with_cache_entries(client)
        assert "database or disk is full" in str(filled)
        failed: InternalError | None = None
        answered: list[str] = []
        for number in range(5000):
            messages = [{"role": "user", "content": f"row {number}"}]
            try:
                answered.append(
                    client.chat(MODEL, messages, max_tokens=4, cache="bypass").request_id
                )
            except InternalError as error:
                failed = error
                break
        assert failed is not None, "the ledger never filled up"
        failed_id = failed.details["request_id"]
        assert "the provider was called and paid" in str(failed)
        assert "database or disk is full" in str(failed)
        assert f"quote request id {failed_id}" in str(failed)
        status = client.status()  # still serving
        assert any(event.kind == "ledger_write_failed" for event in status.events)
        assert "removed" in client.admin("cache_clear").message  # frees the space
        after = client.chat(MODEL, [{"role": "user", "content": "after"}], max_tokens=4)
        answered.append(after.request_id)
        path = daemon.state_dir / "quotad.db"
        wait_until(lambda: failed_id in ledger_ids(path))
        rows = ledger_ids(path)
        assert rows[failed_id] == "internal"  # recorded as what its caller got
        assert set(answered) <= set(rows)


def test_a_full_disk_withholds_a_paid_reply_says_so_and_records_it_when_space_returns() -> None:
    port = free_port()
    with SimProcess(latency_ms=0) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url),
            daemon="drain_s = 5",
            http=f'listen = "127.0.0.1:{port}"\nauth = "none"',
        )
        daemon = DaemonProcess(config)
        try:
            with (
                small_tmpfs(daemon.state_dir, size_kb=2048),
                daemon,
                Client(socket=daemon.socket_path, app="filler") as client,
            ):
                client.chat(MODEL, [{"role": "user", "content": "first"}], max_tokens=4)
                filler = fill_disk(daemon.state_dir)
                failed: InternalError | None = None
                for number in range(5000):
                    messages = [{"role": "user", "content": f"request {number} " + "y" * 2000}]
                    try:
                        client.chat(MODEL, messages, max_tokens=4)
                    except InternalError as error:
                        failed = error
                        break
                assert failed is not None, "the disk never filled up"
                request_id = failed.details["request_id"]
                message = str(failed)
                assert f"request {request_id} was answered by sim/gpt-4o-mini" in message
                assert "the provider was called and paid" in message
                assert "database or disk is full" in message
                assert "will be written to the ledger when space returns" in message
                # until it is, requests are refused before any provider is called (they used to
                # be sent, paid, and their replies withheld, each)
                sent = sim.stats()["requests"]
                for number in range(3):
                    with pytest.raises(OverloadedError) as refused:
                        client.chat(MODEL, [{"role": "user", "content": f"later {number}"}])
                    assert "the ledger cannot be written" in str(refused.value)
                    assert "request refused before any provider was called" in str(refused.value)
                assert sim.stats()["requests"] == sent
                [problem] = client.status().problems  # what status (and /healthz) tell
                assert problem.startswith("ledger: ")
                assert "row(s) kept in memory, not yet written" in problem
                assert "database or disk is full" in problem
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False)
                assert health.status_code == 503
                assert health.json()["problems"] == [problem]
                filler.unlink()  # space returns; no further request comes
                path = daemon.state_dir / "quotad.db"
                wait_until(lambda: request_id in ledger_ids(path), timeout_s=20)
                with sqlite3.connect(path) as connection:
                    status, cost = connection.execute(
                        "SELECT status, cost_usd FROM ledger WHERE request_id = ?", (request_id,)
                    ).fetchone()
                assert status == "internal"  # what its caller got
                assert cost > 0  # what the provider was paid
                client.chat(MODEL, [{"role": "user", "content": "after"}], max_tokens=4)
                assert client.status().problems == []
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).is_success
        finally:
            shutil.rmtree(daemon.directory, ignore_errors=True)


# --------------------------------------------------------------------------- kill -9 under load


CLIENT_SCRIPT = """
import sys
from quotad.client import Client, QuotadError
socket, name, out = sys.argv[1:]
with open(out, "w") as ids, Client(socket=socket, app=name, reconnect_s=0) as client:
    number = 0
    while True:
        number += 1
        cache = "use" if number % 3 == 0 else "bypass"
        text = f"{name} {number % 4 if cache == 'use' else number}"
        try:
            reply = client.chat("sim/gpt-4o-mini", [{"role": "user", "content": text}],
                                max_tokens=6, cache=cache)
        except QuotadError:
            break
        ids.write(reply.request_id + "\\n")
        ids.flush()
"""


@pytest.mark.slow
def test_kill_9_under_load_loses_no_answered_request(directory: Path) -> None:
    with SimProcess(latency_ms=1) as sim:
        config = base_config(sim.base_url)
        daemon = DaemonProcess(config, directory=directory).start()
        outputs = [directory / f"client-{n}.ids" for n in range(4)]
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT_SCRIPT, str(daemon.socket_path), f"app{n}", str(out)],
                stderr=subprocess.PIPE,
            )
            for n, out in enumerate(outputs)
        ]
        try:
            wait_until(lambda: all(out.exists() and out.stat().st_size > 2000 for out in outputs))
            daemon.kill()  # SIGKILL in the middle of the load
            for process in clients:
                process.wait(timeout=30)
        finally:
            for process in clients:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if process.stderr is not None:
                    process.stderr.close()
        answered = [line for out in outputs for line in out.read_text().split()]
        assert len(answered) > 200

        path = daemon.state_dir / "quotad.db"
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        recorded = ledger_ids(path)
        missing = [request_id for request_id in answered if request_id not in recorded]
        assert missing == []
        with sqlite3.connect(path) as connection:
            (summed,) = connection.execute("SELECT total(requests) FROM spend_daily").fetchone()
        assert summed == len(recorded)  # the summary committed with every row

        restarted = DaemonProcess(config, directory=directory)
        with restarted, Client(socket=restarted.socket_path, app="after") as client:
            reply = client.chat(MODEL, [{"role": "user", "content": "after the crash"}])
            assert reply.content
            assert reply.request_id not in recorded
            report = client.spend(period="day", by="app")
            assert report.total.requests == len(recorded) + 1


# --------------------------------------------------------------------------- 100k rows


def bulk_row(number: int, at: float, calendar: Calendar) -> LedgerRow:
    return LedgerRow(
        request_id=f"qd-bulk-{number}",
        time=at,
        day=calendar.day(at),
        kind="chat",
        app=f"app{number % 9}",
        user="",
        uid=1000,
        pid=number,
        gid=1000,
        model="fast",
        target=f"sim/model-{number % 6}",
        attempts=1,
        status="ok" if number % 50 else "upstream_error",
        prompt_tokens=120,
        completion_tokens=30,
        cached_tokens=0,
        cost_usd=0.0004,
        saved_usd=0.0,
        cached=number % 10 == 0,
        unpriced=False,
        wait_s=0.0,
        latency_s=0.2,
        priority="normal",
        tags="[]",
    )


@pytest.mark.slow
def test_spend_over_100k_rows_answers_within_200_ms(directory: Path) -> None:
    state = directory / "state"

    async def create() -> None:
        database = Database(state / "quotad.db")
        await database.open()
        await database.close()

    asyncio.run(create())
    calendar = Calendar()
    now = time.time()
    rows = [
        bulk_row(number, now - (number % 45) * 86400 - (number % 977), calendar)
        for number in range(100_000)
    ]
    with sqlite3.connect(state / "quotad.db") as connection:
        for sql in {sql for sql, _ in statements(rows[0])}:
            connection.executemany(sql, [p for row in rows for s, p in statements(row) if s == sql])
    with (
        SimProcess() as sim,
        DaemonProcess(base_config(sim.base_url), directory=directory) as daemon,
        Client(socket=daemon.socket_path, app="reporter") as client,
    ):
        month_start = calendar.month_bounds(now)[0]
        expected = sum(1 for row in rows if row.time >= month_start)
        for period in ("day", "week", "month"):
            for by in ("app", "model", "target", "day"):
                report = functools.partial(client.spend, period=period, by=by)
                best = min(timed(report) for _ in range(3))
                assert best < 0.2, f"spend --period {period} --by {by}: {best * 1000:.0f} ms"
        report_by_day = client.spend(period="month", by="day")
        assert report_by_day.total.requests == expected
        assert report_by_day.forecast_month_usd is not None


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started
