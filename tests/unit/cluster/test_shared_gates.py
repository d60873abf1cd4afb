"""The daemon's gates shared by a fleet (DESIGN §10), as the runtime wires them
(:meth:`Gates.use_fleet`), against a real Valkey: two hosts' gates in one process, each with
its own link. Admissions of both together never pass a limit; waiters on a host wake when
the fleet frees capacity (no polling: the borrow's answer, a ``freed`` message); a 429 pause
on one host pauses the target on the other; priorities still order one host's waiters."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.cluster.gates import Ask, FleetGates
from quotad.daemon.cluster.link import Link
from quotad.daemon.cluster.window import FleetWindow
from quotad.daemon.config import parse_config
from quotad.daemon.gates import Gates
from tests.support.load import peak_in_window
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link
from tests.unit.cluster.test_link import eventually
from tests.unit.cluster.test_window import server_time, server_us

pytestmark = pytest.mark.anyio

LIMIT = 12
WINDOW_S = 0.5
GUARD_S = 0.05


def gates_config(limit: int = LIMIT, window_s: float = WINDOW_S) -> dict[str, object]:
    return {
        "http": {"listen": ""},
        "gates": {"guard_s": GUARD_S, "burst": 1.0, "max_wait_s": 20.0},
        "providers": {
            "p": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9",
                "limits": [{"requests": limit, "window_s": window_s}],
            }
        },
        "apps": {"batch": {"priority": "low"}, "urgent": {"priority": "high"}},
    }


@dataclass
class Host:
    link: Link
    fleet: FleetGates
    gates: Gates
    admitted: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def hosts(valkey: ValkeyServer, count: int, **config: object) -> AsyncIterator[list[Host]]:
    prefix = "g" + os.urandom(5).hex()
    async with contextlib.AsyncExitStack() as stack:
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        found = []
        for index in range(count):
            link = await stack.enter_async_context(
                joined_link(valkey, prefix, f"h{index}", lease_s=0.2)
            )
            fleet = FleetGates(link)
            gates = Gates(parse_config(gates_config(**config)))  # type: ignore[arg-type]
            gates.use_fleet(fleet)
            await tasks.start(link.run)
            await tasks.start(fleet.run)
            tasks.start_soon(gates.run)
            found.append(Host(link, fleet, gates))
        # listening to the fleet's channel (pauses, freed)
        await eventually(lambda: all(host.link.channel.subscribed for host in found))
        yield found


@dataclass
class BorrowCalls:
    """The ``borrow.lua`` calls of a run, by what they brought: capacity (at least one
    lease granted), or only refusals (the fleet was full: the ask is retried when the fleet
    says it may fit, or when another host frees some)."""

    granting: int = 0
    refused_only: int = 0


def count_borrow_calls(monkeypatch: pytest.MonkeyPatch) -> BorrowCalls:
    """Count every host's borrow calls from now on (one worker per host: a host has one call
    in flight at a time, so the grants to its windows during a call are that call's)."""
    calls = BorrowCalls()
    grants: dict[int, int] = {}  # by window
    grant, borrow = FleetWindow.grant, FleetGates.borrow

    def counted_grant(window: FleetWindow, entry: str, amount: int, *rest: Any) -> None:
        if amount > 0:
            grants[id(window)] = grants.get(id(window), 0) + 1
        grant(window, entry, amount, *rest)

    def granted(fleet: FleetGates) -> int:
        return sum(grants.get(id(window), 0) for window in fleet.windows.values())

    async def counted_borrow(fleet: FleetGates, batch: list[tuple[tuple[Any, ...], Ask]]) -> None:
        calls_before, granted_before = fleet.borrows, granted(fleet)
        await borrow(fleet, batch)
        if fleet.borrows > calls_before:  # else nothing was short any more: no call
            if granted(fleet) > granted_before:
                calls.granting += 1
            else:
                calls.refused_only += 1

    monkeypatch.setattr(FleetWindow, "grant", counted_grant)
    monkeypatch.setattr(FleetGates, "borrow", counted_borrow)
    return calls


async def request(host: Host, app: str = "load", priority: str = "normal") -> None:
    demand = host.gates.demand("p", "p/m", app, 1)
    reservation, _ = await host.gates.admit(demand, app=app, priority=priority, max_wait_s=20)
    host.admitted.append(host.link.clock.monotonic())
    host.gates.settle(reservation, 1)


