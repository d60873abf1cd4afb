"""What ``quotad top`` costs the daemon: throughput with and without a live subscriber at 10
snapshots a second, and the share of the daemon's CPU a subscription takes.

One ``quotad sim`` (no latency) behind one daemon (cache off), and two measurements:

- **throughput**: 32 concurrent native-client chats (closed loop) in three arms, in rotating
  order round by round so that the noise of a shared machine falls on all alike: ``alone``;
  with one bare subscription (``AsyncClient.subscribe(0.1)`` in a separate process); with the
  real TUI (``TopApp`` headless at 120x36, 0.1 s, in a separate process: its own rendering
  competes for the machine's CPU too). The figures are the medians of the round-by-round
  ratios (with / alone). On a small shared machine the sim, the client and the TUI share the
  CPU with the daemon, so these ratios are noisy.
- **daemon CPU**: under a steady open-loop load (half the measured capacity), a subscriber
  process switches ``--subscriptions`` subscriptions on and off every ``--window`` seconds; the
  daemon's CPU seconds are read from /proc for each window. The mean of the paired
  differences (on - off; a mean, because /proc counts in clock ticks), divided by the number
  of subscriptions, is what one subscription at 10 snapshots a second takes of one core. The
  daemon serves on one event loop, so that share of a core is the share of its capacity (its
  throughput) the subscription costs. Paired short windows and many subscriptions lift the
  figure out of the noise. Then, under the same load, the real TUI runs for as long again, and
  its own CPU share is read the same way.

Prints one JSON line.

    uv run python bench/tui_cost.py [--rounds 5] [--requests 1000] [--pairs 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import concurrent, cpu_seconds
from quotad.client import AsyncClient, Snapshot
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

INTERVAL_S = 0.1
CONCURRENCY = 32
MAX_OUTSTANDING = 256  # steady load: calls running at once, at most
READY = "ready"
MESSAGES = [{"role": "user", "content": "measure what a subscriber costs the daemon"}]


# --------------------------------------------------------------------------- subscriber processes


def run_switched_subscriber(socket: str) -> None:
    """Read ``on N`` / ``off`` lines from stdin: hold N subscriptions at :data:`INTERVAL_S`
    (answering ``ready`` once each has a snapshot) or none (answering ``ready`` at once)."""

    async def main() -> None:
        async with AsyncClient(socket, app="bench-subscriber") as client:
            group: anyio.abc.TaskGroup | None = None
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                command = line.split()
                if group is not None:
                    group.cancel_scope.cancel()
                    await group.__aexit__(None, None, None)
                    group = None
                if command[0] == "on":
                    group = anyio.create_task_group()
                    await group.__aenter__()
                    for _ in range(int(command[1])):
                        await group.start(follow, client)
                print(READY, flush=True)

    async def follow(client: AsyncClient, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with client.subscribe(INTERVAL_S) as snapshots:
            async for _ in snapshots:
                task_status.started()
                task_status = anyio.TASK_STATUS_IGNORED

    anyio.run(main)


def run_tui_subscriber(socket: str) -> None:
    """Run the real TUI headless at 120x36 until SIGTERM; print how many snapshots arrived."""
    from quotad.tui.app import TopApp
    from quotad.tui.feed import DaemonFeed, FeedEvent

    class ReportingApp(TopApp):
        def on_mount(self) -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit)

        def deliver(self, event: FeedEvent) -> None:
            super().deliver(event)
            if self.monitor.snapshots == 1 and isinstance(event, Snapshot):
                print(READY, flush=True)

    app = ReportingApp(DaemonFeed(socket, INTERVAL_S))
    app.run(headless=True, size=(120, 36))
    print(app.monitor.snapshots, flush=True)


class Child:
    """This file run as a child process, its stderr kept in a temporary file to show when it
    fails to answer."""

    def __init__(self, *args: str) -> None:
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the child)
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def expect_ready(self, what: str) -> None:
        """Wait for its ``ready`` line; if another comes, kill it and raise with its stderr."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != READY:
            self.process.kill()
            self.process.wait(30)
            self.stderr.seek(0)
            said = self.stderr.read()[-2000:]
            raise RuntimeError(f"the {what} did not answer ready: {line!r}; its stderr:\n{said}")


