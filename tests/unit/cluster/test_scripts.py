"""The fleet's Lua scripts against a real Valkey, one decision at a time: what each admits,
refuses, frees and publishes, with the server's own clock (``TIME``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from quotad.daemon.cluster.link import Link
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link

pytestmark = pytest.mark.anyio

LEASE_US = 1_000_000
LONG_SPAN_US = 60_000_000


@dataclass
class Item:
    window: int
    need: int
    want: int
    entry: str


@dataclass
class AskArgs:
    items: list[Item]
    waiter: bool = True
    pause: int = 0


@dataclass
class Window:
    name: str
    limit: int
    span_us: int = LONG_SPAN_US


@dataclass
class Borrowed:
    status: str
    now: int
    paused: int = 0
    used: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    raw: Any = None


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.asynccontextmanager
async def subscribed(url: str, channel: str) -> AsyncIterator[Any]:
    """A pub/sub connection subscribed to ``channel``, closed with its client on exit."""
    async with (
        aioredis.Redis.from_url(url) as client,
        client.pubsub(ignore_subscribe_messages=True) as pubsub,
    ):
        await pubsub.subscribe(channel)
        yield pubsub


async def next_message(pubsub: Any, within_s: float) -> str | None:
    """The next published message's data within ``within_s`` (subscribe confirmations
    skipped), or None."""
    with anyio.move_on_after(within_s):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=within_s)
            if message is not None and message.get("type") == "message":
                return text(message["data"])
    return None


async def borrow(
    link: Link,
    windows: list[Window],
    asks: list[AskArgs],
    pauses: tuple[str, ...] = (),
    epoch: str | None = None,
    host: str | None = None,
) -> Borrowed:
    keys = [link.keys.epoch]
    args: list[Any] = [
        link.epoch if epoch is None else epoch,
        host or link.host,
        LEASE_US,
        1_000_000,
        len(windows),
        len(pauses),
    ]
    for window in windows:
        keys += [link.keys.window_log(window.name), link.keys.window_state(window.name)]
        args += [window.span_us, window.limit, 120_000]
    keys += [link.keys.pause(target) for target in pauses]
    args.append(len(asks))
    for ask in asks:
        args += [int(ask.waiter), ask.pause, len(ask.items)]
        for item in ask.items:
            args += [item.window, item.need, item.want, item.entry]
    reply = await link.call("borrow", keys, args)
    value = reply.value
    status = text(value[0])
    if status != "ok":
        return Borrowed(status, int(value[1]), raw=value)
    return Borrowed(
        status,
        int(value[1]),
        int(value[2]),
        [int(u) for u in value[3]],
        [[int(r[0]), [int(g) for g in r[1]] if int(r[0]) == 1 else int(r[1])] for r in value[4]],
    )


async def settle(
    link: Link, puts: dict[str, list[tuple[str, int, int]]]
) -> tuple[int, list[int], list[int]]:
    keys: list[str] = []
    args: list[Any] = [link.keys.channel, len(puts)]
    for name, window_puts in puts.items():
        keys += [link.keys.window_log(name), link.keys.window_state(name)]
        args += [120_000, len(window_puts)]
        for put in window_puts:
            args += list(put)
    reply = await link.call("settle", keys, args)
    value = reply.value
    return int(value[0]), [int(u) for u in value[1]], [int(f) for f in value[2]]


async def score(link: Link, name: str, entry: str) -> float | None:
    async with aioredis.Redis.from_url(link.settings.redis_url) as client:
        result: float | None = await client.zscore(link.keys.window_log(name), entry)
        return result


@pytest.fixture
async def link(valkey: ValkeyServer, prefix: str) -> AsyncIterator[Link]:
    """A link joined to this test's fleet, as host ``h1``."""
    async with joined_link(valkey, prefix) as joined:
        yield joined


# ---------------------------------------------------------------------------- borrow


async def test_an_ask_is_all_or_nothing_across_its_windows(link: Link) -> None:
    windows = [Window("rpm", 5), Window("tpm", 3)]
    first = await borrow(link, windows, [AskArgs([Item(1, 2, 2, "a"), Item(2, 2, 2, "b")])])
    assert first.results == [[1, [2, 2]]]
    second = await borrow(link, windows, [AskArgs([Item(1, 2, 2, "c"), Item(2, 2, 2, "d")])])
    assert second.results[0][0] == 0  # tpm has 1 left: nothing taken on rpm either
    assert second.used == [2, 2]
    # it may fit when the entry "b" leaves tpm: its expiry is the grant + lease + span
    assert second.results[0][1] == await score(link, "tpm", "b")
    assert second.results[0][1] == first.now + LEASE_US + LONG_SPAN_US


