"""What a request deadline costs: a block under :class:`~quotad.daemon.net.deadlines.Deadlines`
(one sweep task for all, no timer per block) beside the same block under ``anyio.fail_after``
(a cancel scope and a loop timer per block), on uvloop as the daemon runs. Each block awaits
once (the loop turns, as a request's does), the floor's under an empty context. Rounds of the
three alternate so that the noise of a shared machine falls on all. Prints one JSON line:
microseconds per block and the ratio.

    uv run python bench/deadlines.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import anyio
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.daemon.net.deadlines import Deadlines

BLOCKERS = 50
"""Other tasks each inside a long deadline meanwhile (the sweep is running, as in the daemon)."""
NO_DEADLINE = nullcontext()
"""What the floor's blocks run under: an empty context."""


async def blocks(enter: Callable[[], AbstractContextManager[object]], count: int) -> float:
    """Microseconds per block under the context ``enter()`` makes (every arm calls its
    factory and enters what it returns, so that only the context's own cost differs)."""
    started = time.perf_counter()
    for _ in range(count):
        with enter():
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
    arms: dict[str, Callable[[], AbstractContextManager[object]]] = {
        "bare": lambda: NO_DEADLINE,  # the floor: the block without any deadline
        "ours": lambda: deadlines.within(30.0),  # a deadline that does not pass
        "anyio": lambda: anyio.fail_after(30.0),  # the same under anyio.fail_after
    }
    per_block: dict[str, list[float]] = {arm: [] for arm in arms}
    for enter in arms.values():
        await blocks(enter, count // 4)  # warm up
    for _ in range(rounds):
        for arm, enter in arms.items():
            per_block[arm].append(await blocks(enter, count))
    stop.set()
    await asyncio.gather(*blockers)
    floor = statistics.median(per_block["bare"])
    ours_us = statistics.median(per_block["ours"]) - floor
    anyio_us = statistics.median(per_block["anyio"]) - floor
    return {
        "bench": "deadlines",
        "deadline_block_us": round(ours_us, 2),
        "fail_after_block_us": round(anyio_us, 2),
        "deadline_vs_fail_after": round(ours_us / anyio_us, 3),
        "await_floor_us": round(floor, 2),
        "note": "per block, the floor (one await under an empty context) subtracted; "
        "medians of interleaved rounds",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, count = (3, 2000) if args.quick else (15, 20000)
    print(json.dumps(uvloop.run(measure(rounds, count))))


if __name__ == "__main__":
    main()
