"""Budgets held by a fleet (DESIGN §10, issue 15.5-7), end to end with real processes: one
Valkey, the sim, three ``quotad serve`` sharing one global and one app budget, and one client
process per host with 16 concurrent clients each (48 at once), each sending until its budget
refuses it. What was spent (each host's ledger: the truth for its rows) never passes a limit;
``quotad spend --fleet`` reports every host's spend as their ledgers have it (and what their
guardrails found, as each host's own report counts it); Valkey restarted
empty mid-run does not reset the budgets (every host pushes its totals back); while Valkey is
away a host serves what it holds and refuses the rest with ``rate_limited``; a host's
``quotad status`` shows the fleet's budget figures, or its own while Valkey is away."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from quotad.client import BlockedError, Client, QuotadError, UnknownModelError
from quotad.protocol.messages import SpendReply
from tests.support.daemon import DaemonProcess, daemon_config
from tests.support.fleet import ONE_FLEET_AT_A_TIME, Fleet, have_valkey

pytestmark = [
    ONE_FLEET_AT_A_TIME,
    pytest.mark.skipif(not have_valkey(), reason="no valkey-server or redis-server"),
]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "sim/sim-small"
PRICES = """\
[prices."sim/sim-small"]
input = 10.0
output = 100.0
"""
"""USD per million tokens: a reply of the sim (16 words) costs about 0.0018 USD, and a
request reserves up to 0.0066 USD (64 completion tokens)."""
GLOBAL_USD = 0.09
APP_USD = 0.05
BUDGETS = f"[budgets]\ndaily_usd = {GLOBAL_USD}\n[apps.build]\ndaily_usd = {APP_USD}\n"
CLIENT_TIMEOUT_S = 120


def ledger_spend(state_dir: Path) -> dict[str, float]:
    """Each app's cost in one host's ledger."""
    with sqlite3.connect(f"file:{state_dir / 'quotad.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT app, total(cost_usd) FROM ledger GROUP BY app").fetchall()
    return {str(app): float(cost) for app, cost in rows}


def fleet_ledgers(fleet: Fleet) -> list[dict[str, float]]:
    return [ledger_spend(daemon.state_dir) for daemon in fleet.daemons]


def start_clients(
    fleet: Fleet, apps: Sequence[str], *, requests: int, threads: int = 16, delay_s: float = 2.0
) -> tuple[list[subprocess.Popen[str]], float]:
    """One client process per host (``apps[i]`` on host ``i``), ``threads`` clients each, all
    starting together ``delay_s`` from now; the processes and when they start (Unix time)."""
    start_at = time.time() + delay_s
    processes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.budget_load",
                "--socket", str(daemon.socket_path), "--app", app, "--model", MODEL,
                "--threads", str(threads), "--requests", str(requests),
                "--start-at", str(start_at),
            ],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for daemon, app in zip(fleet.daemons, apps, strict=True)
    ]  # fmt: skip
    return processes, start_at


def collect(processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Each client process's result (all of them stopped, whatever happens)."""
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=CLIENT_TIMEOUT_S)
            assert process.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def run_clients(
    fleet: Fleet, apps: Sequence[str], *, requests: int, threads: int = 16
) -> list[dict[str, Any]]:
    """:func:`start_clients`, then their results."""
    return collect(start_clients(fleet, apps, requests=requests, threads=threads)[0])


def spend_fleet(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "--socket", str(socket_path), "spend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QUOTAD_CONFIG": "/nonexistent/quotad.toml"},
    )