async def test_a_grant_is_between_need_and_want_within_what_is_free(link: Link) -> None:
    window = [Window("w", 10)]
    got = []
    for entry in ("a", "b", "c"):
        reply = await borrow(link, window, [AskArgs([Item(1, 2, 6, entry)])])
        got.append(reply.results[0])
    assert got[0] == [1, [6]]
    assert got[1] == [1, [4]]
    assert got[2][0] == 0
    never = await borrow(link, window, [AskArgs([Item(1, 11, 11, "d")])])
    assert never.results == [[0, -1]]  # more than the limit: never


async def test_a_refused_ask_blocks_its_windows_for_the_asks_after_it(link: Link) -> None:
    windows = [Window("w", 4)]
    await borrow(link, windows, [AskArgs([Item(1, 3, 3, "a")])])
    reply = await borrow(
        link, windows, [AskArgs([Item(1, 2, 2, "big")]), AskArgs([Item(1, 1, 1, "small")])]
    )
    assert [r[0] for r in reply.results] == [0, 0]  # "small" fits, but may not overtake
    assert reply.used == [3]


async def test_capacity_frees_at_the_server_time_the_reply_names(link: Link) -> None:
    """The sliding guarantee on the server's clock: refused until ``when``, admitted after."""
    span_us = 300_000
    window = [Window("short", 2, span_us)]
    first = await borrow(link, window, [AskArgs([Item(1, 2, 2, "a")])])
    assert first.results == [[1, [2]]]
    refused = await borrow(link, window, [AskArgs([Item(1, 1, 1, "b")])])
    when = refused.results[0][1]
    assert when == first.now + LEASE_US + span_us
    await anyio.sleep(max(0.0, link.time.to_local(when) - link.clock.monotonic()) + 0.01)
    later = await borrow(link, window, [AskArgs([Item(1, 2, 2, "c")])])
    assert later.now >= when
    assert later.results == [[1, [2]]]


async def test_another_hosts_waiter_caps_a_grant_at_its_need(link: Link) -> None:
    window = [Window("w", 10)]
    await borrow(link, window, [AskArgs([Item(1, 8, 8, "a")])], host="h2")
    refused = await borrow(link, window, [AskArgs([Item(1, 5, 5, "b")])], host="h3")
    assert refused.results[0][0] == 0  # h3 now waits on the window
    reply = await borrow(link, window, [AskArgs([Item(1, 1, 2, "c")])], host="h2")
    assert reply.results == [[1, [1]]]  # h2 gets its need, not what it wanted ahead


async def test_a_prefetch_that_does_not_fit_marks_nobody_waiting(
    link: Link, valkey: ValkeyServer
) -> None:
    window = [Window("w", 10)]
    await borrow(link, window, [AskArgs([Item(1, 9, 9, "a")])], host="h2")
    await borrow(link, window, [AskArgs([Item(1, 5, 5, "b")], waiter=False)], host="h3")
    reply = await borrow(link, window, [AskArgs([Item(1, 1, 1, "c")])], host="h2")
    assert reply.results == [[1, [1]]]
    async with aioredis.Redis.from_url(valkey.url) as client:
        assert await client.hget(link.keys.window_state("w"), "wu") is None


# ---------------------------------------------------------------------------- returns and refunds


async def test_returning_a_lease_frees_what_it_did_not_use_and_lowers_its_expiry(
    link: Link,
) -> None:
    window = [Window("w", 5)]
    granted = await borrow(link, window, [AskArgs([Item(1, 5, 5, "lease")])])
    assert await score(link, "w", "lease") == granted.now + LEASE_US + LONG_SPAN_US
    last = granted.now + 200_000 + LONG_SPAN_US  # its last admission 0.2 s into the lease
    _, used, freed = await settle(link, {"w": [("lease", 0, 0), ("c:h1:1", 3, last)]})
    assert used == [3]
    assert freed == [2]
    assert await score(link, "w", "lease") is None
    assert await score(link, "w", "c:h1:1") == last
    reply = await borrow(
        link, window, [AskArgs([Item(1, 2, 2, "x")]), AskArgs([Item(1, 1, 1, "y")])]
    )
    assert reply.results[0] == [1, [2]]
    assert reply.results[1] == [0, last]  # frees when the returned admissions leave


