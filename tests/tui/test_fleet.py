"""``quotad top`` shows the fleet (``[cluster]``) in its connection bar: the host, the health
of Redis, degraded mode and why, and the hosts seen; one host shows nothing of it."""

from __future__ import annotations

import pytest

from quotad.protocol.messages import BudgetStatus, ClusterStatus, Snapshot
from quotad.tui.feed import FeedEvent
from quotad.tui.screens.spend import budget_lines
from tests.tui.pilots import RecordingApp, connection_line, wait_until
from tests.tui.scripted import ScriptedFeed, busy_day

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # Textual runs on asyncio
]
SIZE = (220, 36)


def with_cluster(events: list[FeedEvent], cluster: ClusterStatus) -> list[FeedEvent]:
    for event in events:
        if isinstance(event, Snapshot) and event.status is not None:
            event.status.cluster = cluster
    return events


async def test_a_degraded_fleet_shows_in_the_connection_bar() -> None:
    cluster = ClusterStatus(
        host="h2",
        health="degraded",
        mode="share",
        reason="Redis unreachable: Connection refused",
        hosts_seen=3,
    )
    feed = ScriptedFeed(with_cluster(busy_day(2), cluster))
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await wait_until(pilot, lambda: "fleet h2" in connection_line(app))
        line = connection_line(app)
        assert "redis degraded (share: Redis unreachable: Connection refused)" in line
        assert "hosts 3" in line


async def test_one_host_shows_no_fleet() -> None:
    feed = ScriptedFeed(busy_day(2))
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await wait_until(pilot, lambda: "req/s" in connection_line(app))
        assert "fleet" not in connection_line(app)


async def test_the_budgets_widget_says_whose_figures_in_a_fleet() -> None:
    now = 1_796_000_000.0
    budgets = [
        BudgetStatus(name="global daily", limit_usd=10.0, spent_usd=9.0, reserved_usd=0.3,
                     fleet=True, as_of=now - 2.0),
        BudgetStatus(name="app x daily", scope="x", limit_usd=5.0, spent_usd=1.0,
                     reserved_usd=0.1),
    ]  # fmt: skip
    lines = budget_lines(budgets, fleet=True, now=now).plain.splitlines()
    assert "$9.00 spent + $0.30 held of $10.00" in lines[0]
    assert lines[0].endswith("fleet 2s ago")
    assert "+ $0.10 reserved" in lines[1]
    assert lines[1].endswith("this host only")
    one_host = budget_lines(budgets[1:]).plain
    assert "this host" not in one_host
    assert "fleet" not in one_host
