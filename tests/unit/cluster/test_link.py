"""The link and the fleet gates running against a real Valkey that refuses credentials, is
not there, goes away, and comes back empty; and two hosts telling each other of pauses and
freed capacity through pub/sub."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from quotad.daemon.cluster.gates import Ask, FleetGates
from quotad.daemon.cluster.link import ClusterAuthError, Link, LinkDown
from quotad.daemon.cluster.settings import ClusterSettings
from quotad.daemon.cluster.window import FleetWindow
from tests.support.valkey import (
    ValkeyServer,
    free_port,
    running_valkey,
    server_binary,
    settings_for,
)
from tests.unit.cluster.conftest import joined_link

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(server_binary() is None, reason="no valkey-server or redis-server"),
]


class Events:
    """An event sink that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, kind: str, message: str, level: int) -> None:
        self.seen.append((kind, message, level))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.seen]


def mode(window: FleetWindow) -> str:
    """A window's mode now (a call, so that checks of it are not narrowed away)."""
    return window.mode


async def eventually(check: Callable[[], bool], within_s: float = 15.0) -> None:
    """Wait (bounded) until ``check()`` holds."""
    with anyio.fail_after(within_s):
        while not check():  # noqa: ASYNC110 (a bounded wait on outside state)
            await anyio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    settings: ClusterSettings, events: Events
) -> AsyncIterator[tuple[Link, FleetGates, Any]]:
    """A link and fleet gates started as the daemon starts them, stopped on exit."""
    link = Link(settings, events=events)
    calls: dict[str, list[Any]] = {"capacity": [], "schedule": [], "pause": []}
    gates = FleetGates(
        link,
        on_capacity=lambda: calls["capacity"].append(True),
        schedule=calls["schedule"].append,
        on_pause=lambda target, until: calls["pause"].append((target, until)),
    )
    try:
        await link.open()
        async with anyio.create_task_group() as tasks:
            await tasks.start(link.run)
            await tasks.start(gates.run)
            yield link, gates, calls
            tasks.cancel_scope.cancel()
    finally:
        await link.close()


async def test_a_redis_that_refuses_the_password_is_a_start_up_error() -> None:
    with running_valkey(password="right") as server:
        for password in (None, "wrong"):
            settings = settings_for(server.url, "p", "h1", password=password)
            link = Link(settings)
            try:
                with pytest.raises(ClusterAuthError) as raised:
                    await link.open()
            finally:
                await link.close()
            assert "right" not in str(raised.value)
            assert "credentials" in str(raised.value) or "refused" in str(raised.value)
        link = Link(settings_for(server.url, "p", "h1", password="right"))
        try:
            assert await link.open()
            await link.join()
            assert link.health == "connected"
        finally:
            await link.close()


async def test_a_password_is_never_what_the_settings_show() -> None:
    settings = settings_for("redis://127.0.0.1:1/0", "p", "h1", password="s3cret-value")
    assert "s3cret-value" not in repr(settings)


async def test_unreachable_at_start_serves_degraded_and_closed_with_an_error_event() -> None:
    events = Events()
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0", "p", "h1", timeout_s=0.1)
    link = Link(settings, events=events)
    try:
        assert not await link.open()
    finally:
        await link.close()
    assert events.kinds() == ["cluster_unreachable"]
    assert events.seen[0][2] == logging.ERROR
    gates = FleetGates(link)
    window = gates.window("provider:p", "requests", 60.0, 100, 60.05)
    assert window.mode == "closed"
    assert window.available(link.clock.monotonic()) == 0


async def test_redis_killed_then_back_empty_degrades_then_resyncs_the_hosts_own_entries() -> None:
    binary = server_binary()
    assert binary is not None
    server = ValkeyServer(binary)
    server.start()
    events = Events()
    settings = settings_for(server.url, "p", "h1", timeout_s=0.3, heartbeat_s=0.1)
    try:
        async with running(settings, events) as (link, gates, calls):
            await eventually(lambda: link.health == "connected")
            window = gates.window("provider:p", "requests", 60.0, 100, 60.05)
            assert mode(window) == "fleet"
            gates.short(Ask(((window, 5),)))
            await eventually(lambda: window.held(link.clock.monotonic()) >= 5)
            assert calls["capacity"]
            taken = window.take(5, link.clock.monotonic())
            assert taken is not None
            gates.settle_changed()  # the used-up lease is returned into a bucket
            await eventually(lambda: not window.leases and not window.puts)

            server.kill()
            await eventually(lambda: link.health == "degraded")
            assert "cluster_degraded" in events.kinds()
            assert mode(window) == "share"
            assert window.hosts == 1
            during = window.take(3, link.clock.monotonic())  # share: this host's part
            assert during is not None

            server.start()  # empty: the fleet's state is gone
            await eventually(lambda: link.health == "connected")
            assert "cluster_epoch" in events.kinds()
            assert events.kinds()[-1] == "cluster_connected"
            async with aioredis.Redis.from_url(server.url) as client:
                used = await client.hget(link.keys.window_state(window.name), "used")
            assert int(used or 0) == 8  # the 5 before and the 3 during, pushed back
            assert mode(window) == "fleet"
    finally:
        server.close()