async def test_puts_are_absolute_so_a_replay_counts_once(link: Link) -> None:
    window = [Window("w", 100)]
    await borrow(link, window, [AskArgs([Item(1, 1, 1, "seed")])])
    far = (await borrow(link, window, [])).now + LONG_SPAN_US
    for _ in range(3):
        _, used, _ = await settle(link, {"w": [("c:h1:9", 40, far)]})
        assert used == [41]
    _, used, freed = await settle(link, {"w": [("c:h1:9", 25, far)]})  # a refund
    assert (used, freed) == ([26], [15])
    _, used, freed = await settle(link, {"w": [("c:h1:9", 30, far)]})  # a charge
    assert (used, freed) == ([31], [-5])
    _, used, _ = await settle(link, {"w": [("gone", 0, 0), ("c:h1:8", 7, 1)]})
    assert used == [31]  # removing what is not there, or putting what has expired: nothing


async def test_a_change_where_a_host_waits_is_published(link: Link, valkey: ValkeyServer) -> None:
    async with subscribed(valkey.url, link.keys.channel) as pubsub:
        window = [Window("w", 2)]
        await borrow(link, window, [AskArgs([Item(1, 2, 2, "lease")])])
        await settle(link, {"w": [("lease", 2, (await borrow(link, window, [])).now + 10**8)]})
        assert await next_message(pubsub, 0.2) is None  # nobody waits: silence
        await borrow(link, window, [AskArgs([Item(1, 1, 1, "waiter")])], host="h2")
        await settle(link, {"w": [("lease", 0, 0)]})
        assert await next_message(pubsub, 5) == f"freed {link.keys.window_state('w')}"


# ---------------------------------------------------------------------------- pauses, headers


async def test_a_pause_refuses_its_target_on_every_host_and_only_lengthens(
    link: Link, valkey: ValkeyServer
) -> None:
    async with subscribed(valkey.url, link.keys.channel) as pubsub:
        key = link.keys.pause("p/m")
        paused = await link.call("pause", [key], [link.keys.channel, "p/m", 5000])
        until = int(paused.value[1])
        assert until == int(paused.value[0]) + 5_000_000
        assert await next_message(pubsub, 5) == f"pause {until} p/m"
        shorter = await link.call("pause", [key], [link.keys.channel, "p/m", 1000])
        assert int(shorter.value[1]) == until
        window = [Window("w", 10)]
        reply = await borrow(
            link, window, [AskArgs([Item(1, 1, 1, "a")], pause=1)], pauses=("p/m",)
        )
        assert reply.results == [[0, until]]
        assert reply.paused == until
        other = await borrow(link, window, [AskArgs([Item(1, 1, 1, "b")])], pauses=("p/m",))
        assert other.results == [[1, [1]]]  # an ask on another target is not paused
        await link.call("pause", [key], [link.keys.channel, "p/m", 0])
        again = await borrow(
            link, window, [AskArgs([Item(1, 1, 1, "c")], pause=1)], pauses=("p/m",)
        )
        assert again.results == [[1, [1]]]


async def test_provider_headers_tighten_the_fleet_never_loosen_it(link: Link) -> None:
    window = [Window("w", 10)]
    await borrow(link, window, [AskArgs([Item(1, 2, 2, "a")])])
    keys = [link.keys.window_log("w"), link.keys.window_state("w")]
    seen = await link.call("observe", keys, [10, 3, 30_000_000, 120_000])
    assert [int(v) for v in seen.value[1:3]] == [2, 5]  # 10 - 2 ours - 3 remaining
    refused = await borrow(link, window, [AskArgs([Item(1, 4, 4, "b")])])
    assert refused.results[0] == [0, int(seen.value[3])]  # fits when the provider resets
    looser = await link.call("observe", keys, [10, 9, 30_000_000, 120_000])
    assert int(looser.value[2]) == 5
    admitted = await borrow(link, window, [AskArgs([Item(1, 3, 3, "c")])])
    assert admitted.results == [[1, [3]]]


