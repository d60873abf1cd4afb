"""``quotad top`` shows the fleet (``[cluster]``) in its connection bar: the host, the health
of Redis, degraded mode and why, and the hosts seen; one host shows nothing of it."""

from __future__ import annotations

import pytest

from quotad.protocol.messages import ClusterStatus, Snapshot
from quotad.tui.feed import FeedEvent
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
