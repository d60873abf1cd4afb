"""What keeps ``quotad top`` cheap, checked by construction rather than by the clock.

What it costs is measured by ``bench/tui_cost.py`` (the daemon's CPU share per subscription at
10 snapshots a second, throughput with and without the TUI; the README quotes its figures).
A CPU share read on a small machine shared with other work depends on that work, so it is a
bench figure, not a test assertion (it failed here once on a busy machine). What bounds the
cost is asserted instead, in forms no load can break:

- the daemon builds a subscription's snapshot at most once per ``interval_s``, however many
  requests finish meanwhile (each carrying at most ``SNAPSHOT_REQUESTS`` of them);
- the TUI repaints at most once per ``REPAINT_MIN_S``, however fast snapshots come, and shows
  the newest.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from quotad.client import Client
from quotad.protocol.messages import SNAPSHOT_REQUESTS, Snapshot
from quotad.tui.app import REPAINT_MIN_S
from quotad.tui.feed import FeedEvent
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess
from tests.tui.pilots import RecordingApp, wait_until
from tests.tui.scripted import ScriptedFeed, busy_day

MESSAGES = [{"role": "user", "content": "the same question, answered from the cache"}]
INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with SimProcess() as sim:
        config = daemon_config(sim_provider_config("p", sim.base_url))
        with DaemonProcess(config) as running:
            yield running


def chats(daemon: DaemonProcess, count: int) -> None:
    """``count`` chats from 4 threads (cache hits after the first: fast)."""

    def some(number: int) -> None:
        with Client(socket=daemon.socket_path, app="load") as client:
            for _ in range(number):
                client.chat("p/m", MESSAGES, max_tokens=4)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(some, [count // 4] * 4))


@pytest.mark.slow
def test_the_daemon_builds_a_snapshot_at_most_once_per_interval(daemon: DaemonProcess) -> None:
    built: list[float] = []
    with (
        Client(socket=daemon.socket_path, app="top") as client,
        client.subscribe(interval_s=INTERVAL_S) as snapshots,
        ThreadPoolExecutor(1) as pool,
    ):
        load = pool.submit(chats, daemon, 400)
        for snapshot in snapshots:
            built.append(snapshot.time)
            assert len(snapshot.requests) <= SNAPSHOT_REQUESTS
            if load.done() and len(built) >= 6:
                break
        load.result()
    gaps = [later - earlier for earlier, later in itertools.pairwise(built)]
    # each snapshot's time is read before its send, and the daemon sleeps the interval after
    # the send, so no load can bring two closer (uvloop updates its clock when it starts a
    # timer); 1% is room for libuv's whole milliseconds (a timer can end up to 1 ms early)
    # and the wall clock's slew. Building on every finished request would be ~0 apart.
    assert min(gaps) >= INTERVAL_S * 0.99


class SteadyFeed(ScriptedFeed):
    """Delivers ``count`` snapshots ``every_s`` apart (far faster than a reader follows),
    then idles."""

    def __init__(self, count: int, every_s: float) -> None:
        super().__init__(busy_day(3))
        self.count = count
        self.every_s = every_s
        self.last: Snapshot | None = None
        self.last_at = 0.0

    async def follow(self, deliver: Callable[[FeedEvent], None]) -> None:
        template = busy_day(2)[-1]
        assert isinstance(template, Snapshot)
        deliver(busy_day(1)[0])
        for sequence in range(1, self.count + 1):
            self.last = Snapshot(seq=sequence, time=template.time, status=template.status)
            deliver(self.last)
            self.last_at = time.monotonic()
            await asyncio.sleep(self.every_s)
        self.delivered.set()
        await asyncio.Event().wait()


class TimedRepaints(RecordingApp):
    """Records when each repaint ran."""

    def __init__(self, feed: SteadyFeed) -> None:
        super().__init__(feed)
        self.repainted_at: list[float] = []

    def repaint(self) -> None:
        self.repainted_at.append(time.monotonic())
        super().repaint()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_tui_repaints_at_most_once_per_repaint_interval() -> None:
    feed = SteadyFeed(count=200, every_s=0.005)
    app = TimedRepaints(feed)
    async with app.run_test(size=(120, 36)) as pilot:
        await feed.delivered.wait()
        await wait_until(
            pilot, lambda: bool(app.repainted_at) and app.repainted_at[-1] >= feed.last_at
        )
        assert app.monitor.snapshots == 200  # it was flooded...
        assert app.monitor.snapshot is feed.last  # ...the newest is what was shown last...
        times = app.repainted_at
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= REPAINT_MIN_S * 0.9 for gap in gaps)  # ...and never much faster