async def test_what_a_host_admits_on_its_share_while_it_resyncs_reaches_the_fleets_log() -> None:
    """Redis back empty: during the re-sync window (nobody borrows) the hosts still serve
    on their share. What they admit then must reach the fleet's log too: else, once the
    window is over, the hosts borrow the whole limit on top of it."""
    binary = server_binary()
    assert binary is not None
    server = ValkeyServer(binary)
    server.start()
    settings = {"timeout_s": 0.5, "heartbeat_s": 0.3, "lease_s": 0.2}
    try:
        async with (
            running(settings_for(server.url, "p", "h1", **settings), Events()) as (link, gates, _),
            running(settings_for(server.url, "p", "h2", **settings), Events()) as (other, _, _),
        ):
            await eventually(lambda: link.usable and other.usable and link.hosts_seen() == 2)
            window = gates.window("provider:p", "requests", 4.0, 20, 4.05)
            server.kill()
            await eventually(lambda: mode(window) == "share")
            await anyio.sleep(max(0.0, window.blind_until - link.clock.monotonic()))
            server.start()  # empty: a re-sync window for both hosts
            await eventually(lambda: link.health == "resyncing")
            await anyio.sleep(0.1)  # its own state pushed back; the window still open
            assert link.health == "resyncing"
            assert window.take(9, link.clock.monotonic()) is not None  # floor(18 / 2)
            await eventually(
                lambda: link.health == "connected" and not window.puts and not window.sending
            )
            async with aioredis.Redis.from_url(server.url) as client:
                used = await client.hget(link.keys.window_state(window.name), "used")
            assert int(used or 0) == 9
    finally:
        server.close()


async def test_a_pause_and_freed_capacity_reach_the_other_host_at_once(
    valkey: ValkeyServer, prefix: str
) -> None:
    events = Events()
    first_settings = settings_for(valkey.url, prefix, "h1", heartbeat_s=5.0)
    second_settings = settings_for(valkey.url, prefix, "h2", heartbeat_s=5.0)
    async with (
        running(first_settings, events) as (first, first_gates, _),
        running(second_settings, events) as (second, second_gates, second_calls),
    ):
        await eventually(lambda: first.usable and second.usable and second.channel.subscribed)
        await first_gates.pause("p/m", 30.0)
        await eventually(lambda: bool(second_calls["pause"]))
        target, until = second_calls["pause"][0]
        assert target == "p/m"
        assert until > second.clock.monotonic() + 25
        assert "p/m" in second_gates.targets
        await first_gates.pause("p/m", 0)  # quotad target reset: lifted everywhere
        await eventually(lambda: len(second_calls["pause"]) == 2)
        assert second_calls["pause"][1] == ("p/m", -math.inf)

        # h1 holds the whole window; h2 waits, and wakes when h1 returns what it did not use
        window_1 = first_gates.window("provider:p", "requests", 60.0, 4, 60.05)
        window_2 = second_gates.window("provider:p", "requests", 60.0, 4, 60.05)
        first_gates.short(Ask(((window_1, 4),)))
        await eventually(lambda: window_1.held(first.clock.monotonic()) == 4)
        second_gates.short(Ask(((window_2, 1),)))
        await eventually(lambda: bool(second_calls["schedule"]))
        woken = len(second_calls["capacity"])
        taken = window_1.take(1, first.clock.monotonic())
        assert taken is not None
        # h1's lease goes idle and is returned (3 unused): h2 is told and asks again
        await eventually(lambda: len(second_calls["capacity"]) > woken)
        second_gates.short(Ask(((window_2, 1),)))
        await eventually(lambda: window_2.held(second.clock.monotonic()) >= 1)


@pytest.mark.parametrize("depth", [1000, 1_000_000])
async def test_a_hosts_load_nested_past_any_depth_counts_as_no_load(
    valkey: ValkeyServer, depth: int
) -> None:
    """Whoever can write the fleet's Redis can put any load beside a host's name. One nested
    past msgspec's depth (1000 arrays: 2000 bytes, under the size a host writes) made it raise
    RecursionError, which the heartbeat did not catch: it ended the link's task. Such a load,
    and one longer than a host writes, is taken as no load, as bad JSON is."""
    prefix = "d" + os.urandom(5).hex()
    async with joined_link(valkey, prefix, "h1") as link:
        deep = b"[" * depth + b"]" * depth
        async with aioredis.Redis.from_url(valkey.url) as client:
            now_us = int(time.time() * 1e6)
            await client.zadd(link.keys.hosts, {"intruder": now_us})
            await client.hset(link.keys.load, "intruder", deep)
        await link.heartbeat()
        assert link.health == "connected"
        seen = {host.name: host.load for host in link.hosts}
        assert seen["intruder"] == {}


@pytest.mark.parametrize("epoch_id", [b"", b"e" * 65, b"e" * 1_000_000], ids=["empty", "65", "1MB"])
async def test_an_epoch_id_no_host_writes_is_a_malformed_heartbeat(
    valkey: ValkeyServer, epoch_id: bytes
) -> None:
    """The link keeps the fleet's epoch id and sends it with every borrow and settle. One that
    no host writes (empty, or longer than 64 characters: a host writes 16) put in Redis by
    whoever can write it was taken as it was, a megabyte sent back on every call; it is a
    malformed reply now, the link's error (the host degrades), said in the error."""
    prefix = "e" + os.urandom(5).hex()
    async with joined_link(valkey, prefix, "h1") as link:
        async with aioredis.Redis.from_url(valkey.url) as client:
            await client.hset(link.keys.epoch, "id", epoch_id)
        with pytest.raises(LinkDown, match=f"epoch id is {len(epoch_id)} long"):
            await link.heartbeat()
        assert link.fleet_epoch is not None
        assert len(link.fleet_epoch) == 16
