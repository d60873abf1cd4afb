"""The store through a real daemon: cache hits and stream replay, cache modes, a ledger row for
every outcome, budget alerts in status and snapshots, and the ``spend``, ``cache`` and ``keys``
commands."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quotad.client import BadRequestError, BudgetExceededError, Client, UnknownModelError
from tests.support.daemon import DaemonProcess, daemon_config, run_quotad, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
BUDGETS = """\
[budgets]
daily_usd = 50.0
alert_at = 0.5
[apps.capped]
daily_usd = 0.00002
"""
_prompts = itertools.count()


def prompt(text: str = "") -> list[dict[str, str]]:
    """A prompt no other test sends (the module's daemon keeps one cache)."""
    return [{"role": "user", "content": f"{text} #{next(_prompts)} tell me about caches"}]


@pytest.fixture(scope="module")
def daemon(sim: SimProcess) -> Iterator[DaemonProcess]:
    config = daemon_config(BUDGETS, sim_provider_config("sim", sim.base_url), daemon="drain_s = 5")
    with DaemonProcess(config) as d:
        yield d


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(socket=daemon.socket_path, app="store-tests") as connected:
        yield connected


def ledger(daemon: DaemonProcess, where: str = "1", parameters: tuple[Any, ...] = ()) -> list[Any]:
    """Ledger rows as dicts, read from the daemon's live database file."""
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute(f"SELECT * FROM ledger WHERE {where}", parameters).fetchall()
        return [dict(row) for row in rows]
    finally:
        connection.close()


def quotad(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_quotad(*args, env={"QUOTAD_SOCKET": str(daemon.socket_path)})


# --------------------------------------------------------------------------- the cache


def test_a_hit_costs_nothing_saves_what_the_call_cost_and_is_a_ledger_row(
    daemon: DaemonProcess, client: Client, sim: SimProcess
) -> None:
    messages = prompt("hit")
    calls_before = sim.stats()["requests"]
    first = client.chat(MODEL, messages, max_tokens=12)
    second = client.chat(MODEL, messages, max_tokens=12, tags=["again"])
    assert sim.stats()["requests"] == calls_before + 1  # the hit never reached the provider
    assert not first.cached
    assert first.cost_usd > 0
    assert first.saved_usd == 0
    assert second.cached
    assert second.cost_usd == 0
    assert second.saved_usd == pytest.approx(first.cost_usd)
    assert (second.content, second.target, second.usage) == (
        first.content,
        first.target,
        first.usage,
    )
    rows = {row["request_id"]: row for row in ledger(daemon, "app = 'store-tests'")}
    miss, hit = rows[first.request_id], rows[second.request_id]
    assert (miss["cached"], miss["status"], miss["cost_usd"]) == (0, "ok", first.cost_usd)
    assert (hit["cached"], hit["cost_usd"]) == (1, 0.0)
    assert hit["saved_usd"] == pytest.approx(first.cost_usd)
    assert hit["tags"] == '["again"]'
    assert hit["pid"] == os.getpid()
    assert hit["uid"] == os.getuid()


def test_streams_are_cached_and_replayed_as_chunks(client: Client, sim: SimProcess) -> None:
    messages = prompt("stream")
    live = client.chat_stream(MODEL, messages, max_tokens=12)
    live_chunks = [chunk.delta for chunk in live]
    calls = sim.stats()["requests"]
    replay = client.chat_stream(MODEL, messages, max_tokens=12)
    replay_chunks = [chunk.delta for chunk in replay]
    assert sim.stats()["requests"] == calls
    assert len(live_chunks) > 1
    assert replay_chunks == live_chunks
    assert live.end is not None
    assert replay.end is not None
    assert not live.end.cached
    assert replay.end.cached
    assert replay.end.content == live.end.content
    assert replay.end.cost_usd == 0
    assert replay.end.saved_usd == pytest.approx(live.end.cost_usd)
    plain = client.chat(MODEL, messages, max_tokens=12)  # a plain request is cached apart
    assert not plain.cached


def test_cache_modes_through_the_client(client: Client, sim: SimProcess) -> None:
    messages = prompt("modes")
    assert not client.chat(MODEL, messages, max_tokens=8, cache="bypass").cached
    assert not client.chat(MODEL, messages, max_tokens=8, cache="bypass").cached  # not stored
    calls = sim.stats()["requests"]
    with pytest.raises(BadRequestError) as miss:
        client.chat(MODEL, messages, max_tokens=8, cache="only")
    assert miss.value.details == {"cache": "miss"}
    assert sim.stats()["requests"] == calls  # only never calls a provider
    refreshed = client.chat(MODEL, messages, max_tokens=8, cache="refresh")
    assert not refreshed.cached
    again = client.chat(MODEL, messages, max_tokens=8, cache="only")
    assert again.cached
    assert again.request_id != refreshed.request_id
    assert client.chat(MODEL, messages, max_tokens=8, cache="refresh").cached is False


def test_embeddings_are_cached_too(client: Client) -> None:
    texts = [f"embed me {next(_prompts)}", "and me"]
    first = client.embed("sim/text-embedding-3-small", texts, dimensions=4)
    second = client.embed("sim/text-embedding-3-small", texts, dimensions=4)
    assert not first.cached
    assert second.cached
    assert second.embeddings == first.embeddings
    assert second.cost_usd == 0
    assert second.saved_usd == pytest.approx(first.cost_usd)


# --------------------------------------------------------------------------- ledger and budgets


def refusal(call: Callable[[], object]) -> BudgetExceededError:
    """The budget_exceeded error that ``call`` runs into within 20 calls."""
    for _ in range(20):
        try:
            call()
        except BudgetExceededError as error:
            return error
    raise AssertionError("the budget never refused a request")


def test_every_outcome_is_a_ledger_row(daemon: DaemonProcess, client: Client) -> None:
    with pytest.raises(UnknownModelError):
        client.chat("no-such-model", prompt(), max_tokens=8)
    rows = ledger(daemon, "model = 'no-such-model'")
    assert [(row["status"], row["target"], row["cost_usd"]) for row in rows] == [
        ("unknown_model", "", 0.0)
    ]


def test_a_budget_alert_and_a_refusal_reach_status_snapshots_and_the_ledger(
    daemon: DaemonProcess,
) -> None:
    with Client(socket=daemon.socket_path, app="capped") as capped:
        answered = prompt("capped")
        first = capped.chat(MODEL, answered, max_tokens=16)
        assert first.cost_usd > 0
        error = refusal(lambda: capped.chat(MODEL, prompt("capped"), max_tokens=16))
        # a cache-only request can cost nothing, so a spent budget never refuses it
        assert capped.chat(MODEL, answered, max_tokens=16, cache="only").cached
        assert error.retry_after_s is None
        assert error.details["budget"] == "app capped daily"
        assert error.details["limit_usd"] == 0.00002
        assert "app capped daily" in str(error)
        assert "limit $0.000020" in str(error)
        status = capped.status()
        alerts = [event for event in status.events if event.kind == "budget_alert"]
        assert any("app capped daily" in event.message for event in alerts)
        budget = next(b for b in status.budgets if b.name == "app capped daily")
        assert budget.alert
        assert budget.reserved_usd == 0
        assert budget.spent_usd <= budget.limit_usd
        with capped.subscribe(interval_s=0.1) as snapshots:
            snapshot = next(iter(snapshots))
        assert any(event.kind == "budget_alert" for event in snapshot.status.events)
    statuses = {row["status"] for row in ledger(daemon, "app = 'capped'")}
    assert statuses == {"ok", "budget_exceeded"}


def test_status_flags_unpriced_targets(client: Client) -> None:
    client.chat("sim/house-model", prompt(), max_tokens=4)
    client.chat(MODEL, prompt(), max_tokens=4)  # a target is listed once it has been used
    targets = {target.name: target for target in client.status().targets}
    assert targets["sim/house-model"].unpriced
    assert not targets[MODEL].unpriced


# --------------------------------------------------------------------------- commands


def test_spend_json_and_csv(daemon: DaemonProcess, client: Client) -> None:
    client.chat(MODEL, prompt("spend"), max_tokens=8)
    result = quotad(daemon, "spend", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= {"total", "rows", "budgets", "forecast_month_usd", "period", "by"}
    assert report["total"]["requests"] == sum(row["requests"] for row in report["rows"])
    assert report["total"]["cost_usd"] > 0
    assert "store-tests" in {row["key"] for row in report["rows"]}
    assert {b["name"] for b in report["budgets"]} >= {"global daily", "app capped daily"}
    result = quotad(daemon, "spend", "--period", "month", "--by", "target", "--csv")
    assert result.returncode == 0, result.stderr
    lines = list(csv.DictReader(io.StringIO(result.stdout)))
    assert lines[-1]["key"] == "total"
    assert MODEL in {line["key"] for line in lines}
    text = quotad(daemon, "spend", "--period", "week", "--by", "day")
    assert text.returncode == 0
    assert "forecast for this month" in text.stdout


def test_cache_stats_clear_and_warm(daemon: DaemonProcess, client: Client) -> None:
    asked = prompt("stats")  # a miss then a hit of its own: other tests may run elsewhere
    assert [client.chat(MODEL, asked, max_tokens=5).cached for _ in range(2)] == [False, True]
    stats = json.loads(quotad(daemon, "cache", "stats", "--json").stdout)
    assert stats["mode"] == "on"
    assert stats["hits"] >= 1
    assert stats["entries"] >= 1
    directory = Path(tempfile.mkdtemp(prefix="qwarm", dir="/tmp"))
    try:
        messages = prompt("warm")
        request: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 5}
        good = {
            "request": request,
            "response": {"content": "from the recording", "usage": {"prompt_tokens": 9}},
        }
        bad = directory / "bad.jsonl"
        bad.write_text(json.dumps(good) + "\n\n" + '{"request": {"model": 3}}\n' + "not json\n")
        result = quotad(daemon, "cache", "warm", str(bad))
        assert result.returncode == 1
        assert f"{bad}:3:" in result.stderr
        assert f"{bad}:4:" in result.stderr
        with pytest.raises(BadRequestError):  # a bad file stores nothing
            client.chat(MODEL, messages, max_tokens=5, cache="only")
        unknown = dict(good, request={**request, "model": "nowhere"})
        mixed = directory / "mixed.jsonl"
        mixed.write_text(json.dumps(good) + "\n" + json.dumps(unknown) + "\n")
        result = quotad(daemon, "cache", "warm", str(mixed))
        assert result.returncode == 1
        assert f"{mixed}:2: unknown model 'nowhere'" in result.stderr
        assert "stored 1 cache entries" in result.stdout
        hit = client.chat(MODEL, messages, max_tokens=5, cache="only")
        assert hit.content == "from the recording"
        assert hit.target == MODEL
        assert hit.saved_usd > 0  # priced at the model's target
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    assert quotad(daemon, "cache", "clear", "--older-than", "1d").stdout.startswith("removed 0")
    assert quotad(daemon, "cache", "clear", "--older-than", "soon").returncode == 2
    assert quotad(daemon, "cache", "clear").returncode == 0
    assert json.loads(quotad(daemon, "cache", "stats", "--json").stdout)["entries"] == 0


def test_keys_create_list_revoke_and_audit(daemon: DaemonProcess) -> None:
    created = quotad(daemon, "keys", "create", "--app", "web", "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["key"].startswith("qk-")
    assert record["app"] == "web"
    listed = json.loads(quotad(daemon, "keys", "list", "--json").stdout)
    mine = next(key for key in listed if key["id"] == record["id"])
    assert "key" not in mine
    assert mine["prefix"] == record["key"][:10]
    assert mine["revoked"] is None
    assert record["id"] in quotad(daemon, "keys", "list").stdout
    revoked = quotad(daemon, "keys", "revoke", record["id"])
    assert revoked.returncode == 0
    assert record["id"] in revoked.stdout
    again = quotad(daemon, "keys", "revoke", record["id"])
    assert again.returncode == 1
    assert "no live key" in again.stderr
    with sqlite3.connect(daemon.state_dir / "quotad.db") as connection:
        audit = connection.execute(
            "SELECT action, target, caller_uid FROM audit WHERE target = ?", (record["id"],)
        ).fetchall()
    uid = os.getuid()
    assert audit == [("key_create", record["id"], uid), ("key_revoke", record["id"], uid)]


def test_a_key_for_an_app_name_too_long_says_how_long_it_may_be(daemon: DaemonProcess) -> None:
    """It said "expected a non-empty string" of a name of 300 characters."""
    refused = quotad(daemon, "keys", "create", "--app", "a" * 257)
    assert refused.returncode == 1
    assert "args.app: expected a string of 1 to 256 characters" in refused.stderr
    assert quotad(daemon, "keys", "create", "--app", "a" * 256).returncode == 0


def test_commands_exit_3_when_no_daemon_answers() -> None:
    directory = tempfile.mkdtemp(prefix="qnone", dir="/tmp")
    try:
        for args in (["spend"], ["cache", "stats"], ["keys", "list"]):
            result = run_quotad(*args, env={"QUOTAD_SOCKET": f"{directory}/none.sock"})
            assert result.returncode == 3, result.stderr
    finally:
        os.rmdir(directory)
