"""What a ``GET /metrics`` scrape costs a real daemon whose metrics tables are full, and what it
does to the other requests it serves meanwhile.

A real ``quotad serve`` (front door on, cache off) in front of a real ``quotad sim`` is filled
through its front door the way clients naming models and apps without end fill it:
``--targets`` models named ``sim/m-N``, ``--pairs`` (target, app) pairs over 1,000 apps, then
every target once more with one app more (a reload after every 1,000 requests, since the router
makes at most 1,024 targets by name per config). Then rounds of a probe (sequential chat
completions through the front door) alone and with a scraper reading ``/metrics`` back to back,
in turn, so that the noise of a shared machine falls on both alike. Figures: the body's size, a
scrape's time to its first byte (the loop held, when the text is written at once) and to its
last, the daemon's peak RSS above its RSS before the scrapes (VmHWM, reset through
``/proc/PID/clear_refs``), and the probe's latency with scrapes over without (ratios of p50,
p99 and max).

With ``--baseline-source DIR`` a second daemon runs from the sources in DIR (a checkout of an
earlier commit), filled by the same requests; the ``baseline_*`` figures are its own. Prints
one JSON line.

    uv run python bench/metrics_scrape.py [--targets 4100] [--pairs 10000] [--rounds 3]
        [--probes 100] [--quick] [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import bench_parser, front_door_daemon, percentile, print_figures
from quotad.client import AsyncClient
from tests.support.daemon import DaemonProcess, sim_provider_config
from tests.support.sim import SimProcess

APPS = 1000
RELOAD_EVERY = 1000
CONCURRENCY = 16
PROBE = msgspec.json.encode(
    {"model": "sim/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
)


class Daemon:
    """One daemon under test: its process, front door URL and what was measured of it."""

    def __init__(self, process: DaemonProcess, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.pid = process.process.pid if process.process else 0
        self.errors = 0
        self.idle: list[float] = []
        self.scraping: list[float] = []
        self.first_byte: list[float] = []
        self.whole: list[float] = []
        self.body_bytes = 0
        self.rss_before_kb = 0
        self.peak_added_kb = 0

    def mark_rss(self) -> None:
        """Remember the RSS now, and make it the peak (VmHWM) from which the scrapes' is read."""
        self.rss_before_kb = self.proc_kb("VmRSS")
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def proc_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0


