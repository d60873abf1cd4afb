"""What the daemon adds to a call: native client → quotad → sim, against httpx → sim directly.

Both paths hit the same ``quotad sim`` process (no latency, no limits) in one run, interleaved
in rounds so that the noise of a shared machine falls on both alike. At concurrency 1 it
compares latency (p50, p99); at concurrency 32 throughput. With ``--baseline-src DIR`` (a
checkout of another commit), that commit's daemon is measured at concurrency 1 too, in the
same rounds, and the ``before_`` figures and the after/before ratios (latency and the daemon's
CPU per request) are added. Prints one JSON line.

    uv run python bench/overhead.py [--rounds 6] [--requests 200] [--baseline-src DIR] [--quick]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import (
    cpu_seconds,
    interleaved_throughput,
    percentile,
    rounds_main,
    sequential,
    source_env,
)
from quotad.client import AsyncClient, Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "measure the overhead of the daemon please"}]
BODY = msgspec.json.encode({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 8})


def measure(rounds: int, requests: int, baseline_src: str | None = None) -> dict[str, Any]:
    with SimProcess() as sim, contextlib.ExitStack() as stack:
        config = daemon_config(sim_provider_config("sim", sim.base_url), cache='mode = "off"')
        daemon = stack.enter_context(DaemonProcess(config))
        baseline = None
        if baseline_src is not None:
            env = source_env(baseline_src)
            baseline = stack.enter_context(DaemonProcess(config, env=env))
        url = f"{sim.base_url}/chat/completions"
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
        direct_c1: list[float] = []
        daemon_c1: list[float] = []
        before_c1: list[float] = []
        cpu = {"": 0.0, "before_": 0.0}
        with httpx.Client() as http, contextlib.ExitStack() as clients:
            native = clients.enter_context(Client(socket=daemon.socket_path, app="bench"))

            def direct() -> None:
                http.post(url, content=BODY, headers=headers).raise_for_status()

            def through(client: Client) -> Callable[[], None]:
                def call() -> None:
                    client.chat("sim/gpt-4o-mini", MESSAGES, max_tokens=8, cache="bypass")

                return call

            arms = {"": (daemon, through(native), daemon_c1)}
            if baseline is not None:
                old = clients.enter_context(Client(socket=baseline.socket_path, app="bench"))
                arms["before_"] = (baseline, through(old), before_c1)
            sequential(direct, 50)  # warm every path
            for _, call, _ in arms.values():
                sequential(call, 50)
            for _ in range(rounds):
                direct_c1 += sequential(direct, requests)
                for arm, (process, call, samples) in arms.items():
                    assert process.process is not None
                    used = cpu_seconds(process.process.pid)
                    samples += sequential(call, requests)
                    cpu[arm] += cpu_seconds(process.process.pid) - used

        async def c32() -> tuple[list[float], list[float]]:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            async with (
                httpx.AsyncClient(limits=limits) as http,
                AsyncClient(socket=daemon.socket_path, app="bench") as native,
            ):

                async def direct() -> None:
                    response = await http.post(url, content=BODY, headers=headers)
                    response.raise_for_status()

                async def through_daemon() -> None:
                    await native.chat("sim/gpt-4o-mini", MESSAGES, max_tokens=8, cache="bypass")

                return await interleaved_throughput(
                    direct, through_daemon, rounds, requests * 2, 32
                )

        direct_rps, daemon_rps = anyio.run(c32, backend_options={"use_uvloop": True})

    direct_p50 = statistics.median(direct_c1)
    daemon_p50 = statistics.median(daemon_c1)
    figures: dict[str, Any] = {
        "bench": "overhead",
        "requests_per_path_c1": len(direct_c1),
        "c1_direct_p50_ms": round(direct_p50 * 1000, 3),
        "c1_daemon_p50_ms": round(daemon_p50 * 1000, 3),
        "c1_added_p50_ms": round((daemon_p50 - direct_p50) * 1000, 3),
        "c1_direct_p99_ms": round(percentile(direct_c1, 0.99) * 1000, 3),
        "c1_daemon_p99_ms": round(percentile(daemon_c1, 0.99) * 1000, 3),
        "c1_latency_ratio": round(daemon_p50 / direct_p50, 3),
        "c32_direct_rps": round(statistics.median(direct_rps), 1),
        "c32_daemon_rps": round(statistics.median(daemon_rps), 1),
        "c32_throughput_ratio": round(
            statistics.median(daemon_rps) / statistics.median(direct_rps), 3
        ),
        "c1_daemon_cpu_us_per_request": round(cpu[""] / len(daemon_c1) * 1e6),
    }
    if before_c1:
        before_p50 = statistics.median(before_c1)
        before_cpu = cpu["before_"] / len(before_c1)
        figures["before_c1_daemon_p50_ms"] = round(before_p50 * 1000, 3)
        figures["before_c1_added_p50_ms"] = round((before_p50 - direct_p50) * 1000, 3)
        figures["before_c1_daemon_cpu_us_per_request"] = round(before_cpu * 1e6)
        figures["c1_p50_after_before_ratio"] = round(daemon_p50 / before_p50, 3)
        figures["c1_cpu_after_before_ratio"] = round(cpu[""] / len(daemon_c1) / before_cpu, 3)
    return figures


def main() -> None:
    rounds_main(__doc__, measure, rounds=6, requests=200, quick_requests=20)


if __name__ == "__main__":
    main()
