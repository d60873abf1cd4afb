"""What a request deadline costs: a block under :class:`~quotad.daemon.net.deadlines.Deadlines`
(one sweep task for all, no timer per block) beside the same block under ``anyio.fail_after``
(a cancel scope and a loop timer per block), on uvloop as the daemon runs. Each block awaits
once (the loop turns, as a request's does). Rounds of the two alternate so that the noise of a
shared machine falls on both. Prints one JSON line: microseconds per block and the ratio.

    uv run python bench/deadlines.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import anyio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.daemon.net.deadlines import Deadlines

BLOCKERS = 50
"""Other tasks each inside a long deadline meanwhile (the sweep is running, as in the daemon)."""


async def deadline_blocks(deadlines: Deadlines, count: int) -> float:
    """Microseconds per block under a deadline that does not pass."""
    started = time.perf_counter()
    for _ in range(count):
        with deadlines.within(30.0):
            await asyncio.sleep(0)
    return (time.perf_counter() - started) / count * 1e6


async def fail_after_blocks(count: int) -> float:
    """Microseconds per block under ``anyio.fail_after`` that does not pass."""
    started = time.perf_counter()
    for _ in range(count):
        with anyio.fail_after(30.0):
            await asyncio.sleep(0)
    return (time.perf_counter() - started) / count * 1e6


async def bare_blocks(count: int) -> float:
    """Microseconds per block without any deadline (the floor)."""
    started = time.perf_counter()
    for _ in range(count):
        await asyncio.sleep(0)
    return (time.perf_counter() - started) / count * 1e6


async def measure(rounds: int, count: int) -> dict[str, float | str]:
    deadlines = Deadlines()
    stop = asyncio.Event()

    async def blocker() -> None:
        with deadlines.within(3600.0):
            await stop.wait()

    blockers = [asyncio.create_task(blocker()) for _ in range(BLOCKERS)]
    await asyncio.sleep(0.01)
    ours: list[float] = []
    anyio_s: list[float] = []
    bare: list[float] = []
    await deadline_blocks(deadlines, count // 4)  # warm up
    await fail_after_blocks(count // 4)
    for _ in range(rounds):
        bare.append(await bare_blocks(count))
        ours.append(await deadline_blocks(deadlines, count))
        anyio_s.append(await fail_after_blocks(count))
    stop.set()
    await asyncio.gather(*blockers)
    floor = statistics.median(bare)
    ours_us = statistics.median(ours) - floor
    anyio_us = statistics.median(anyio_s) - floor
    return {
        "bench": "deadlines",
        "deadline_block_us": round(ours_us, 2),
        "fail_after_block_us": round(anyio_us, 2),
        "deadline_vs_fail_after": round(ours_us / anyio_us, 3),
        "await_floor_us": round(floor, 2),
        "note": "per block, the cost of one await subtracted; medians of interleaved rounds",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, count = (3, 2000) if args.quick else (15, 20000)
    print(json.dumps(uvloop.run(measure(rounds, count))))


if __name__ == "__main__":
    main()