async def chat(http: httpx.AsyncClient, daemon: Daemon, model: str, app: str) -> None:
    body = msgspec.json.encode(
        {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    )
    headers = {"content-type": "application/json", "x-quotad-app": app, "x-quotad-cache": "bypass"}
    response = await http.post(f"{daemon.url}/v1/chat/completions", content=body, headers=headers)
    if response.status_code != 200:
        daemon.errors += 1


async def fill(daemons: list[Daemon], targets: int, pairs: int) -> None:
    """Every request to every daemon: the targets (reloading every RELOAD_EVERY), the pairs,
    then each target with one app more."""
    work: list[tuple[str, str]] = []
    for number in range(targets):
        work.append((f"sim/m-{number}", f"app-{number % APPS}"))
    for number in range(max(1, pairs // APPS)):
        work.extend((f"sim/m-{number}", f"app-{app}") for app in range(APPS))
    work.extend((f"sim/m-{number}", "app-late") for number in range(targets))
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        for start in range(0, len(work), RELOAD_EVERY):
            if start:  # the router makes at most 1,024 targets by name per config
                for daemon in daemons:
                    socket = str(daemon.process.socket_path)
                    async with AsyncClient(socket=socket, app="bench-operator") as client:
                        await client.admin("reload")
            batch = iter(work[start : start + RELOAD_EVERY])

            async def worker(batch: Any = batch) -> None:
                for model, app in batch:
                    for daemon in daemons:
                        await chat(http, daemon, model, app)

            async with anyio.create_task_group() as group:
                for _ in range(CONCURRENCY):
                    group.start_soon(worker)


async def probe(http: httpx.AsyncClient, daemon: Daemon, count: int) -> list[float]:
    latencies = []
    headers = {"content-type": "application/json", "x-quotad-app": "probe"}
    for _ in range(count):
        started = time.perf_counter()
        response = await http.post(
            f"{daemon.url}/v1/chat/completions", content=PROBE, headers=headers
        )
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            daemon.errors += 1
    return latencies


async def scrape_while(http: httpx.AsyncClient, daemon: Daemon, done: anyio.Event) -> None:
    while not done.is_set():
        started = time.perf_counter()
        size = 0
        async with http.stream("GET", f"{daemon.url}/metrics") as response:
            async for chunk in response.aiter_raw():
                if not size:
                    daemon.first_byte.append(time.perf_counter() - started)
                size += len(chunk)
        daemon.whole.append(time.perf_counter() - started)
        daemon.body_bytes = size
        daemon.peak_added_kb = max(
            daemon.peak_added_kb, daemon.proc_kb("VmHWM") - daemon.rss_before_kb
        )


async def measure_one(daemon: Daemon, probes: int, scraping: bool) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        await probe(http, daemon, 3)  # warm
        if not scraping:
            daemon.idle += await probe(http, daemon, probes)
            return
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(scrape_while, http, daemon, done)
            daemon.scraping += await probe(http, daemon, probes)
            done.set()


async def run(daemons: list[Daemon], args: argparse.Namespace) -> None:
    await fill(daemons, args.targets, args.pairs)
    for daemon in daemons:
        daemon.mark_rss()
    for round_number in range(args.rounds):
        order = daemons if round_number % 2 == 0 else daemons[::-1]
        for daemon in order:
            for scraping in (False, True) if round_number % 2 == 0 else (True, False):
                await measure_one(daemon, args.probes, scraping)


def figures(daemon: Daemon) -> dict[str, Any]:
    def ratio(fraction: float) -> float:
        return round(percentile(daemon.scraping, fraction) / percentile(daemon.idle, fraction), 2)

    return {
        "body_bytes": daemon.body_bytes,
        "scrapes": len(daemon.whole),
        "scrape_first_byte_ms_p50": round(statistics.median(daemon.first_byte) * 1000, 1),
        "scrape_whole_ms_p50": round(statistics.median(daemon.whole) * 1000, 1),
        "rss_before_mb": round(daemon.rss_before_kb / 1024, 1),
        "peak_rss_added_mb": round(daemon.peak_added_kb / 1024, 1),
        "probe_idle_ms_p50": round(percentile(daemon.idle, 0.5) * 1000, 2),
        "probe_scraping_ms_p50": round(percentile(daemon.scraping, 0.5) * 1000, 2),
        "probe_p50_ratio": ratio(0.5),
        "probe_p99_ratio": ratio(0.99),
        "probe_max_ratio": round(max(daemon.scraping) / max(daemon.idle), 2),
        "errors": daemon.errors,
    }


def main() -> None:
    parser = bench_parser(__doc__, "a small fill, one round", targets=4100, pairs=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--baseline-source", "--baseline-src", dest="baseline_source")
    args = parser.parse_args()
    if args.quick:
        args.targets, args.pairs, args.rounds, args.probes = 30, 1000, 1, 10
    arms = ["this"] + (["baseline"] if args.baseline_source else [])
    with SimProcess() as sim, contextlib.ExitStack() as stack:
        daemons = []
        for arm in arms:
            source = args.baseline_source if arm == "baseline" else None
            provider = sim_provider_config("sim", sim.base_url)
            daemon, port = front_door_daemon(stack, source, provider, cache='mode = "off"')
            daemons.append(Daemon(daemon, port))
        anyio.run(run, daemons, args)
    result: dict[str, Any] = {"bench": "metrics_scrape", "targets": args.targets}
    result["pairs"] = args.pairs
    result.update(figures(daemons[0]))
    if len(daemons) > 1:
        result.update({f"baseline_{key}": value for key, value in figures(daemons[1]).items()})
    print_figures(result)


if __name__ == "__main__":
    main()
