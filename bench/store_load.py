"""The store under sustained load: disk use (database, WAL, shared memory) and the daemon's
RSS per cache entry over a long run of distinct requests, and what bounding the WAL costs a
commit. Prints one JSON line.

- Sustained: a real ``quotad sim`` and daemon (cache on); ``--requests`` distinct prompts from
  ``--concurrency`` tasks of one ``AsyncClient``, each a miss whose answer is stored, so the
  cache ends with one entry per request. Every 0.2 s the sizes of ``quotad.db``, its ``-wal``
  and ``-shm`` and the daemon's RSS (``/proc/PID/statm``) are sampled: ``wal_peak_mb``,
  ``wal_final_mb``, ``disk_peak_mb``, ``rss_start_mb``, ``rss_end_mb``, and
  ``rss_per_entry_kb`` = (RSS at the end - RSS after start) / entries. With
  ``--baseline-src DIR`` (a source tree of an older quotad, e.g. ``git archive 841e336``), the
  same run goes first through a daemon of that tree (its figures prefixed ``baseline_``).
- Commit latency: the store alone (``Ledger.record`` with a cache entry per row, the daemon's
  step 7), ``--writers`` tasks for ``--seconds``, with the WAL bound (``wal_limit_mb`` of
  :class:`Database`) and without it (``wal_limit_mb=0``: passive checkpoints only, as before),
  in alternating rounds: p50/p99 of one ``record`` and the WAL's peak in each arm; how many
  times the bound started the WAL over, the share of the time it held the writer to do so,
  and its longest hold.

    uv run python bench/store_load.py [--quick] [--requests N] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, percentile, source_env
from quotad.client import AsyncClient
from quotad.daemon.clock import SYSTEM_CLOCK
from quotad.daemon.config import CacheConfig
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.cache import Cache, CachedChat
from quotad.daemon.store.db import WAL_LIMIT_MB, Database, WriteStats
from quotad.daemon.store.ledger import Ledger, LedgerRow
from quotad.protocol.messages import Usage
from tests.support import store as rows
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
MB = 1024 * 1024
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class DiskSampler:
    """Samples a state directory's files and a process's RSS on a thread, keeping peaks."""

    def __init__(self, database: Path, pid: int, every_s: float = 0.2) -> None:
        self.database = database
        self.wal = database.with_name(database.name + "-wal")
        self.shm = database.with_name(database.name + "-shm")
        self.pid = pid
        self.every_s = every_s
        self.wal_peak = self.disk_peak = self.rss_peak = 0
        self.rss_start = 0
        """The RSS to subtract: set after start and warm-up, before the load."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int]:
        """(WAL bytes, database + WAL + shm bytes, RSS bytes) now; peaks updated."""
        wal = file_size(self.wal)
        disk = file_size(self.database) + wal + file_size(self.shm)
        rss = rss_bytes(self.pid)
        self.wal_peak = max(self.wal_peak, wal)
        self.disk_peak = max(self.disk_peak, disk)
        self.rss_peak = max(self.rss_peak, rss)
        return wal, disk, rss

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def sustained(requests: int, concurrency: int, source: Path | None) -> dict[str, float]:
    """Disk and RSS over ``requests`` distinct requests through a daemon (of ``source``, or
    of this tree)."""
    env = source_env(source)
    with SimProcess() as sim:
        config = daemon_config(sim_provider_config("sim", sim.base_url))
        with DaemonProcess(config, env=env) as daemon:
            assert daemon.process is not None
            database = daemon.state_dir / "quotad.db"
            sampler = DiskSampler(database, daemon.process.pid)

            async def load() -> tuple[list[float], int, float]:
                latencies: list[float] = []
                async with AsyncClient(socket=daemon.socket_path, app="bench") as client:
                    for number in range(50):  # warm up; then the RSS to subtract
                        await client.chat(MODEL, [{"role": "user", "content": f"w{number}"}])
                    sampler.rss_start = rss_bytes(sampler.pid)
                    cpu_before = cpu_seconds(sampler.pid)
                    next_number = 0

                    async def worker() -> None:
                        nonlocal next_number
                        while next_number < requests:
                            number = next_number
                            next_number += 1
                            messages = [{"role": "user", "content": f"sustained {number}"}]
                            started = time.perf_counter()
                            await client.chat(MODEL, messages, max_tokens=16)
                            latencies.append(time.perf_counter() - started)

                    with sampler:
                        async with anyio.create_task_group() as tasks:
                            for _ in range(concurrency):
                                tasks.start_soon(worker)
                    cpu = cpu_seconds(sampler.pid) - cpu_before
                    status = await client.status()
                return latencies, status.cache.entries if status.cache else 0, cpu

            started = time.perf_counter()
            latencies, entries, cpu = anyio.run(load, backend_options={"use_uvloop": True})
            elapsed = time.perf_counter() - started
            wal, disk, rss = sampler.sample()
            rss_start = sampler.rss_start
    return {
        "requests_per_s": round(requests / elapsed, 1),
        "request_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "request_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "daemon_cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "wal_peak_mb": round(sampler.wal_peak / MB, 2),
        "wal_final_mb": round(wal / MB, 2),
        "disk_peak_mb": round(sampler.disk_peak / MB, 2),
        "disk_final_mb": round(disk / MB, 2),
        "cache_entries": entries,
        "rss_start_mb": round(rss_start / MB, 1),
        "rss_end_mb": round(rss / MB, 1),
        "rss_per_entry_kb": round((rss - rss_start) / max(entries, 1) / 1024, 3),
    }


