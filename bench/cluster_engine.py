"""The fleet engine alone (no daemon), against a loopback Valkey: what sharing a limit through
Redis adds to one admission, and how many admissions three hosts make with borrowed slices.
The daemon-level figures (three daemons, a provider) are bench/cluster.py's.

Figures, each beside its direct baseline in the same run:

- ``ping_p50_us``: a bare ``PING`` round trip (the floor of any call to Redis);
  ``borrow_p50_us``: one ``borrow.lua`` call for a request's two windows (the slow path,
  when a host holds too little), and their ratio;
- ``local_admit_p50_us``: one host's admission (the gates' ``SlidingWindow`` check and admit
  on two windows); ``fleet_admit_p50_us``: the same plus taking it from held slices
  (``FleetWindow.available`` and ``take`` on both), and ``added_fast_path_us``;
- ``admissions_per_s``: three hosts (three links, one process) admitting as fast as they can
  against a generous limit, each borrowing slices when short and returning them in batches;
  ``round_trips_per_1000``: calls to Redis (borrows and settles) per 1000 admissions;
- ``added_p50_us``: the p50 of what an admission waits for Redis in that run (0 when it is
  served from slices), the issue's "added over one host".

    uv run python bench/cluster_engine.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.daemon.cluster.gates import Ask, FleetGates
from quotad.daemon.cluster.link import Link
from quotad.daemon.gates.window import SlidingWindow
from tests.support.valkey import running_valkey, settings_for


async def joined(url: str, host: str) -> tuple[Link, FleetGates]:
    link = Link(settings_for(url, "bench", host, heartbeat_s=1.0))
    assert await link.open()
    await link.join()
    return link, FleetGates(link)


async def round_trips(url: str, count: int) -> dict[str, Any]:
    link, gates = await joined(url, "rt")
    try:
        requests = gates.window("provider:rt", "requests", 60.0, 10**9, 60.05)
        tokens = gates.window("provider:rt", "tokens", 60.0, 10**12, 60.05)
        redis = link._redis
        pings, borrows = [], []
        for _ in range(count):  # interleaved, so that load on the machine hits both alike
            started = time.perf_counter()
            await redis.ping()
            pings.append(time.perf_counter() - started)
            started = time.perf_counter()
            ask = Ask(((requests, 1), (tokens, 500)), waiter=False)  # always one call
            await gates.borrow([(("b",), ask)])
            borrows.append(time.perf_counter() - started)
        return {
            "ping_p50_us": round(statistics.median(pings) * 1e6, 1),
            "borrow_p50_us": round(statistics.median(borrows) * 1e6, 1),
            "borrow_over_ping": round(statistics.median(borrows) / statistics.median(pings), 2),
        }
    finally:
        await link.close()


async def fast_path(url: str, count: int) -> dict[str, Any]:
    link, gates = await joined(url, "fp")
    try:
        requests = gates.window("provider:fp", "requests", 60.0, 10**9, 60.05)
        tokens = gates.window("provider:fp", "tokens", 60.0, 10**12, 60.05)
        now = time.monotonic()
        requests.grant("r", 10**8, now, 0)
        tokens.grant("t", 10**11, now, 0)
        local = [
            SlidingWindow("requests", 10**9, 60.0, 0.05),
            SlidingWindow("tokens", 10**12, 60.0, 0.05),
        ]
        local_times, fleet_times = [], []
        for _ in range(count):
            started = time.perf_counter()
            moment = time.monotonic()
            if local[0].fits(1, moment) and local[1].fits(500, moment):
                local[0].admit(1, moment)
                local[1].admit(500, moment)
            local_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            moment = time.monotonic()
            if local[0].fits(1, moment) and local[1].fits(500, moment):
                local[0].admit(1, moment)
                local[1].admit(500, moment)
            if requests.available(moment) >= 1 and tokens.available(moment) >= 500:
                requests.take(1, moment)
                tokens.take(500, moment)
            fleet_times.append(time.perf_counter() - started)
        local_p50 = statistics.median(local_times) * 1e6
        fleet_p50 = statistics.median(fleet_times) * 1e6
        return {
            "local_admit_p50_us": round(local_p50, 2),
            "fleet_admit_p50_us": round(fleet_p50, 2),
            "added_fast_path_us": round(fleet_p50 - local_p50, 2),
        }
    finally:
        await link.close()


async def throughput(url: str, duration_s: float) -> dict[str, Any]:
    hosts = [await joined(url, f"host{index}") for index in range(3)]
    admitted = 0
    waits: list[float] = []
    try:
        windows = [
            (
                gates.window("provider:tp", "requests", 60.0, 10**7, 60.05),
                gates.window("provider:tp", "tokens", 60.0, 10**10, 60.05),
            )
            for _, gates in hosts
        ]
        calls_before = sum(link.calls for link, _ in hosts)
        deadline = time.monotonic() + duration_s

        async def host_loop(index: int) -> None:
            nonlocal admitted
            gates = hosts[index][1]
            requests, tokens = windows[index]
            last_flush = time.monotonic()
            while True:
                started = time.monotonic()
                if started >= deadline:
                    return
                waited = 0.0
                while not (requests.available(started) >= 1 and tokens.available(started) >= 500):
                    await gates.borrow([(("t",), Ask(((requests, 1), (tokens, 500))))])
                    now = time.monotonic()
                    waited += now - started
                    started = now
                requests.take(1, started)
                tokens.take(500, started)
                admitted += 1
                waits.append(waited)
                if started - last_flush > 0.01:
                    await gates.flusher.flush()
                    last_flush = started
                if admitted % 64 == 0:
                    await anyio.lowlevel.checkpoint()  # the other hosts run too, as daemons would

        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for index in range(3):
                tasks.start_soon(host_loop, index)
        elapsed = time.monotonic() - started
        calls = sum(link.calls for link, _ in hosts) - calls_before
        return {
            "admissions_per_s": round(admitted / elapsed, 1),
            "round_trips_per_1000": round(1000 * calls / max(1, admitted), 2),
            "added_p50_us": round(statistics.median(waits) * 1e6, 1) if waits else None,
        }
    finally:
        for link, _ in hosts:
            await link.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    count = 300 if args.quick else 3000
    duration_s = 1.0 if args.quick else 5.0

    async def run(url: str) -> dict[str, Any]:
        figures: dict[str, Any] = {"bench": "cluster_engine"}
        figures.update(await round_trips(url, count))
        figures.update(await fast_path(url, count * 10))
        figures.update(await throughput(url, duration_s))
        return figures

    with running_valkey() as server:
        figures = uvloop.run(run(server.url))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