async def test_two_hosts_never_pass_one_limit_together_and_every_waiter_wakes(
    valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 5 * LIMIT
    calls = count_borrow_calls(monkeypatch)
    async with hosts(valkey, 2) as fleet:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as load:
                for index in range(total):
                    load.start_soon(request, fleet[index % 2])
    admitted = [t for host in fleet for t in host.admitted]
    assert len(admitted) == total  # every waiter woke and was admitted
    # counted as the fleet counts them: within any window (+ its guard), at most the limit
    assert peak_in_window(sorted(admitted), WINDOW_S) <= LIMIT
    assert all(host.admitted for host in fleet)  # both hosts took part
    # slices, not one call each: a call that brings capacity brings it for the waiters
    # short at the time and a slice ahead (about 4 admissions a call; 1 if each waiter
    # borrowed for itself). How many calls find the fleet full depends on how the two
    # hosts' wake-ups interleave (scheduling delays on a busy machine add some: about 30
    # here, 40 under load): bounded only against a storm of retries.
    assert calls.granting * 2 <= total, calls
    assert calls.refused_only < 2 * total, calls
    # both hosts borrow within half the limit divided by the two of them (the first host
    # joined alone: it divides by the hosts its heartbeat sees, not those at its start)
    assert [w.hosts for host in fleet for w in host.fleet.windows.values()] == [2, 2]


async def test_a_429_pause_on_one_host_pauses_the_target_on_the_other(
    valkey: ValkeyServer,
) -> None:
    async with hosts(valkey, 2) as (first, second):
        first.gates.pause("p/m", 30.0)
        await eventually(lambda: second.gates.paused_until("p/m") is not None)
        until = second.gates.paused_until("p/m")
        assert until is not None
        assert until > second.gates.clock.time() + 20
        first.gates.unpause("p/m")
        await eventually(lambda: second.gates.paused_until("p/m") is None)


async def test_priorities_still_order_one_hosts_waiters(valkey: ValkeyServer) -> None:
    order: list[str] = []

    async def tracked(host: Host, app: str, priority: str) -> None:
        await request(host, app, priority)
        order.append(app)

    async with hosts(valkey, 1, limit=2, window_s=1.0) as (host,):
        with anyio.fail_after(30):
            await request(host)
            await request(host)  # the window is full now
            async with anyio.create_task_group() as load:
                for _ in range(2):
                    load.start_soon(tracked, host, "batch", "low")
                await anyio.sleep(0.05)
                for _ in range(2):
                    load.start_soon(tracked, host, "urgent", "high")
    assert order == ["urgent", "urgent", "batch", "batch"]


def test_a_waiter_on_a_share_wakes_when_it_has_room_again() -> None:
    """Redis away (``share``): the gates' timer wakes a waiter when this host's share has
    room again; no borrow, no message can."""
    clock = VirtualClock()
    gates = Gates(parse_config(gates_config(limit=30, window_s=2.0)), clock)
    window = next(iter(gates._gates["provider:p"].windows))
    fleet = FleetWindow("w", 30, 2.05, 1.0, host="h1", time=server_time(clock))
    fleet.set_mode("share", 3, clock.monotonic())
    clock.advance(fleet.blind_until - clock.monotonic())  # nothing of before counts now
    window.fleet = fleet
    demand = gates.demand("p", "p/m", "load", 1)
    for _ in range(9):  # floor(27 / 3)
        reservation = gates.admit_now(demand)
        assert reservation is not None
    assert gates.admit_now(demand) is None
    now = clock.monotonic()
    assert window.free_at(1, now) == pytest.approx(now + 2.05, abs=0.01)


async def test_waiters_borrowing_together_take_one_slice_ahead_not_one_each(
    valkey: ValkeyServer,
) -> None:
    """Several waiters short on one window in one borrow each get what they need, and the
    window one slice ahead (its recent rate times the lease), not a slice ahead per waiter."""
    async with joined_link(valkey, "a" + os.urandom(5).hex(), "h1") as link:
        fleet = FleetGates(link)
        window = fleet.window("provider:p", "requests", 60.0, 1000, 60.05)
        await fleet.borrow([(("first",), Ask(((window, 50),)))])
        now = link.clock.monotonic()
        assert window.take(50, now) is not None  # 50 admitted: a recent rate of ~50/s
        ahead = window.want(1, now) - 1
        assert ahead >= 40
        waiters = [((f"w{index}",), Ask(((window, 1),))) for index in range(4)]
        await fleet.borrow(waiters)
        held = window.held(link.clock.monotonic())
        assert 4 <= held <= 4 + ahead  # before: 4 * (1 + ahead)


def test_a_request_handed_off_late_is_counted_by_the_fleet_from_its_hand_off() -> None:
    """Gates.sent (the broker's hand-off) retimes the fleet's count too: a request admitted
    from a lease that closed before its hand-off is counted a span from the hand-off."""
    clock = VirtualClock()
    gates = Gates(parse_config(gates_config(limit=30, window_s=2.0)), clock)
    window = next(iter(gates._gates["provider:p"].windows))
    fleet = FleetWindow("w", 30, window.span, 1.0, host="h1", time=server_time(clock))
    fleet.set_mode("fleet", 1, clock.monotonic())
    window.fleet = fleet
    now = clock.monotonic()
    fleet.grant("e1", 1, now, server_us(now))
    reservation = gates.admit_now(gates.demand("p", "p/m", "load", 1))
    assert reservation is not None
    fleet.close_due(now)  # used up: closed into a bucket a span after now
    first = max(expiry for _, amount, expiry in fleet.take_puts() if amount == 1)
    clock.advance(0.5)
    gates.sent(reservation)
    moved = [(amount, expiry) for _, amount, expiry in fleet.take_puts() if amount == 1]
    assert moved
    assert moved[0][1] >= first + 400_000  # counted from the hand-off, half a second later


async def test_a_host_joining_shrinks_the_slice_each_host_borrows_without_a_health_change(
    valkey: ValkeyServer,
) -> None:
    """The hosts a window divides its slice by follow the heartbeat: a second and a third
    host joining while the first stays connected shrink what it borrows ahead at once
    (``floor(limit x 0.5 / hosts)``), not at its next change of health."""
    prefix = "j" + os.urandom(5).hex()
    limit = 1000
    async with contextlib.AsyncExitStack() as stack:
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        first = await stack.enter_async_context(joined_link(valkey, prefix, "h1"))
        changes: list[str] = []
        first.on_health(changes.append)
        await tasks.start(first.run)
        fleet = FleetGates(first)
        window = fleet.window("provider:p", "requests", 60.0, limit, 60.05)
        await fleet.borrow([(("burst",), Ask(((window, 600),)))])
        now = first.clock.monotonic()
        assert window.take(600, now) is not None  # a recent rate of ~600/s: asks for the cap
        assert window.want(1, now) == limit // 2  # alone

        offered: list[int] = []
        for host in ("h2", "h3"):
            joined = await stack.enter_async_context(joined_link(valkey, prefix, host))
            await tasks.start(joined.run)
            await eventually(lambda: first.hosts_seen() == len(offered) + 2)
            assert window.hosts == len(offered) + 2  # at the heartbeat that saw it
            offered.append(window.want(1, now))
        assert offered == [limit // 2 // 2, math.floor(limit * 0.5 / 3)]
        assert changes == []  # no change of health on the first host
        assert first.health == "connected"


async def test_a_lease_used_up_is_returned_at_once_after_the_flusher_has_woken_before(
    valkey: ValkeyServer,
) -> None:
    """A window wakes the flusher when an admission uses a lease up, so the lease is closed
    at once rather than at its deadline. The flusher replaces its wake-up event each time it
    wakes; the window must reach the current one, not the one it was made with (it used to
    set that stale event: the lease stayed open until its deadline, lease_s later)."""
    async with (
        joined_link(valkey, "u" + os.urandom(5).hex(), "h1", lease_s=30.0) as link,
        anyio.create_task_group() as tasks,
    ):
        fleet = FleetGates(link)
        window = fleet.window("provider:p", "requests", 60.0, 1000, 60.05)
        window.on_low = None  # no borrowing ahead, whose grant would wake the flusher too
        await tasks.start(fleet.run)
        await fleet.borrow([(("first",), Ask(((window, 5),)))])  # wakes the flusher once
        await anyio.sleep(0.05)  # it has woken (and replaced its event) by now
        lease = window.leases[0]
        assert window.take(lease.granted - lease.used, link.clock.monotonic()) is not None
        await eventually(lambda: lease not in window.leases, within_s=5.0)
        tasks.cancel_scope.cancel()