class SwitchedSubscriber:
    """The subscriber process whose subscriptions the bench switches on and off."""

    def __init__(self, socket: Path) -> None:
        self.child = Child("--subscriber", "switched", "--socket", str(socket))
        self.process = self.child.process

    def switch(self, subscriptions: int) -> None:
        """Hold ``subscriptions`` subscriptions (0: none), once each has had a snapshot."""
        stdin: IO[str] | None = self.process.stdin
        assert stdin is not None
        stdin.write(f"on {subscriptions}\n" if subscriptions else "off\n")
        stdin.flush()
        self.child.expect_ready("switched subscriber")

    def close(self) -> None:
        """End the process (its stdin closes, it leaves)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


class TuiProcess:
    """``quotad top`` headless in its own process, ready once it has had a snapshot."""

    def __init__(self, socket: Path) -> None:
        self.child = Child("--subscriber", "tui", "--socket", str(socket))
        self.process = self.child.process
        self.child.expect_ready("TUI")
        self.started = time.monotonic()
        self.cpu_started = cpu_seconds(self.process.pid)

    def cpu_share(self) -> float:
        """Its own CPU time since started, as a share of one core."""
        elapsed = time.monotonic() - self.started
        return (cpu_seconds(self.process.pid) - self.cpu_started) / elapsed

    def stop(self) -> float:
        """Stop it; the snapshots per second it got."""
        elapsed = time.monotonic() - self.started
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        return int(output.split()[-1]) / elapsed


# --------------------------------------------------------------------------- load


async def steady_load(
    call: Callable[[], Coroutine[Any, Any, Any]], rate: float, until: anyio.Event
) -> None:
    """Start ``call`` ``rate`` times a second (open loop) until ``until`` is set.

    A start that comes due while ``MAX_OUTSTANDING`` calls are still running is skipped, and a
    schedule fallen behind is not caught up in a burst: on a loaded machine an open loop
    would otherwise pile up calls until the daemon refuses them (its in-flight cap per
    connection) instead of measuring anything.
    """
    outstanding = 0

    async def counted() -> None:
        nonlocal outstanding
        outstanding += 1
        try:
            await call()
        finally:
            outstanding -= 1

    async with anyio.create_task_group() as group:
        interval = 1 / rate
        due = anyio.current_time()
        while not until.is_set():
            await anyio.sleep_until(due)
            if outstanding < MAX_OUTSTANDING:
                group.start_soon(counted)
            due = max(due + interval, anyio.current_time())


# --------------------------------------------------------------------------- measuring


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the round-by-round ratios."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def measure(
    rounds: int, requests: int, pairs: int, window_s: float, subscriptions: int
) -> dict[str, Any]:
    rps: dict[str, list[float]] = {"alone": [], "subscriber": [], "tui": []}
    tui_snapshot_rates: list[float] = []
    cpu_off: list[float] = []
    cpu_on: list[float] = []
    figures: dict[str, Any] = {}
    with (
        SimProcess() as sim,
        DaemonProcess(
            daemon_config(
                sim_provider_config("sim", sim.base_url), daemon="drain_s = 1", cache='mode = "off"'
            )
        ) as daemon,
    ):
        assert daemon.process is not None
        pid = daemon.process.pid
        subscriber = SwitchedSubscriber(daemon.socket_path)

        async def run() -> None:
            async with AsyncClient(daemon.socket_path, app="bench") as native:

                async def chat() -> None:
                    await native.chat("sim/gpt-4o-mini", MESSAGES, max_tokens=8)

                async def arm(name: str) -> None:
                    if name == "alone":
                        rps[name].append(await concurrent(chat, requests, CONCURRENCY))
                    elif name == "subscriber":
                        await anyio.to_thread.run_sync(subscriber.switch, 1)
                        rps[name].append(await concurrent(chat, requests, CONCURRENCY))
                        await anyio.to_thread.run_sync(subscriber.switch, 0)
                    else:
                        tui = await anyio.to_thread.run_sync(TuiProcess, daemon.socket_path)
                        try:
                            rps[name].append(await concurrent(chat, requests, CONCURRENCY))
                        finally:
                            rate_seen = await anyio.to_thread.run_sync(tui.stop)
                            tui_snapshot_rates.append(rate_seen)

                # warms up; sets the steady rate
                capacity = await concurrent(chat, requests, CONCURRENCY)
                orders = [("alone", "subscriber", "tui"), ("tui", "alone", "subscriber"),
                          ("subscriber", "tui", "alone")]  # fmt: skip
                for number in range(rounds):
                    for name in orders[number % len(orders)]:
                        await arm(name)

                rate = capacity / 2
                done = anyio.Event()
                async with anyio.create_task_group() as group:
                    group.start_soon(steady_load, chat, rate, done)
                    await anyio.sleep(window_s)  # let the load settle
                    for _ in range(pairs):
                        for count, samples in ((0, cpu_off), (subscriptions, cpu_on)):
                            await anyio.to_thread.run_sync(subscriber.switch, count)
                            before, started = cpu_seconds(pid), time.monotonic()
                            await anyio.sleep(window_s)
                            elapsed = time.monotonic() - started
                            samples.append((cpu_seconds(pid) - before) / elapsed)
                    await anyio.to_thread.run_sync(subscriber.switch, 0)
                    tui = await anyio.to_thread.run_sync(TuiProcess, daemon.socket_path)
                    await anyio.sleep(pairs * window_s)
                    figures["tui_own_cpu_pct"] = round(tui.cpu_share() * 100, 1)
                    tui_snapshot_rates.append(await anyio.to_thread.run_sync(tui.stop))
                    done.set()
                figures["steady_rps"] = round(rate, 1)

        try:
            anyio.run(run, backend_options={"use_uvloop": True})
        finally:
            subscriber.close()

    differences = [on - off for on, off in zip(cpu_on, cpu_off, strict=True)]
    per_subscription = statistics.fmean(differences) / subscriptions
    subscriber_ratio = median_ratio(rps["subscriber"], rps["alone"])
    tui_ratio = median_ratio(rps["tui"], rps["alone"])
    return {
        "bench": "tui_cost",
        "interval_s": INTERVAL_S,
        "rounds": rounds,
        "requests_per_measurement": requests,
        "concurrency": CONCURRENCY,
        "rps_alone": round(statistics.median(rps["alone"]), 1),
        "rps_with_subscriber": round(statistics.median(rps["subscriber"]), 1),
        "rps_with_tui": round(statistics.median(rps["tui"]), 1),
        "subscriber_throughput_ratio": round(subscriber_ratio, 3),
        "tui_throughput_ratio": round(tui_ratio, 3),
        "tui_snapshots_per_s": round(statistics.median(tui_snapshot_rates), 1),
        **figures,
        "cpu_windows": pairs,
        "window_s": window_s,
        "subscriptions_switched": subscriptions,
        "daemon_cpu_pct_without": round(statistics.median(cpu_off) * 100, 1),
        "daemon_cpu_pct_with": round(statistics.median(cpu_on) * 100, 1),
        "subscription_daemon_cost_pct": round(per_subscription * 100, 3),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=10, help="on/off pairs of CPU windows")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per CPU window")
    parser.add_argument("--subscriptions", type=int, default=20, help="switched on together")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, one pair")
    parser.add_argument("--subscriber", choices=["switched", "tui"], help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber == "switched":
        run_switched_subscriber(args.socket)
        return
    if args.subscriber == "tui":
        run_tui_subscriber(args.socket)
        return
    if args.quick:
        args.rounds, args.requests, args.pairs, args.window = 1, 100, 1, 0.25
    figures = measure(args.rounds, args.requests, args.pairs, args.window, args.subscriptions)
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
