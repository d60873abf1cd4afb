"""A failed attempt the provider may still bill is charged: one that timed out waiting for
its answer, lost its connection after sending, or got a 2xx answer that could not be read.
The provider had the whole request and nothing said it refused it, so it may run it to the
end and bill it, as it does a call its caller abandons. Before, such attempts cost nothing:
a request that failed over from a provider that hung was charged only what the second
provider answered, and a budget with room for one request's bound let a second attempt go
after the first had used that room."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from quotad.client import BudgetExceededError, Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

PER_TOKEN = 100.0 / 1_000_000  # both targets' price: $100 per million tokens
MAX_TOKENS = 50
MESSAGES = [{"role": "user", "content": "what is the capital of France?"}]
BOUND_TOKENS = 8 + 8 + len("user") + len(MESSAGES[0]["content"]) + MAX_TOKENS
"""The most the request can be billed (quotad.daemon.tokens): reply and message framing, the
role and the content's bytes, and its max_tokens."""


def ledger(daemon: DaemonProcess) -> list[dict[str, Any]]:
    connection = sqlite3.connect(daemon.state_dir / "quotad.db")
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM ledger").fetchall()]
    finally:
        connection.close()


@contextlib.contextmanager
def hanging_then_answering(
    daily_usd: float, fault: str = "hang_rate"
) -> Iterator[tuple[DaemonProcess, SimProcess]]:
    """Group ``g``: first ``slow/m``, whose sim takes every request and never answers (the
    daemon gives up after 0.5 s; ``fault="fail_rate"``: answers every one 500), then ``ok/m``;
    app ``a`` has a daily budget of ``daily_usd``. Yields the daemon and the answering sim."""
    with SimProcess() as slow, SimProcess() as ok:
        slow.control(**{fault: 1.0})
        config = daemon_config(
            sim_provider_config("slow", slow.base_url, extra="timeout_s = 0.5"),
            sim_provider_config("ok", ok.base_url),
            '[models.g]\ntargets = ["slow/m", "ok/m"]\n',
            f"[apps.a]\ndaily_usd = {daily_usd}\n",
            '[prices."slow/m"]\ninput = 100\noutput = 100\n',
            '[prices."ok/m"]\ninput = 100\noutput = 100\n',
            cache='mode = "off"',
        )
        with DaemonProcess(config) as daemon:
            yield daemon, ok


def test_a_request_that_failed_over_from_a_provider_that_hung_is_charged_its_bound_there() -> None:
    with hanging_then_answering(daily_usd=10.0) as (daemon, ok):
        with Client(daemon.socket_path, app="a", timeout=30) as client:
            reply = client.chat("g", MESSAGES, max_tokens=MAX_TOKENS)
            status = client.status()
        assert reply.target == "ok/m"
        assert reply.attempts == 2
        answered = (reply.usage.prompt_tokens + reply.usage.completion_tokens) * PER_TOKEN
        assert reply.cost_usd == pytest.approx(BOUND_TOKENS * PER_TOKEN + answered)
        [row] = ledger(daemon)
        assert row["cost_usd"] == pytest.approx(reply.cost_usd)
        [daily] = [b for b in status.budgets if b.name == "app a daily"]
        assert daily.spent_usd == pytest.approx(reply.cost_usd)
        assert ok.stats()["ok"] == 1


def test_a_budget_with_room_for_one_bound_is_not_spent_twice_by_a_failover() -> None:
    with hanging_then_answering(daily_usd=1.5 * BOUND_TOKENS * PER_TOKEN) as (daemon, ok):
        with (
            Client(daemon.socket_path, app="a", timeout=30) as client,
            pytest.raises(BudgetExceededError),
        ):
            client.chat("g", MESSAGES, max_tokens=MAX_TOKENS)
        assert ok.stats()["ok"] == 0  # the second attempt would have passed the budget
        [row] = ledger(daemon)
        assert row["status"] == "budget_exceeded"
        assert row["cost_usd"] == pytest.approx(BOUND_TOKENS * PER_TOKEN)
        assert row["prompt_tokens"] + row["completion_tokens"] == BOUND_TOKENS


def test_a_request_that_failed_over_from_a_refusal_is_charged_only_its_answer() -> None:
    """A 500 says the call was not made: nothing is charged for it, and the budget holds no
    more for the second attempt (room for one bound is enough)."""
    with hanging_then_answering(1.5 * BOUND_TOKENS * PER_TOKEN, "fail_rate") as (daemon, ok):
        with Client(daemon.socket_path, app="a", timeout=30) as client:
            reply = client.chat("g", MESSAGES, max_tokens=MAX_TOKENS)
        assert (reply.target, reply.attempts) == ("ok/m", 2)
        answered = (reply.usage.prompt_tokens + reply.usage.completion_tokens) * PER_TOKEN
        assert reply.cost_usd == pytest.approx(answered)
        [row] = ledger(daemon)
        assert row["cost_usd"] == pytest.approx(answered)
        assert ok.stats()["ok"] == 1
