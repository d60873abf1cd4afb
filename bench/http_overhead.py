"""What the HTTP front door adds to a call: httpx → quotad HTTP → sim, against httpx → sim
directly.

Both paths send the same OpenAI chat request with the same httpx clients to the same
``quotad sim`` process (no latency, no limits), interleaved in rounds so that the noise of a
shared machine falls on both alike. At concurrency 1 it compares latency (p50, p99); at
concurrency 32 throughput. Every answer is checked (status 200, a completion); errors are
counted, not hidden. It also reports the CPU time the daemon spends per front-door request
(and the sim per direct request, for scale): unlike latency on a shared machine, that figure
does not depend on what else runs. Prints one JSON line.

With ``--baseline-source DIR`` a second daemon runs from the sources in DIR (a checkout of an
earlier commit) beside this one, and the three paths are interleaved in every round (direct
first, then the two front doors in an order that alternates from round to round); the
``baseline_*`` figures are the baseline's.

    uv run python bench/http_overhead.py [--rounds 6] [--requests 200] [--quick]
        [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import concurrent, cpu_seconds, percentile, rounds_main, sequential, source_env
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "measure the overhead of the front door please"}]
HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer sk-bench",
    "x-quotad-app": "bench",
    "x-quotad-cache": "bypass",
}


def body(model: str) -> bytes:
    return msgspec.json.encode({"model": model, "messages": MESSAGES, "max_tokens": 8})


class CpuMeter:
    """CPU seconds a process used during the blocks it measures."""

    def __init__(self, pid: int | None) -> None:
        assert pid is not None
        self.pid = pid
        self.total_s = 0.0

    def measure(self, call: Callable[[], list[float]]) -> list[float]:
        before = cpu_seconds(self.pid)
        result = call()
        self.total_s += cpu_seconds(self.pid) - before
        return result


class Errors:
    """Answers that were not a 200 with a completion, by path."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def check(self, response: httpx.Response, path: str) -> None:
        ok = response.status_code == 200 and response.json()["choices"][0]["message"]["content"]
        self.counts[path] = self.counts.get(path, 0) + (0 if ok else 1)


async def interleaved_rps(
    calls: list[Callable[[], Awaitable[None]]], rounds: int, count: int, concurrency: int
) -> list[list[float]]:
    """Requests per second of each of ``calls``, one round of each in turn (after a warm-up
    of each), so that the noise of a shared machine falls on all alike."""
    for call in calls:
        await concurrent(call, 2 * concurrency, concurrency)
    rps: list[list[float]] = [[] for _ in calls]
    for round_number in range(rounds):
        for index in in_turn(len(calls), round_number):
            rps[index].append(await concurrent(calls[index], count, concurrency))
    return rps


def in_turn(count: int, round_number: int) -> list[int]:
    """The order of ``count`` paths in a round: the first (direct) first, the others in
    turn forwards and backwards, so that no path always follows the same one."""
    others = list(range(1, count))
    return [0, *(others if round_number % 2 == 0 else reversed(others))]


def measure(rounds: int, requests: int, baseline_source: str | None) -> dict[str, Any]:
    errors = Errors()
    paths = ["direct", "front_door"] + (["baseline"] if baseline_source else [])
    ports = {path: free_port() for path in paths[1:]}
    with SimProcess() as sim, contextlib.ExitStack() as stack:
        daemons: dict[str, DaemonProcess] = {}
        for path in paths[1:]:
            provider = sim_provider_config("sim", sim.base_url)
            config = daemon_config(
                provider,
                http=f'listen = "127.0.0.1:{ports[path]}"\nauth = "none"',
                cache='mode = "off"',
            )
            env = source_env(baseline_source if path == "baseline" else None)
            daemons[path] = stack.enter_context(DaemonProcess(config, env=env))
        urls = {
            path: f"http://127.0.0.1:{port}/v1/chat/completions" for path, port in ports.items()
        }
        urls["direct"] = f"{sim.base_url}/chat/completions"
        bodies = {path: body("sim/gpt-4o-mini") for path in paths}
        bodies["direct"] = body("gpt-4o-mini")
        c1: dict[str, list[float]] = {path: [] for path in paths}
        meters = {"direct": CpuMeter(sim.pid)}
        for path, daemon in daemons.items():
            meters[path] = CpuMeter(daemon.process.pid if daemon.process else None)
        with httpx.Client(trust_env=False) as http:

            def caller(path: str) -> Callable[[], None]:
                def call() -> None:
                    response = http.post(urls[path], content=bodies[path], headers=HEADERS)
                    errors.check(response, path)

                return call

            calls = {path: caller(path) for path in paths}
            for path in paths:  # warm every path
                sequential(calls[path], 50)
            for round_number in range(rounds):
                for path in [paths[index] for index in in_turn(len(paths), round_number)]:
                    c1[path] += meters[path].measure(
                        lambda path=path: sequential(calls[path], requests)  # type: ignore[misc]
                    )

        async def c32() -> list[list[float]]:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            async with httpx.AsyncClient(limits=limits, trust_env=False) as http:

                def caller(path: str) -> Callable[[], Awaitable[None]]:
                    async def call() -> None:
                        response = await http.post(
                            urls[path], content=bodies[path], headers=HEADERS
                        )
                        errors.check(response, path)

                    return call

                return await interleaved_rps(
                    [caller(path) for path in paths], rounds, requests * 2, 32
                )

        rps = dict(zip(paths, anyio.run(c32, backend_options={"use_uvloop": True}), strict=True))

    direct_p50 = statistics.median(c1["direct"])
    direct_rps = statistics.median(rps["direct"])
    figures: dict[str, Any] = {
        "bench": "http_overhead",
        "requests_per_path_c1": len(c1["direct"]),
        "c1_direct_p50_ms": round(direct_p50 * 1000, 3),
        "c1_direct_p99_ms": round(percentile(c1["direct"], 0.99) * 1000, 3),
        "c1_sim_cpu_us_per_request": round(meters["direct"].total_s / len(c1["direct"]) * 1e6),
        "c32_direct_rps": round(direct_rps, 1),
        "errors_direct": errors.counts.get("direct", 0),
    }
    for path in paths[1:]:
        prefix = "" if path == "front_door" else "baseline_"
        p50 = statistics.median(c1[path])
        path_rps = statistics.median(rps[path])
        figures |= {
            f"{prefix}c1_front_door_p50_ms": round(p50 * 1000, 3),
            f"{prefix}c1_added_p50_ms": round((p50 - direct_p50) * 1000, 3),
            f"{prefix}c1_front_door_p99_ms": round(percentile(c1[path], 0.99) * 1000, 3),
            f"{prefix}c1_daemon_cpu_us_per_request": round(
                meters[path].total_s / len(c1[path]) * 1e6
            ),
            f"{prefix}c32_front_door_rps": round(path_rps, 1),
            f"{prefix}c32_throughput_ratio": round(path_rps / direct_rps, 3),
            f"{prefix}errors_front_door": errors.counts.get(path, 0),
        }
    return figures


def main() -> None:
    rounds_main(__doc__, measure, rounds=6, requests=200, quick_requests=20)


if __name__ == "__main__":
    main()
