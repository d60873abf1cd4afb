"""A request that stops waiting for its provider is charged what the provider was paid: a
stream whose reader left is charged as a broken one (its prompt's bound and what it
delivered), a call cancelled or timed out while under way the most it can bill (the provider
may finish it). Both were rows of $0 that left the budget untouched, so a client that always
left before the end never spent its budget."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from quotad.client import Client, RequestTimeoutError
from tests.support.daemon import (
    DaemonProcess,
    app_budget_config,
    daemon_config,
    sim_provider_config,
)
from tests.support.polling import wait_until
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
CONFIG = app_budget_config("leaver", 100.0, MODEL, 100.0)
PER_TOKEN = 100.0 / 1_000_000


@pytest.fixture(scope="module")
def daemon(sim: SimProcess) -> Iterator[DaemonProcess]:
    providers = sim_provider_config("sim", sim.base_url)
    with DaemonProcess(daemon_config(providers, CONFIG, cache='mode = "off"')) as process:
        yield process


def cancelled_rows(daemon: DaemonProcess, user: str) -> list[dict[str, Any]]:
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    connection.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM ledger WHERE user = ? AND status = 'cancelled'"
        return [dict(row) for row in connection.execute(query, (user,)).fetchall()]
    finally:
        connection.close()


def the_cancelled_row(daemon: DaemonProcess, user: str) -> dict[str, Any]:
    """The ledger row of ``user``'s one cancelled request, once it is written."""
    wait_until(lambda: len(cancelled_rows(daemon, user)) == 1)
    (row,) = cancelled_rows(daemon, user)
    return row


def spent(client: Client) -> float:
    return next(b.spent_usd for b in client.status().budgets if b.name == "app leaver daily")


def assert_charged_its_tokens(row: dict[str, Any], client: Client, spent_before: float) -> None:
    """The row costs its tokens at the target's price, and the app's budget grew by that."""
    cost = (row["prompt_tokens"] + row["completion_tokens"]) * PER_TOKEN
    assert row["cost_usd"] == pytest.approx(cost)
    assert spent(client) - spent_before == pytest.approx(cost)


def test_a_stream_left_by_its_reader_is_charged_what_it_delivered(
    daemon: DaemonProcess, sim: SimProcess
) -> None:
    messages = [{"role": "user", "content": "tell me a long story"}]
    with sim.controlled(chunk_delay_ms=20), Client(daemon.socket_path, app="leaver") as client:
        before = spent(client)
        delivered = ""
        with client.chat_stream(MODEL, messages, max_tokens=200, user="reader-left") as stream:
            for chunk in stream:
                delivered += chunk.delta
                if len(delivered) >= 20:
                    break  # the block closes the stream: the request is cancelled
        row = the_cancelled_row(daemon, "reader-left")
        assert row["prompt_tokens"] > 0
        assert len(delivered.encode()) <= row["completion_tokens"] < 200
        assert_charged_its_tokens(row, client, before)


def test_a_call_abandoned_while_under_way_is_charged_the_most_it_can_bill(
    daemon: DaemonProcess, sim: SimProcess
) -> None:
    messages = [{"role": "user", "content": "answer slowly"}]
    with sim.controlled(latency_ms=3000), Client(daemon.socket_path, app="leaver") as client:
        before = spent(client)
        with (
            Client(daemon.socket_path, app="leaver", timeout=0.5) as impatient,
            pytest.raises(RequestTimeoutError),  # it cancels the request
        ):
            impatient.chat(MODEL, messages, max_tokens=50, user="timed-out")
        row = the_cancelled_row(daemon, "timed-out")
        assert row["attempts"] == 1
        assert row["completion_tokens"] == 50  # its limit: the provider may have finished
        assert row["prompt_tokens"] >= len("answer slowly")
        assert_charged_its_tokens(row, client, before)
