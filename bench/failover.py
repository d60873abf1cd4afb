"""What failover costs: a group ``fast = [a/m, b/m]`` (strategy failover) over two identical
``quotad sim`` processes, before, during and after its primary is SIGKILLed.

1. all healthy: sequential requests to the group (served by the primary), interleaved with
   requests to the secondary directly, for the control;
2. the kill: ``--workers`` clients load the group while the primary is killed; every request
   that fails is lost (must be 0);
3. primary down, its breaker open: the same interleaved measurement (the group is now served
   by the secondary); the added latency is p50(group, down) - p50(group, healthy); machine noise
   between phases falls on it, so the same phase's p50(group) - p50(secondary direct) and
   their ratio say what the dead primary still costs (0 ms, 1.0: nothing);
4. the primary restarted: how long until a probe succeeds and traffic is back on it.

Prints one JSON line.

    uv run python bench/failover.py [--requests 300] [--latency-ms 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.client import AsyncClient, Client, QuotadError
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "measure what failover costs"}]
BREAKER = "breaker = {{ failures = 3, cooldown_s = 1, max_cooldown_s = 2 }}"
GROUP = """\
[models.fast]
targets = ["a/m", "b/m"]
strategy = "failover"
"""


def interleaved(client: Client, requests: int) -> tuple[list[float], list[float], set[str]]:
    """Latencies of ``requests`` calls to the group and as many to the secondary directly,
    alternating; and the targets that served the group."""
    group: list[float] = []
    direct: list[float] = []
    served: set[str] = set()
    for _ in range(requests):
        started = time.perf_counter()
        reply = client.chat("fast", MESSAGES, max_tokens=4, cache="bypass")
        group.append(time.perf_counter() - started)
        served.add(reply.target)
        started = time.perf_counter()
        client.chat("b/m", MESSAGES, max_tokens=4, cache="bypass")
        direct.append(time.perf_counter() - started)
    return group, direct, served


async def load_through_kill(
    socket: Path, primary: SimProcess, workers: int, before_s: float, after_s: float
) -> tuple[int, int, dict[str, int]]:
    """Requests made and lost by ``workers`` clients while the primary is killed, and the
    targets that served them."""
    served: dict[str, int] = {}
    lost = 0
    stop = anyio.Event()
    async with AsyncClient(socket=socket, app="bench-kill") as client:

        async def worker() -> None:
            nonlocal lost
            while not stop.is_set():
                try:
                    reply = await client.chat("fast", MESSAGES, max_tokens=4, cache="bypass")
                except QuotadError:
                    lost += 1
                else:
                    served[reply.target] = served.get(reply.target, 0) + 1

        async with anyio.create_task_group() as tasks:
            for _ in range(workers):
                tasks.start_soon(worker)
            await anyio.sleep(before_s)
            primary.kill()
            await anyio.sleep(after_s)
            stop.set()
    return sum(served.values()) + lost, lost, served


def wait_breaker(client: Client, state: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(t.name == "a/m" and t.breaker == state for t in client.status().targets):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the primary's breaker did not turn {state} within {timeout_s} s")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def measure(requests: int, latency_ms: float, workers: int, kill_s: float) -> dict[str, Any]:
    with (
        SimProcess(latency_ms=latency_ms) as primary,
        SimProcess(latency_ms=latency_ms) as secondary,
    ):
        providers = sim_provider_config(
            "a", primary.base_url, extra=f"timeout_s = 5\n{BREAKER}"
        ) + sim_provider_config("b", secondary.base_url)
        with (
            DaemonProcess(daemon_config(providers, GROUP, cache='mode = "off"')) as daemon,
            Client(socket=daemon.socket_path, app="bench") as client,
        ):
            interleaved(client, 20)  # warm both paths
            healthy_group, healthy_direct, healthy_served = interleaved(client, requests)

            kill_requests, kill_lost, kill_served = anyio.run(
                load_through_kill,
                daemon.socket_path,
                primary,
                workers,
                kill_s / 2,
                kill_s / 2,
                backend_options={"use_uvloop": True},
            )
            wait_breaker(client, "open")
            down_group, down_direct, down_served = interleaved(client, requests)

            primary.start()  # same port
            restarted = time.perf_counter()
            while client.chat("fast", MESSAGES, max_tokens=4, cache="bypass").target != "a/m":
                time.sleep(0.01)
            recovery_s = time.perf_counter() - restarted
            opens = next(t.breaker_opens for t in client.status().targets if t.name == "a/m")

    healthy_p50 = statistics.median(healthy_group)
    down_p50 = statistics.median(down_group)
    direct_p50 = statistics.median(down_direct)
    return {
        "bench": "failover",
        "requests_per_phase": requests,
        "sim_latency_ms": latency_ms,
        "healthy_served_by": sorted(healthy_served),
        "down_served_by": sorted(down_served),
        "p50_healthy_ms": ms(healthy_p50),
        "p50_primary_down_ms": ms(down_p50),
        "p50_added_ms": ms(down_p50 - healthy_p50),
        "p50_secondary_direct_healthy_ms": ms(statistics.median(healthy_direct)),
        "p50_secondary_direct_down_ms": ms(direct_p50),
        "p50_added_vs_direct_ms": ms(down_p50 - direct_p50),
        "down_vs_direct_ratio": round(down_p50 / direct_p50, 3),
        "kill_workers": workers,
        "kill_requests": kill_requests,
        "kill_lost": kill_lost,
        "kill_served": kill_served,
        "breaker_opens": opens,
        "recovery_s": round(recovery_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="per phase and path")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="each sim's latency")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients in the kill")
    parser.add_argument("--kill-s", type=float, default=4.0, help="load time around the kill")
    parser.add_argument("--quick", action="store_true", help="a few requests (smoke test)")
    args = parser.parse_args()
    requests, kill_s = (30, 1.0) if args.quick else (args.requests, args.kill_s)
    figures = measure(requests, args.latency_ms, args.workers, kill_s)
    print(msgspec.json.encode(figures).decode(), flush=True)
    if figures["kill_lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
