"""The store's figures: cache hits through the native client, and ledger rows per second with
group commit at durability normal and full. Prints one JSON line.

- Cache hits: a real ``quotad sim`` and daemon; one answer is stored, then asked for again and
  again. ``hit_p50_ms``/``hit_p99_ms`` one at a time (blocking ``Client``); ``hits_per_s`` from
  32 concurrent tasks (``AsyncClient``). For scale, ``status_p50_ms`` is the round trip of a
  ``Status`` request on the same connection (no store work at all), measured interleaved.
  ``cold_hit_p50_ms``: hits on 1,024 answers in turn, each read from quotad.db.
  ``hit_daemon_cpu_us``: the daemon's CPU time per hit (user + system, from /proc), which the
  load of a shared machine disturbs less than latency.
  ``--baseline-src DIR`` (a quotad source tree, e.g. ``git archive 841e336``) measures the
  same through a daemon of that tree, interleaved round by round: ``baseline_hit_p50_ms``…
  and ``hit_p50_ratio``.
- Ledger: the store alone (``Ledger.record`` → group commit), ``writers`` concurrent tasks each
  recording rows back to back: rows per second, rows per commit, and the p50 of one writer
  alone (one row per commit).

    uv run python bench/store.py [--quick] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, percentile, sequential, source_env
from quotad.client import AsyncClient, Client
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.cache import RECENT_ANSWERS
from quotad.daemon.store.db import Database, Durability
from quotad.daemon.store.ledger import Ledger, LedgerRow
from tests.support import store as rows
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "what does the cache save us?"}]
COLD_ANSWERS = 1024
"""Answers hit in turn for ``cold_hit_p50_ms``: more than the cache keeps decoded in memory
(its last 256), so each is read from quotad.db."""
QUICK_COLD_ANSWERS = RECENT_ANSWERS + 64
"""The same for ``--quick``, storing fewer: its (at most 50) cold hits, on the oldest answers
in turn, still find none of them among the last 256 used."""


def cache_hits(
    durability: str,
    hits: int,
    rounds: int,
    baseline: Path | None = None,
    cold_answers: int = COLD_ANSWERS,
) -> dict[str, float]:
    """Hit latency and throughput through a daemon with this durability; with ``baseline``
    (a source tree), through a daemon of that tree too, their rounds interleaved (figures
    prefixed ``baseline_``, and the ratio of the p50s)."""
    sources = {"": None} if baseline is None else {"": None, "baseline_": baseline}
    figures: dict[str, float] = {}
    with SimProcess() as sim, contextlib.ExitStack() as stack:
        provider = sim_provider_config("sim", sim.base_url)
        config = daemon_config(provider, daemon=f'durability = "{durability}"')
        daemons = {
            prefix: stack.enter_context(DaemonProcess(config, env=source_env(source)))
            for prefix, source in sources.items()
        }
        clients = {
            prefix: stack.enter_context(Client(socket=daemon.socket_path, app="bench"))
            for prefix, daemon in daemons.items()
        }
        hit_latencies: dict[str, list[float]] = {prefix: [] for prefix in sources}
        status_latencies: dict[str, list[float]] = {prefix: [] for prefix in sources}

        def hit_of(client: Client) -> Callable[[], None]:
            def hit() -> None:
                assert client.chat(MODEL, MESSAGES, max_tokens=16).cached

            return hit

        cold_latencies: dict[str, list[float]] = {prefix: [] for prefix in sources}

        def cold_hits_of(client: Client) -> Callable[[], None]:
            """Hits on ``cold_answers`` answers in turn: none among the recently used."""
            turn = itertools.cycle(range(cold_answers))

            def hit() -> None:
                messages = [{"role": "user", "content": f"cold {next(turn)}"}]
                assert client.chat(MODEL, messages, max_tokens=16).cached

            return hit

        for client in clients.values():
            client.chat(MODEL, MESSAGES, max_tokens=16)  # stores the answer
            sequential(hit_of(client), 100)  # warm up
            sequential(client.status, 100)
            for number in range(cold_answers):
                client.chat(MODEL, [{"role": "user", "content": f"cold {number}"}], max_tokens=16)
        hit_cpu = dict.fromkeys(sources, 0.0)
        for _ in range(rounds):
            for prefix, client in clients.items():
                process = daemons[prefix].process
                assert process is not None
                cpu_before = cpu_seconds(process.pid)
                hit_latencies[prefix] += sequential(hit_of(client), hits // rounds)
                hit_cpu[prefix] += cpu_seconds(process.pid) - cpu_before
                status_latencies[prefix] += sequential(client.status, hits // rounds)
                cold_latencies[prefix] += sequential(cold_hits_of(client), hits // rounds // 4)

        async def concurrent(daemon: DaemonProcess) -> float:
            async with AsyncClient(socket=daemon.socket_path, app="bench") as client:
                remaining = hits

                async def worker() -> None:
                    nonlocal remaining
                    while remaining > 0:
                        remaining -= 1
                        reply = await client.chat(MODEL, MESSAGES, max_tokens=16)
                        assert reply.cached

                started = time.perf_counter()
                async with anyio.create_task_group() as tasks:
                    for _ in range(32):
                        tasks.start_soon(worker)
                return hits / (time.perf_counter() - started)

        for prefix, daemon in daemons.items():
            per_s = anyio.run(concurrent, daemon, backend_options={"use_uvloop": True})
            latencies = hit_latencies[prefix]
            figures[f"{prefix}hit_p50_ms"] = round(statistics.median(latencies) * 1000, 3)
            figures[f"{prefix}hit_p99_ms"] = round(percentile(latencies, 0.99) * 1000, 3)
            figures[f"{prefix}hit_daemon_cpu_us"] = round(hit_cpu[prefix] / len(latencies) * 1e6, 1)
            cold_p50 = statistics.median(cold_latencies[prefix])
            figures[f"{prefix}cold_hit_p50_ms"] = round(cold_p50 * 1000, 3)
            status_p50 = statistics.median(status_latencies[prefix])
            figures[f"{prefix}status_p50_ms"] = round(status_p50 * 1000, 3)
            figures[f"{prefix}hits_per_s"] = round(per_s, 1)
    if baseline is not None:
        for name in ("hit_p50", "cold_hit_p50", "hit_daemon_cpu"):
            unit = "_us" if name.endswith("cpu") else "_ms"
            ratio = figures[f"{name}{unit}"] / figures[f"baseline_{name}{unit}"]
            figures[f"{name}_ratio"] = round(ratio, 3)
    return figures


def ledger_row(number: int) -> LedgerRow:
    """A row of a chat request of one of five apps, now."""
    return rows.ledger_row(number, at=time.time(), app=f"app{number % 5}", target=MODEL, cost=4e-5)


async def ledger_rows(durability: Durability, writers: int, seconds: float) -> dict[str, float]:
    """Rows per second from concurrent writers, and one writer's commit latency."""
    directory = Path(tempfile.mkdtemp(prefix="qbench", dir="/tmp"))
    database = Database(directory / "quotad.db", durability=durability)
    await database.open()
    ledger = Ledger(database, Calendar())
    try:
        alone: list[float] = []
        for number in range(200):
            started = time.perf_counter()
            await ledger.record(ledger_row(number))
            alone.append(time.perf_counter() - started)
        recorded = 0
        transactions_before = database.stats.transactions
        deadline = time.perf_counter() + seconds

        async def writer() -> None:
            nonlocal recorded
            while time.perf_counter() < deadline:
                await ledger.record(ledger_row(recorded))
                recorded += 1

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
        commits = database.stats.transactions - transactions_before
    finally:
        await database.close()
        shutil.rmtree(directory, ignore_errors=True)
    return {
        f"ledger_{durability}_rows_per_s": round(recorded / elapsed, 1),
        f"ledger_{durability}_rows_per_commit": round(recorded / max(commits, 1), 1),
        f"ledger_{durability}_single_commit_p50_ms": round(statistics.median(alone) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hits", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per ledger measurement")
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also measure hits through a daemon of this quotad source tree (e.g. an older "
        "commit's, from git archive), interleaved",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 200 hits, 320 cold answers, 0.25 s"
    )
    args = parser.parse_args()
    hits, seconds = (200, 0.25) if args.quick else (args.hits, args.seconds)
    cold = QUICK_COLD_ANSWERS if args.quick else COLD_ANSWERS
    figures: dict[str, Any] = {"bench": "store"}
    figures.update(
        cache_hits(
            "normal", hits, rounds=1 if args.quick else 4, baseline=args.baseline_src,
            cold_answers=cold,
        )
    )  # fmt: skip
    full = cache_hits("full", hits // 2, rounds=1, cold_answers=cold)
    figures.update({f"full_{k}": v for k, v in full.items() if "hit" in k})
    durabilities: tuple[Durability, ...] = ("normal", "full")
    for durability in durabilities:
        figures.update(
            anyio.run(
                ledger_rows,
                durability,
                args.writers,
                seconds,
                backend_options={"use_uvloop": True},
            )
        )
    figures["writers"] = args.writers
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