async def commit_latency(
    wal_limit_mb: float, writers: int, seconds: float, directory: Path
) -> tuple[list[float], int, WriteStats]:
    """Latencies of ``Ledger.record`` (each with a cache entry, as in step 7) from
    ``writers`` tasks for ``seconds``, the WAL's peak size and the database's write figures,
    with this WAL bound."""
    database = Database(directory / "quotad.db", wal_limit_mb=wal_limit_mb)
    await database.open()
    cache = Cache(CacheConfig(max_mb=1024), database, SYSTEM_CLOCK)
    ledger = Ledger(database, Calendar())
    wal_path = directory / "quotad.db-wal"
    latencies: list[float] = []
    wal_peak = 0
    usage = Usage(prompt_tokens=10, completion_tokens=16)
    deadline = time.perf_counter() + seconds
    number = 0

    async def writer() -> None:
        nonlocal number, wal_peak
        while time.perf_counter() < deadline:
            number += 1
            text = f"sim reply to: sustained {number} lorem ipsum dolor sit amet consectetur"
            key = hashlib.blake2b(f"request {number}".encode(), digest_size=16).digest()
            answer = CachedChat(text, None, "stop", usage, MODEL)
            row: LedgerRow = rows.ledger_row(number, at=time.time(), target=MODEL, cost=4e-5)
            started = time.perf_counter()
            cache.put(key, "chat", MODEL, answer, 4e-5)
            await ledger.record(row)
            latencies.append(time.perf_counter() - started)
            if number % 64 == 0:
                wal_peak = max(wal_peak, file_size(wal_path))

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        await database.close()
    return latencies, wal_peak, database.stats


def commit_latencies(writers: int, seconds: float, rounds: int) -> dict[str, float]:
    """``commit_latency`` with the WAL bound and without it, in alternating rounds, each on
    its own growing database."""
    arms = {"bounded": WAL_LIMIT_MB, "unbounded": 0.0}
    directories = {arm: Path(tempfile.mkdtemp(prefix="qload", dir="/tmp")) for arm in arms}
    latencies: dict[str, list[float]] = {arm: [] for arm in arms}
    wal_peaks = dict.fromkeys(arms, 0)
    held_s = held_max_s = 0.0
    restarts = 0
    try:
        for _ in range(rounds):
            for arm, limit in arms.items():
                measured, peak, stats = anyio.run(
                    commit_latency,
                    limit,
                    writers,
                    seconds,
                    directories[arm],
                    backend_options={"use_uvloop": True},
                )
                latencies[arm] += measured
                wal_peaks[arm] = max(wal_peaks[arm], peak)
                if arm == "bounded":
                    held_s += stats.wal_restart_held_s
                    held_max_s = max(held_max_s, stats.wal_restart_held_max_s)
                    restarts += stats.wal_restarts
    finally:
        for directory in directories.values():
            shutil.rmtree(directory, ignore_errors=True)
    figures: dict[str, float] = {}
    for arm in arms:
        figures[f"commit_{arm}_p50_ms"] = round(statistics.median(latencies[arm]) * 1000, 3)
        figures[f"commit_{arm}_p99_ms"] = round(percentile(latencies[arm], 0.99) * 1000, 3)
        figures[f"commit_{arm}_rows"] = len(latencies[arm])
        figures[f"commit_{arm}_wal_peak_mb"] = round(wal_peaks[arm] / MB, 2)
    figures["commit_bounded_wal_restarts"] = restarts
    figures["commit_bounded_held_share"] = round(held_s / (rounds * seconds), 4)
    figures["commit_bounded_held_max_ms"] = round(held_max_s * 1000, 1)
    figures["commit_p99_ratio"] = round(
        figures["commit_bounded_p99_ms"] / figures["commit_unbounded_p99_ms"], 3
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="per commit-latency round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a few seconds (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds, args.rounds = 2000, 0.5, 1
    figures: dict[str, Any] = {"bench": "store_load", "requests": args.requests}
    if args.baseline_src is not None:
        baseline = sustained(args.requests, args.concurrency, args.baseline_src)
        figures.update({f"baseline_{name}": value for name, value in baseline.items()})
    figures.update(sustained(args.requests, args.concurrency, None))
    if args.baseline_src is not None:
        for name in ("wal_final_mb", "disk_peak_mb", "rss_per_entry_kb"):
            figures[f"{name}_ratio"] = round(
                figures[name] / max(figures[f"baseline_{name}"], 1e-9), 3
            )
    figures.update(commit_latencies(args.writers, args.seconds, args.rounds))
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