# ---------------------------------------------------------------------------- epochs


async def test_a_borrow_under_another_epoch_or_during_a_resync_takes_nothing(
    link: Link, valkey: ValkeyServer
) -> None:
    window = [Window("w", 10)]
    stale = await borrow(link, window, [AskArgs([Item(1, 1, 1, "a")])], epoch="old")
    assert stale.status == "epoch"
    assert text(stale.raw[2]) == link.epoch
    async with aioredis.Redis.from_url(valkey.url) as client:
        await client.hset(link.keys.epoch, "resync_until", stale.now + 60_000_000)
        resyncing = await borrow(link, window, [AskArgs([Item(1, 1, 1, "b")])])
        assert resyncing.status == "resync"
        assert int(resyncing.raw[2]) == stale.now + 60_000_000
        assert await client.exists(link.keys.window_log("w")) == 0


# ---------------------------------------------------------------------------- budgets

USD = 1_000_000_000


async def budget_borrow(
    link: Link, host: str, budgets: list[tuple[str, int, int, int, int]]
) -> list[Any]:
    """budgets: (key name, limit, spent, min_hold, want_hold) in nano-USD."""
    keys = [link.keys.epoch]
    args: list[Any] = [link.epoch, host, 2_000_000, len(budgets)]
    for name, limit, spent, min_hold, want_hold in budgets:
        keys.append(link.keys.budget(name, "day", "2026-12-01"))
        args += [limit, spent, min_hold, want_hold, 3600]
    value = (await link.call("budget_borrow", keys, args)).value
    return [text(value[0]), *value[1:]]


async def budget_sync(
    link: Link,
    host: str,
    budgets: list[tuple[str, int, int, list[tuple[str, int]]]],
    restore: bool = False,
    days: dict[str, list[tuple[str, str]]] | None = None,
) -> list[Any]:
    """budgets: (key name, spent, held, ghosts)."""
    keys: list[str] = []
    args: list[Any] = [host, int(restore), len(budgets)]
    for name, spent, held, ghosts in budgets:
        keys.append(link.keys.budget(name, "day", "2026-12-01"))
        args += [spent, held, 3600, len(ghosts)]
        for who, combined in ghosts:
            args += [who, combined]
    for day, fields in (days or {}).items():
        keys.append(link.keys.spend_day(day))
        args += [3600, len(fields)]
        for name, value in fields:
            args += [name, value]
    value = (await link.call("budget_sync", keys, args)).value
    return [[int(f[0]), int(f[1]), int(f[2])] for f in value[1]]


