"""What the benchmarks share: timing calls one after another or from many tasks, quantiles,
a process's CPU time read from /proc, the environment that runs another checkout's daemon (and
such a daemon with its front door open), and
the command line of a benchmark (and of one that runs rounds of requests) and how it prints its
figures, and the figures a fuzz run opens with. Not a benchmark itself (the
smoke test skips ``bench/_*.py``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec

from tests.support.daemon import DaemonProcess, daemon_config, free_port


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


async def sequential_async(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    """:func:`sequential` of a coroutine function, awaited in turn."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
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


def cpu_seconds(pid: int, *, main_thread: bool = False) -> float:
    """User plus system CPU time process ``pid`` has used so far (``main_thread``: its
    main thread's only, the one that runs the daemon's event loop)."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    with open(path) as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def source_env(source: str | Path | None) -> dict[str, str]:
    """The environment that runs a daemon from another checkout's sources (``source``, its
    root: its daemon and client sources first on the path); empty for this tree's."""
    if source is None:
        return {}
    root = Path(source).resolve()
    return {"PYTHONPATH": f"{root / 'daemon' / 'src'}{os.pathsep}{root / 'client' / 'src'}"}


def front_door_daemon(
    stack: contextlib.ExitStack, source: str | Path | None, *tables: str, **head: str
) -> tuple[DaemonProcess, int]:
    """A daemon run from the sources in ``source`` (None: this tree's; :func:`source_env`)
    with ``tables`` and ``head`` (as :func:`~tests.support.daemon.daemon_config` takes them),
    its front door on a free loopback port with ``auth = "none"``, stopped when ``stack``
    closes; and that port."""
    port = free_port()
    config = daemon_config(*tables, http=f'listen = "127.0.0.1:{port}"\nauth = "none"', **head)
    return stack.enter_context(DaemonProcess(config, env=source_env(source))), port


def rounds_main(
    doc: str | None,
    measure: Callable[[int, int, str | None], dict[str, Any]],
    *,
    rounds: int,
    requests: int,
    quick_requests: int,
) -> None:
    """The command line of a benchmark that runs ``--rounds`` of ``--requests``, optionally
    beside the daemon of another checkout (``--baseline-src DIR``), or a smoke run
    (``--quick``: one round of ``quick_requests``); prints ``measure``'s figures as one JSON
    line."""
    parser = bench_parser(doc, "a few requests (smoke test)", rounds=rounds, requests=requests)
    parser.add_argument(
        "--baseline-src",
        "--baseline-source",
        dest="baseline_src",
        help="a checkout whose daemon to measure alongside",
    )
    args = parser.parse_args()
    rounds, requests = (1, quick_requests) if args.quick else (args.rounds, args.requests)
    print_figures(measure(rounds, requests, args.baseline_src))


def seeded_main(
    doc: str | None,
    measure: Callable[[int, int], dict[str, Any]],
    *,
    cases: tuple[str, int, int],
    quick_help: str,
) -> None:
    """The command line of a benchmark that runs random cases drawn from ``--seed``:
    ``cases`` names their option, its default and how many a smoke run (``--quick``) takes;
    prints ``measure(count, seed)``'s figures as one JSON line."""
    option, default, quick = cases
    args = bench_parser(doc, quick_help, **{option: default, "seed": 1}).parse_args()
    # stopped (``timeout``, ^C in another terminal): the processes it started are stopped too
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    print_figures(measure(quick if args.quick else getattr(args, option), args.seed))


T = TypeVar("T")


def alternating(arms: Sequence[T], rounds: int) -> Iterator[T]:
    """Each of ``arms`` (the daemons a benchmark compares) once a round, in an order reversed
    every other round, so that none always goes first on a machine whose load drifts."""
    for number in range(rounds):
        yield from (arms if number % 2 == 0 else reversed(arms))


def bench_parser(doc: str | None, quick_help: str, **counts: int) -> argparse.ArgumentParser:
    """The command line every benchmark starts from: its docstring's first line as the
    description, ``--quick`` (a smoke run, ``quick_help`` says how small) and one integer
    option per ``counts`` entry (``--name``, its value the default)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    for name, default in counts.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


CompareArms = Callable[[list[str | None], list[str], float, int, int, int], list[dict[str, Any]]]
"""``measure(sources, items, size_mb, rounds, big, clients)``: a daemon's figures per source."""


def compared_main(
    name: str, doc: str | None, quick_help: str, items: tuple[str, str], measure: CompareArms
) -> None:
    """The command line of a benchmark of big requests or answers that measures this tree's
    daemon beside another checkout's (``--baseline-source``): ``--rounds``, ``--big`` (big
    chats per phase), ``--clients`` (small-chat clients), ``--mb`` (a big one's size),
    ``--NAME`` for ``items`` (its option name, its default: what to measure, comma-separated)
    and ``--quick`` (1 MB, one round); prints the figures, the baseline's under ``baseline``."""
    parser = bench_parser(doc, quick_help, rounds=3, big=4, clients=4)
    parser.add_argument("--mb", type=float, default=13.0, help="size of a big one, MB")
    parser.add_argument(f"--{items[0]}", default=items[1])
    parser.add_argument("--baseline-source", help="a checkout whose daemon to measure alongside")
    args = parser.parse_args()
    rounds, big, size_mb = (1, 2, 1.0) if args.quick else (args.rounds, args.big, args.mb)
    sources: list[str | None] = [None] + ([args.baseline_source] if args.baseline_source else [])
    chosen = getattr(args, items[0]).split(",")
    arms = measure(sources, chosen, size_mb, rounds, big, args.clients)
    figures: dict[str, Any] = {"bench": name, "rounds": rounds, "big": big}
    figures["clients"] = args.clients
    figures.update(arms[0])
    if args.baseline_source:
        figures["baseline"] = arms[1]
    print_figures(figures)


def print_figures(figures: dict[str, Any]) -> None:
    """A benchmark's result: its figures as one JSON line on stdout."""
    print(msgspec.json.encode(figures).decode(), flush=True)


def fuzz_rate_figures(
    bench: str, cases: int, seed: int, fuzz_s: float, valid_per_s: float
) -> dict[str, Any]:
    """The figures a fuzz benchmark's report opens with: its name, ``cases`` drawn from
    ``seed`` and the ``fuzz_s`` seconds they took, their rate, the rate of valid requests to
    the same daemon (``valid_per_s``, its baseline in the same run) and the ratio of the two."""
    fuzz_per_s = cases / fuzz_s
    return {
        "bench": bench,
        "cases": cases,
        "seed": seed,
        "seconds": round(fuzz_s, 1),
        "fuzz_cases_per_s": round(fuzz_per_s, 1),
        "valid_requests_per_s": round(valid_per_s, 1),
        "fuzz_to_valid_rate_ratio": round(fuzz_per_s / valid_per_s, 3),
    }
