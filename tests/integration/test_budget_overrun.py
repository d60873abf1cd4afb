"""A provider that bills more than a request reserved (it reports more completion tokens than
the ``max_tokens`` it was sent) takes a budget past its limit: quotad records what it billed,
says so in a ``budget_overrun`` event naming the budget, the request's cost and its reservation,
and refuses the app's next request."""

from __future__ import annotations

import json

import pytest

from quotad.client import BudgetExceededError, Client
from tests.support.daemon import (
    DaemonProcess,
    app_budget_config,
    daemon_config,
    sim_provider_config,
)
from tests.support.raw_http import RawHTTPServer, answer

BILLED = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1_000_000, "total_tokens": 1_000_009},
}
CONFIG = app_budget_config("greedy", 0.01, "raw/m", 1.0)


def test_a_cost_past_the_reservation_is_an_event_and_the_budget_then_refuses() -> None:
    body = json.dumps(BILLED).encode()
    handler = answer(200, body, {"content-type": "application/json"}, reason="OK")
    with RawHTTPServer(handler) as server:
        config = daemon_config(sim_provider_config("raw", server.base_url), CONFIG)
        with DaemonProcess(config) as daemon, Client(daemon.socket_path, app="greedy") as client:
            messages = [{"role": "user", "content": "hi"}]
            reply = client.chat("raw/m", messages, max_tokens=10, cache="bypass")
            assert reply.usage.completion_tokens == 1_000_000  # recorded as billed
            assert reply.cost_usd == pytest.approx(1.000009)
            status = client.status()
            budget = next(b for b in status.budgets if b.name == "app greedy daily")
            assert budget.spent_usd == pytest.approx(1.000009)
            overruns = [event for event in status.events if event.kind == "budget_overrun"]
            assert len(overruns) == 1, status.events
            message = overruns[0].message
            assert "'app greedy daily'" in message
            assert "as a call to raw/m cost $1.00 where it reserved $0.000" in message
            with pytest.raises(BudgetExceededError):
                client.chat("raw/m", messages, max_tokens=10, cache="bypass")
            assert server.requests == 1
