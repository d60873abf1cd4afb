"""The runtime's side of a fleet (:class:`~quotad.daemon.cluster.fleet.Cluster`) against a
real Valkey: joining, what status says of the fleet (hosts seen, their load, mode), a host
with another ``daemon.timezone`` (an event and a problem: fleet budgets' days would not line
up), and a Redis that refuses the password as a start-up error."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import anyio
import pytest

from quotad.daemon.clock import SYSTEM_CLOCK
from quotad.daemon.cluster.fleet import Cluster
from quotad.daemon.cluster.settings import ClusterStartError
from quotad.daemon.config import ClusterConfig
from quotad.daemon.events import EventLog
from tests.support.valkey import ValkeyServer, free_port, running_valkey, settings_for
from tests.unit.cluster.test_link import eventually

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def member(
    valkey: ValkeyServer, prefix: str, host: str, timezone: str
) -> AsyncIterator[Cluster]:
    cluster = Cluster(
        ClusterConfig(redis_url=valkey.url),
        events=EventLog(SYSTEM_CLOCK),
        timezone=timezone,
        settings=settings_for(valkey.url, prefix, host),
    )
    cluster.report_load(lambda: {"in_flight": 7, "queued": 2})
    try:
        await cluster.open()
        async with anyio.create_task_group() as tasks:
            await tasks.start(cluster.run)
            yield cluster
            tasks.cancel_scope.cancel()
    finally:
        await cluster.close()


async def test_two_members_see_each_other_and_a_timezone_that_differs(
    valkey: ValkeyServer, prefix: str
) -> None:
    async with (
        member(valkey, prefix, "h1", "UTC") as first,
        member(valkey, prefix, "h2", "Europe/Paris") as second,
    ):
        await eventually(lambda: first.status().hosts_seen == 2)
        await eventually(lambda: len(first.link.hosts) == 2)
        status = first.status()
        assert (status.health, status.mode, status.host) == ("connected", "fleet", "h1")
        other = next(h for h in status.hosts if h.name == "h2")
        assert (other.in_flight, other.queued, other.timezone) == (7, 2, "Europe/Paris")
        problems = first.problems()
        assert problems == ["cluster: other daemon.timezone on h2 (Europe/Paris)"]
        assert [e.kind for e in first.events.recent()].count("cluster_timezone") == 1
        first.problems()  # asked again: still one event
        assert [e.kind for e in first.events.recent()].count("cluster_timezone") == 1
        assert second.problems() == ["cluster: other daemon.timezone on h1 (UTC)"]


async def test_a_redis_refusing_the_password_is_a_start_up_error() -> None:
    with running_valkey(password="right") as valkey:
        settings = settings_for(valkey.url, "p", "h1")
        cluster = Cluster(
            ClusterConfig(redis_url=valkey.url),
            events=EventLog(SYSTEM_CLOCK),
            timezone="UTC",
            settings=dataclasses.replace(settings, password="wrong"),
        )
        try:
            with pytest.raises(ClusterStartError, match="refused this host's credentials"):
                await cluster.open()
        finally:
            await cluster.close()


async def test_an_unreachable_redis_at_start_serves_degraded_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    cluster = Cluster(
        ClusterConfig(redis_url=url),
        events=EventLog(SYSTEM_CLOCK),
        timezone="UTC",
        settings=settings_for(url, "p", "h1", timeout_s=0.1),
    )
    try:
        with caplog.at_level(logging.ERROR):
            await cluster.open()
        status = cluster.status()
        assert (status.health, status.mode) == ("connecting", "closed")
        assert cluster.problems()[0].startswith("cluster: connecting for ")
        assert [e.kind for e in cluster.events.recent()] == ["cluster_unreachable"]
    finally:
        await cluster.close()
