"""What the benchmarks share: timing calls one after another or from many tasks, quantiles,
and a process's CPU time read from /proc. Not a benchmark itself (the smoke test skips
``bench/_*.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sequential(call: Callable[[], Any], count: int) -> list[float]:
    """Latencies in seconds of ``count`` calls one after another."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


async def concurrent(call: Callable[[], Awaitable[Any]], count: int, concurrency: int) -> float:
    """Requests per second of ``count`` calls from ``concurrency`` tasks (closed loop)."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return count / (time.perf_counter() - started)


async def interleaved_throughput(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    rounds: int,
    count: int,
    concurrency: int,
) -> tuple[list[float], list[float]]:
    """Requests per second of ``first`` and of ``second``, one round of each in turn (after
    a warm-up of both), so that the noise of a shared machine falls on both alike."""
    await concurrent(first, 2 * concurrency, concurrency)
    await concurrent(second, 2 * concurrency, concurrency)
    first_rps: list[float] = []
    second_rps: list[float] = []
    for _ in range(rounds):
        first_rps.append(await concurrent(first, count, concurrency))
        second_rps.append(await concurrent(second, count, concurrency))
    return first_rps, second_rps


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
