"""Leaving degraded mode with Redis's state kept (a network cut healed, DESIGN §10): two
hosts' gates in one process, each with its own link, against a real Valkey made unreachable
by ``CLIENT PAUSE`` (it answers nothing for a while, then everything, its data intact).

The first host back must not borrow while the other still serves on its share, its
admissions not in the fleet's log: its reconnect opens a re-sync window in which nobody
borrows, every host pushes what it admitted, and a host seals (stops admitting on its
share, pushes the rest) a timeout before the window ends."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from quotad.daemon.cluster.gates import FleetGates
from quotad.daemon.cluster.link import LinkDown
from quotad.daemon.config import parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Gates
from tests.support.load import peak_in_window
from tests.support.valkey import running_valkey
from tests.unit.cluster.conftest import joined_link
from tests.unit.cluster.test_link import eventually
from tests.unit.cluster.test_shared_gates import GUARD_S, Host, gates_config

pytestmark = pytest.mark.anyio

LIMIT = 20
WINDOW_S = 1.0
PAUSE_S = 2.5
CONCURRENCY = 4


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return asyncio_only


async def load(host: Host, stop: anyio.Event) -> None:
    """A closed loop of one-request admissions on ``host`` until ``stop``."""
    while not stop.is_set():
        demand = host.gates.demand("p", "p/m", "load", 1)
        try:
            reservation, _ = await host.gates.admit(
                demand, app="load", priority="normal", max_wait_s=1.0
            )
        except RequestError:
            continue
        host.admitted.append(host.link.clock.monotonic())
        host.gates.settle(reservation, 1)


async def test_the_first_host_back_borrows_nothing_until_the_others_pushed_their_share() -> None:
    settings = {"timeout_s": 0.3, "heartbeat_s": 0.2, "lease_s": 0.2, "margin": 0.1}
    prefix = "r" + os.urandom(5).hex()
    async with contextlib.AsyncExitStack() as stack:
        server = stack.enter_context(running_valkey())
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        hosts: list[Host] = []
        for name in ("h0", "h1"):
            link = await stack.enter_async_context(joined_link(server, prefix, name, **settings))
            fleet = FleetGates(link)
            gates = Gates(parse_config(gates_config(limit=LIMIT, window_s=WINDOW_S)))
            gates.use_fleet(fleet)
            await tasks.start(fleet.run)
            tasks.start_soon(gates.run)
            hosts.append(Host(link, fleet, gates))
        first, second = hosts
        await tasks.start(first.link.run)
        # the second host's heartbeat runs in a scope of its own: stopped over the cut, so
        # that it comes back a heartbeat after the first (as a host whose backoff ends later)
        second_beat = anyio.CancelScope()

        async def beat_second() -> None:
            with second_beat:
                await second.link.run()

        tasks.start_soon(beat_second)
        await eventually(lambda: first.link.hosts_seen() == 2 and second.link.hosts_seen() == 2)

        stop = anyio.Event()
        for host in hosts:
            for _ in range(CONCURRENCY):
                tasks.start_soon(load, host, stop)
        await anyio.sleep(2 * WINDOW_S)  # the fleet's window full, both hosts borrowing

        second_beat.cancel()
        async with aioredis.Redis.from_url(server.url) as client:
            await client.client_pause(int(PAUSE_S * 1000), all=True)
        paused_at = first.link.clock.monotonic()
        with contextlib.suppress(LinkDown):
            await second.link.heartbeat()
        await eventually(lambda: all(host.link.health == "degraded" for host in hosts))

        # Redis answers again, its data intact: the first host is back within a heartbeat
        await anyio.sleep(max(0.0, paused_at + PAUSE_S - first.link.clock.monotonic()))
        await eventually(lambda: first.link.health != "degraded")
        assert second.link.health == "degraded"
        await anyio.sleep(first.link.settings.heartbeat_s)
        tasks.start_soon(second.link.run)  # the second one's heartbeat, a heartbeat later
        await eventually(lambda: all(host.link.health == "connected" for host in hosts))
        await anyio.sleep(2 * WINDOW_S)  # borrowing again
        stop.set()

    admitted = sorted(t for host in hosts for t in host.admitted)
    assert all(host.admitted for host in hosts)
    # as the fleet counts them: within any window (+ its guard), at most the limit
    assert peak_in_window(admitted, WINDOW_S + GUARD_S) <= LIMIT
