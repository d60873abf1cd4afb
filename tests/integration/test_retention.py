"""Retention through a real ``quotad serve``: a daemon kept 7 days, started on a ``quotad.db``
holding rows of 30 and 100 days ago, deletes them at start while ``quotad spend`` and the
budgets show what they showed before, and goes on recording."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from quotad.client import Client
from quotad.daemon.config import parse_config
from quotad.daemon.store import Store
from quotad.daemon.store.ledger import statements
from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess
from tests.support.store import ledger_row

DAY = 86400.0
MODEL = "sim/gpt-4o-mini"
DAEMON = 'ledger_retention_days = 7\ntimezone = "UTC"\ndrain_s = 2'
BUDGETS = "[budgets]\nmonthly_usd = 100.0\n"
SEEDED_DAYS_BACK = (0, 1, 6, 30, 100)


async def seed(state_dir: Path, now: float) -> dict[str, Any]:
    """Rows (and audit entries) of :data:`SEEDED_DAYS_BACK` days ago in a new ``quotad.db``;
    this month's report by app as the store gives it then."""
    config = parse_config({"daemon": {"timezone": "UTC"}})
    store = Store(config, state_dir)
    await store.open()
    try:
        rows = [
            ledger_row(days * 10 + n, at=now - days * DAY - 60, app=app, cost=0.01 * (n + 1))
            for days in SEEDED_DAYS_BACK
            for n, app in enumerate(("agent", "batch"))
        ]
        await store.db.write([s for row in rows for s in statements(row)])
        await store.db.write(
            [
                (
                    "INSERT INTO audit (time, action, target, caller_uid, caller_pid, detail) "
                    "VALUES (?, 'key_create', 'agent', 1000, 1, '{}')",
                    (now - days * DAY - 60,),
                )
                for days in SEEDED_DAYS_BACK
            ]
        )
        report = await store.ledger.report("month", "app", now)
        return {"cost_usd": report.total.cost_usd, "requests": report.total.requests}
    finally:
        await store.close()


def old_rows(database: Path, now: float) -> tuple[int, int, int]:
    """Ledger rows and audit entries older than 7 days, and ledger rows in all."""
    connection = sqlite3.connect(database)
    try:
        cutoff = now - 7 * DAY
        ((ledger,),) = connection.execute("SELECT count(*) FROM ledger WHERE time < ?", (cutoff,))
        ((audit,),) = connection.execute("SELECT count(*) FROM audit WHERE time < ?", (cutoff,))
        ((total,),) = connection.execute("SELECT count(*) FROM ledger")
        return int(ledger), int(audit), int(total)
    finally:
        connection.close()


def test_a_daemon_with_a_retention_deletes_old_rows_and_reports_the_same() -> None:
    now = time.time()
    with SimProcess(latency_ms=1) as sim:
        config = daemon_config(BUDGETS, sim_provider_config("sim", sim.base_url), daemon=DAEMON)
        daemon = DaemonProcess(config)
        before = asyncio.run(seed(daemon.state_dir, now))
        database = daemon.state_dir / "quotad.db"
        assert old_rows(database, now)[:2] == (4, 2)
        with daemon:
            for _ in range(500):  # the sweep runs at start, beside the serving
                if old_rows(database, now)[:2] == (0, 0):
                    break
                time.sleep(0.02)
            assert old_rows(database, now) == (0, 0, 6)  # days 0, 1 and 6 of two apps
            env = {"QUOTAD_SOCKET": str(daemon.socket_path)}
            result = run_quotad("spend", "--period", "month", "--json", env=env)
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["total"]["requests"] == before["requests"]
            assert abs(report["total"]["cost_usd"] - before["cost_usd"]) < 1e-9
            (monthly,) = [b for b in report["budgets"] if b.get("period") == "month"]
            assert abs(monthly["spent_usd"] - before["cost_usd"]) < 1e-9

            with Client(socket=daemon.socket_path, app="agent") as client:  # still recording
                client.chat(MODEL, [{"role": "user", "content": "after the sweep"}], max_tokens=8)
            after = json.loads(run_quotad("spend", "--period", "month", "--json", env=env).stdout)
            assert after["total"]["requests"] == before["requests"] + 1
            assert after["total"]["cost_usd"] > before["cost_usd"]
            assert old_rows(database, now) == (0, 0, 7)
        assert daemon.process is not None
        assert daemon.process.returncode == 0  # the sweeper stopped with the daemon