def wait_connected(fleet: Fleet, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = fleet.statuses()
        if all(s.cluster is not None and s.cluster.health == "connected" for s in statuses):
            return
        assert time.monotonic() < deadline, [s.cluster for s in statuses]
        time.sleep(0.1)


def test_the_fleet_never_spends_past_its_budgets_under_48_concurrent_requests() -> None:
    with Fleet(hosts=3, extra=BUDGETS + PRICES) as fleet:
        wait_connected(fleet)
        results = run_clients(fleet, ["build", "build", "docs"], requests=40)
        ledgers = fleet_ledgers(fleet)
        build = sum(ledger.get("build", 0.0) for ledger in ledgers)
        total = sum(sum(ledger.values()) for ledger in ledgers)
        print(f"fleet spend: build {build:.6f} of {APP_USD}, all {total:.6f} of {GLOBAL_USD}")
        print(results)
        assert build <= APP_USD + 1e-9
        assert total <= GLOBAL_USD + 1e-9
        # the budgets were the limit, not the request count: every client process was refused
        assert all(r["errors"].get("budget_exceeded", 0) > 0 for r in results), results
        # efficiency: what bound each app was spent well. build's bound is its own budget, or
        # what docs left of the global one, whichever is less: which client process the
        # scheduler runs first decides how much docs takes, and that is not the fleet's doing
        docs = total - build
        assert build >= min(APP_USD, GLOBAL_USD - docs) * 0.5, (build, docs)
        assert total >= GLOBAL_USD * 0.6, total
        # the replies' costs are what the ledgers hold
        assert sum(r["cost_usd"] for r in results) == pytest.approx(total, abs=1e-9)

        # quotad spend --fleet, on any host: every host's spend as its ledger has it
        by_host = spend_fleet(fleet.daemons[1].socket_path, "--fleet", "--by", "host", "--json")
        assert by_host.returncode == 0, by_host.stderr
        reply = json.loads(by_host.stdout)
        assert reply["fleet"] is True
        assert reply["hosts"] == ["h1", "h2", "h3"]
        rows = {row["key"]: row for row in reply["rows"]}
        for name, ledger in zip(("h1", "h2", "h3"), ledgers, strict=True):
            assert rows[name]["cost_usd"] == pytest.approx(sum(ledger.values()), abs=1e-8)
        assert reply["total"]["cost_usd"] == pytest.approx(total, abs=1e-8)
        assert reply["total"]["requests"] == sum(r["ok"] for r in results) + sum(
            sum(r["errors"].values()) for r in results
        )
        budgets = {b["name"]: b for b in reply["budgets"]}
        assert budgets["app build daily"]["spent_usd"] == pytest.approx(build, abs=1e-8)
        by_app = spend_fleet(fleet.daemons[0].socket_path, "--fleet", "--by", "app")
        assert by_app.returncode == 0, by_app.stderr
        assert "fleet: 3 host(s): h1, h2, h3" in by_app.stdout
        assert "build" in by_app.stdout
        assert "docs" in by_app.stdout
        assert "fleet budgets" in by_app.stdout


def test_a_valkey_restarted_empty_does_not_reset_the_budgets() -> None:
    """Valkey killed after some spend; 48 clients start while it is away (each host serves
    what it holds, refuses the rest with ``rate_limited``) and go on as it comes back empty:
    the hosts push their totals back before anyone borrows, so the fleet still stops at the
    limit."""
    budgets = f"[budgets]\ndaily_usd = {GLOBAL_USD}\n" + PRICES
    with Fleet(hosts=3, extra=budgets, sim={"latency_ms": 20}, heartbeat_s=1.0) as fleet:
        wait_connected(fleet)
        run_clients(fleet, ["a", "b", "c"], requests=1, threads=5)  # 15: about 0.026 USD
        before = sum(sum(ledger.values()) for ledger in fleet_ledgers(fleet))
        assert 0 < before < GLOBAL_USD / 2

        fleet.valkey.kill()
        with Client(socket=fleet.daemons[0].socket_path, app="a", timeout=30) as client:
            refused = None
            for _ in range(40):  # what h1 holds is served, then it refuses
                try:
                    client.chat(MODEL, [{"role": "user", "content": "x"}], max_tokens=64)
                except QuotadError as error:
                    refused = error
                    break
            assert refused is not None
            assert refused.code == "rate_limited"
            assert refused.retry_after_s is not None
            assert refused.retry_after_s > 0
            assert "fail closed" in str(refused)

        processes, start_at = start_clients(fleet, ["a", "b", "c"], requests=40, delay_s=1.5)
        time.sleep(max(0.0, start_at + 0.5 - time.time()))
        fleet.valkey.start()  # empty, while 48 clients are asking
        results = collect(processes)
        ledgers = fleet_ledgers(fleet)
        total = sum(sum(ledger.values()) for ledger in ledgers)
        print(f"fleet spend across a Valkey restarted empty: {total:.6f} of {GLOBAL_USD}")
        print(results)
        assert total <= GLOBAL_USD + 1e-9
        assert sum(r["errors"].get("rate_limited", 0) for r in results) > 0  # it was away
        assert all(r["errors"].get("budget_exceeded", 0) > 0 for r in results), results
        assert total >= GLOBAL_USD * 0.6
        # every host pushed its spend back: the report has all of it
        wait_connected(fleet)
        report = spend_fleet(fleet.daemons[2].socket_path, "--fleet", "--by", "host", "--json")
        assert report.returncode == 0, report.stderr
        reply = json.loads(report.stdout)
        assert reply["total"]["cost_usd"] == pytest.approx(total, abs=1e-8)


def test_spend_fleet_without_a_cluster_is_a_clear_error() -> None:
    with DaemonProcess(daemon_config()) as daemon:
        out = spend_fleet(daemon.socket_path, "--fleet")
        assert out.returncode == 1
        assert "bad_request" in out.stderr, out.stderr
        assert "no [cluster]" in out.stderr, out.stderr
        as_json = spend_fleet(daemon.socket_path, "--fleet", "--json")
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["error"]["code"] == "bad_request"
        by_host = spend_fleet(daemon.socket_path, "--by", "host", "--json")
        assert by_host.returncode == 0, by_host.stderr
        assert [row["key"] for row in json.loads(by_host.stdout)["rows"]] == [
            __import__("socket").gethostname()
        ]


def status_text(socket_path: Path) -> str:
    """``quotad status`` as text, from the command itself."""
    out = subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "--socket", str(socket_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "QUOTAD_CONFIG": "/nonexistent/quotad.toml"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def wait_status(fleet: Fleet, index: int, ready: Any, timeout_s: float = 20.0) -> Any:
    """Host ``index``'s status once ``ready(status)`` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = fleet.statuses()[index]
        if ready(status):
            return status
        assert time.monotonic() < deadline, (status.budgets, status.cluster)
        time.sleep(0.1)


def test_a_hosts_status_shows_the_fleets_budgets_and_its_own_when_redis_is_away() -> None:
    """h1 spends, h2 spends nothing: h2's ``quotad status`` shows the fleet's spend (as h2
    last heard it from Valkey, with no round trip on the status path), and with Valkey gone
    its own figures, saying so."""
    with Fleet(hosts=2, extra="[budgets]\ndaily_usd = 1.0\n" + PRICES) as fleet:
        wait_connected(fleet)
        with Client(socket=fleet.daemons[0].socket_path, app="a", timeout=30) as client:
            replies = [
                client.chat(MODEL, [{"role": "user", "content": "x"}], max_tokens=64)
                for _ in range(3)
            ]
        spent = sum(reply.cost_usd for reply in replies)
        assert spent > 0

        def fleet_spend_heard(status: Any) -> bool:
            (budget,) = status.budgets
            return bool(budget.fleet) and budget.spent_usd == pytest.approx(spent, abs=1e-8)

        status = wait_status(fleet, 1, fleet_spend_heard)
        (budget,) = status.budgets
        assert 0 < time.time() - budget.as_of < 20
        text = status_text(fleet.daemons[1].socket_path)
        assert "figures" in text
        assert "s ago" in text.split("budgets", 1)[1]

        fleet.valkey.kill()
        status = wait_status(
            fleet, 1, lambda s: s.cluster is not None and s.cluster.health == "degraded"
        )
        (budget,) = status.budgets
        assert not budget.fleet
        assert budget.spent_usd == 0.0  # h2's own: it spent nothing
        assert "this host only" in status_text(fleet.daemons[1].socket_path)


GUARDRAILS = """\
[guardrails.input]
credit_card = "block"
email = "log"
"""
CARD = "4111 1111 1111 1111"
REPORT_KEYS = ("app", "model", "target", "day")
Figures = tuple[int, int, int, dict[str, int]]


def guarded_figures(replies: Sequence[SpendReply]) -> dict[str, Figures]:
    """Requests, errors, blocked and entities per key, summed over ``replies``."""
    out: dict[str, Figures] = {}
    for reply in replies:
        for row in reply.rows:
            requests, errors, blocked, entities = out.get(row.key, (0, 0, 0, {}))
            for kind, count in row.entities.items():
                entities = {**entities, kind: entities.get(kind, 0) + count}
            out[row.key] = (requests + row.requests, errors + row.errors,
                            blocked + row.blocked, entities)  # fmt: skip
    return out


def test_spend_fleet_sums_what_every_hosts_guardrails_found() -> None:
    """h1's guardrails block a request (a card number), h2's find e-mail addresses:
    ``quotad spend --fleet`` on either host reports the sum of what each host's own report
    counts, by every key, as text, JSON and CSV."""
    with Fleet(hosts=2, extra=GUARDRAILS + PRICES) as fleet:
        h1, h2 = fleet.sockets()
        with Client(socket=h1, app="build", timeout=30) as client:
            client.chat(MODEL, [{"role": "user", "content": "hello"}], max_tokens=16)
            with pytest.raises(BlockedError):
                client.chat(MODEL, [{"role": "user", "content": f"pay {CARD}"}], max_tokens=16)
        with Client(socket=h2, app="docs", timeout=30) as client:
            text = "write to jane.doe@example.com and bob.smith@example.org"
            client.chat(MODEL, [{"role": "user", "content": text}], max_tokens=16)

        def report(socket_path: Path, by: str, *, fleet: bool) -> SpendReply:
            with Client(socket=socket_path, app="report", timeout=30) as client:
                return client.spend("day", by, fleet=fleet)  # type: ignore[arg-type]

        deadline = time.monotonic() + 20  # h2's rows are pushed at its next heartbeat's sync
        while report(h1, "host", fleet=True).total.requests < 3:
            assert time.monotonic() < deadline, report(h1, "host", fleet=True)
            time.sleep(0.1)
        own = {by: [report(path, by, fleet=False) for path in (h1, h2)] for by in REPORT_KEYS}
        for by in REPORT_KEYS:
            expected = guarded_figures(own[by])
            for path in (h1, h2):
                assert guarded_figures([report(path, by, fleet=True)]) == expected, by
        by_host = report(h2, "host", fleet=True)
        assert guarded_figures([by_host]) == {
            "h1": guarded_figures([own["day"][0]])[own["day"][0].rows[0].key],
            "h2": guarded_figures([own["day"][1]])[own["day"][1].rows[0].key],
        }
        sums = guarded_figures(own["app"])
        assert (sums["build"][2], sums["docs"][2]) == (1, 0)  # blocked on h1
        assert sums["build"][3].get("credit_card") == 1
        assert sums["docs"][3].get("email") == 2  # found on h2

        found = {"credit_card": 1, "email": 2}
        for path in (h1, h2):
            as_json = spend_fleet(path, "--fleet", "--json")
            assert as_json.returncode == 0, as_json.stderr
            total = json.loads(as_json.stdout)["total"]
            assert (total["requests"], total["blocked"], total["entities"]) == (3, 1, found)
        as_csv = spend_fleet(h1, "--fleet", "--by", "host", "--csv")
        assert as_csv.returncode == 0, as_csv.stderr
        lines = {line["key"]: line for line in csv.DictReader(as_csv.stdout.splitlines())}
        assert (lines["h1"]["blocked"], lines["h1"]["found_credit_card"]) == ("1", "1")
        assert (lines["h2"]["blocked"], lines["h2"]["found_email"]) == ("0", "2")
        assert (lines["total"]["found_credit_card"], lines["total"]["found_email"]) == ("1", "2")
        as_text = spend_fleet(h2, "--fleet", "--by", "host")
        assert as_text.returncode == 0, as_text.stderr
        assert "fleet: 2 host(s): h1, h2" in as_text.stdout
        table = {line.split()[0]: line for line in as_text.stdout.splitlines() if line.strip()}
        assert table["host"].split()[-2:] == ["blocked", "found"]
        assert table["total"].split()[-5:] == ["1", "credit_card", "1,", "email", "2"]


def test_spend_fleet_keeps_the_configs_own_apart_whatever_clients_named_first() -> None:
    """A host keeps 1,000 (app, model, target) keys a day apart, then counts new ones under
    "(other)": a client naming 1,000 made-up models first folded the config's own app and
    target into "(other)" of ``spend --fleet`` too."""
    declared = '[providers.sim.models."sim-small"]\n[apps.build]\n'
    with Fleet(hosts=1, extra=declared) as fleet:
        (socket_path,) = fleet.sockets()
        with Client(socket=socket_path, app="junk", timeout=30) as client:
            for number in range(1_000):
                with pytest.raises(UnknownModelError):
                    client.chat(f"made-up-{number}", [{"role": "user", "content": "hi"}])
        with Client(socket=socket_path, app="build", timeout=30) as client:
            client.chat(MODEL, [{"role": "user", "content": "hello"}], max_tokens=16)
            deadline = time.monotonic() + 20  # pushed at the host's next sync
            while (by_app := client.spend("day", "app", fleet=True)).total.requests < 1_001:
                assert time.monotonic() < deadline, by_app.total
                time.sleep(0.1)
            by_target = client.spend("day", "target", fleet=True)
    assert {row.key: row.requests for row in by_app.rows} == {"junk": 1_000, "build": 1}
    assert {row.key: row.requests for row in by_target.rows}[MODEL] == 1