async def test_budget_holds_never_let_the_fleet_pass_the_limit(link: Link) -> None:
    a = await budget_borrow(link, "a", [("global", USD, 30 * USD // 100, USD // 5, USD // 2)])
    assert a[0] == "ok"
    assert int(a[2][0][0]) == USD // 2  # held 0.50 beside spent 0.30
    b = await budget_borrow(link, "b", [("global", USD, 0, 3 * USD // 10, 3 * USD // 10)])
    assert b[0] == "short"
    assert [int(v) for v in b[2:5]] == [1, USD // 5, 8 * USD // 10]  # room 0.20, others 0.80
    assert b[5] == b""  # no field that holds no amount
    # a settles: spent 0.45; a sync never raises spent + held (0.80), whatever it asks
    synced = await budget_sync(link, "a", [("global", 45 * USD // 100, USD, [])])
    assert synced == [[35 * USD // 100, 45 * USD // 100, 35 * USD // 100]]
    b = await budget_borrow(link, "b", [("global", USD, 0, 3 * USD // 10, 3 * USD // 10)])
    assert b[0] == "short"
    # a gives back the hold it no longer needs
    synced = await budget_sync(link, "a", [("global", 45 * USD // 100, 0, [])])
    assert synced == [[0, 45 * USD // 100, 0]]
    b = await budget_borrow(link, "b", [("global", USD, 0, 3 * USD // 10, 3 * USD // 10)])
    assert b[0] == "ok"


async def test_budget_borrow_is_all_or_nothing_across_a_requests_budgets(
    link: Link, valkey: ValkeyServer
) -> None:
    await budget_borrow(link, "other", [("global", USD, 9 * USD // 10, 0, 0)])
    short = await budget_borrow(
        link,
        "a",
        [("app", USD, 0, USD // 5, USD // 5), ("global", USD, 0, USD // 5, USD // 5)],
    )
    assert short[0] == "short"
    assert int(short[2]) == 2
    async with aioredis.Redis.from_url(valkey.url) as client:
        assert await client.exists(link.keys.budget("app", "day", "2026-12-01")) == 0


async def test_budget_syncs_are_idempotent_and_a_restore_keeps_ghosts_until_replaced(
    link: Link,
) -> None:
    for _ in range(3):
        assert await budget_sync(link, "a", [("global", 10, 0, [])], restore=True) == [[0, 10, 0]]
    # after Redis restarted empty, "a" puts back its hold and a ghost of "b" (60 in all)
    restored = await budget_sync(link, "a", [("global", 10, 20, [("b", 60)])], restore=True)
    assert restored == [[20, 10, 80]]  # fleet held: 20 of "a" and the ghost of "b"
    borrowed = await budget_borrow(link, "c", [("global", 100, 0, 10, 10)])
    assert borrowed[0] == "ok"  # 10 + 20 + 60 (the ghost) + 10 <= 100
    short = await budget_borrow(link, "c", [("global", 100, 0, 11, 11)])
    assert short[0] == "short"
    assert [int(v) for v in short[2:5]] == [1, 10, 90]
    # "b" pushes its own totals: its ghost no longer counts
    await budget_sync(link, "b", [("global", 5, 0, [])], restore=True)
    again = await budget_borrow(link, "c", [("global", 100, 0, 60, 60)])
    assert again[0] == "ok"  # 10 + 20 + 5 + 60 <= 100


async def test_spend_days_are_set_not_added(link: Link, valkey: ValkeyServer) -> None:
    fields = [("a\tapp\tm\tp/m", f"{3 * USD} 2 10 20")]
    for _ in range(2):
        await budget_sync(link, "a", [], days={"2026-12-01": fields})
    async with aioredis.Redis.from_url(valkey.url) as client:
        stored = await client.hgetall(link.keys.spend_day("2026-12-01"))
    assert {text(k): text(v) for k, v in stored.items()} == {"a\tapp\tm\tp/m": f"{3 * USD} 2 10 20"}


def test_nano_usd_rounds_up() -> None:
    from quotad.daemon.cluster.spend import to_nano

    assert to_nano(0.1) == 100_000_000
    assert to_nano(1e-10) == 1
    assert to_nano(0.0) == 0
    assert math.isclose(to_nano(123.456789) / USD, 123.456789)


# ---------------------------------------------------------------------------- snapshots


async def test_a_snapshot_says_each_windows_use_and_the_pauses_in_force(link: Link) -> None:
    windows = [Window("a", 100), Window("b", 100)]
    granted = await borrow(link, windows, [AskArgs([Item(1, 3, 3, "x"), Item(2, 4, 4, "y")])])
    far = granted.now + LONG_SPAN_US // 2
    await settle(link, {"a": [("c:h1:1", 5, far)]})
    keys = [link.keys.window_log("a"), link.keys.window_state("a")]
    keys += [link.keys.window_log("b"), link.keys.window_state("b"), link.keys.pause("p/m")]
    await link.call("pause", [link.keys.pause("p/m")], [link.keys.channel, "p/m", 9000])
    reply = await link.call("snapshot", keys, [2, 1])
    now, per_window, pauses = reply.value
    (used_a, ext_a, _), (used_b, _, _) = per_window
    assert (int(used_a), int(used_b), int(ext_a)) == (8, 4, 0)
    assert int(pauses[0]) > int(now)


async def test_a_log_longer_than_a_page_is_read_to_its_end(link: Link) -> None:
    """The scripts read a window's log 500 entries at a time: when it frees counts the
    entries of every page, and a snapshot expires none of them early."""
    window = [Window("w", 10_000)]
    far = (await borrow(link, window, [])).now + LONG_SPAN_US // 2
    entries = 1100
    await settle(link, {"w": [(f"c:h1:{i}", 1, far + i) for i in range(entries)]})
    # 8900 free: 9950 more needs the first 1050 entries gone, the last on the third page
    refused = await borrow(link, window, [AskArgs([Item(1, 9950, 9950, "big")])])
    assert refused.used == [entries]
    assert refused.results == [[0, far + 1049]]
    keys = [link.keys.window_log("w"), link.keys.window_state("w")]
    reply = await link.call("snapshot", keys, [1, 0])
    ((used, _, _),) = reply.value[1]
    assert int(used) == entries


async def test_a_malformed_reply_degrades_the_link_instead_of_failing_the_daemon(
    link: Link, valkey: ValkeyServer
) -> None:
    from quotad.daemon.cluster.gates import FleetGates
    from quotad.daemon.cluster.link import LinkDown

    gates = FleetGates(link)
    gates.window("provider:p", "requests", 60.0, 10, 60.05)
    async with aioredis.Redis.from_url(valkey.url) as client:
        link._scripts["snapshot"] = client.register_script("return {1, {}, {}}")
        with pytest.raises(LinkDown):
            await gates.snapshot()
    assert link.health == "degraded"
    assert "malformed reply of snapshot" in link.reason


@pytest.mark.parametrize("figure", ["'x'", "7"])
async def test_a_settle_reply_of_the_wrong_length_is_refused_saying_so(
    link: Link, valkey: ValkeyServer, figure: str
) -> None:
    from quotad.daemon.cluster.gates import FleetGates
    from quotad.daemon.cluster.link import LinkDown

    gates = FleetGates(link)
    window = gates.window("provider:p", "requests", 60.0, 10, 60.05)
    # a hostile server: 20,000 figures (numbers or not) for the one window put (200,000 took
    # 1.5 s of the link's 2 s to build and read on a quiet machine, and timed out on a busy one)
    hostile = (
        f"local used = {{}} for i = 1, 20000 do used[i] = {figure} end "
        "return {redis.call('TIME')[1], used, {}}"
    )
    async with aioredis.Redis.from_url(valkey.url) as client:
        link._scripts["settle"] = client.register_script(hostile)
        with pytest.raises(LinkDown):
            await gates.flusher.send_puts({window: [("c:h1:1", 1, 10**16)]})
    assert link.health == "degraded"
    assert "malformed reply of settle" in link.reason
    assert "20000 windows' use for 1 windows sent" in link.reason, link.reason
    assert window.puts  # kept, to be sent again


def test_a_settle_reply_is_counted_before_any_figure_is_converted() -> None:
    from quotad.daemon.cluster.flusher import settle_reply

    converted: list[object] = []

    class Figure:
        def __int__(self) -> int:
            converted.append(self)
            return 1

    for windows in (0, 2, 4):
        with pytest.raises(ValueError, match=f"3 windows' use for {windows} windows sent"):
            settle_reply([1, [Figure(), Figure(), Figure()]], windows)
    assert converted == []
    with pytest.raises(TypeError, match="a bytes, not a list"):
        settle_reply([1, b"123"], 3)
    assert settle_reply([5, [Figure(), Figure(), Figure()]], 3) == (5, [1, 1, 1])
    assert len(converted) == 3


async def pttl(link: Link, key: str) -> int:
    async with aioredis.Redis.from_url(link.settings.redis_url) as client:
        result: int = await client.pttl(key)
        return result


@pytest.mark.parametrize("emptied_by", ["settle", "expiry"])
async def test_a_log_emptied_then_written_again_keeps_a_lifetime(
    link: Link, emptied_by: str
) -> None:
    """A log whose last entry went (settled to nothing, or expired) is deleted by Redis; the
    next entry made it anew without a lifetime (its state said the lifetime was renewed
    moments ago), so once no host used the gate the log stayed for ever."""
    span_us = 200_000 if emptied_by == "expiry" else LONG_SPAN_US
    window = [Window("w", 5, span_us)]
    log = link.keys.window_log("w")
    granted = await borrow(link, window, [AskArgs([Item(1, 1, 1, "first")])])
    assert granted.status == "ok"
    assert await pttl(link, log) > 0
    if emptied_by == "settle":
        await settle(link, {"w": [("first", 0, 0)]})
    else:
        await anyio.sleep((LEASE_US + span_us) / 1e6 + 0.1)  # its expiry passes
    again = await borrow(link, window, [AskArgs([Item(1, 1, 1, "second")])])
    assert again.results[0][0] == 1
    assert await pttl(link, log) > 0  # -1: no lifetime
    assert await pttl(link, link.keys.window_state("w")) > 0
