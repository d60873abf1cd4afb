"""What the daemon adds to a call: native client → quotad → sim, against httpx → sim directly.

Both paths hit the same ``quotad sim`` process (no latency, no limits) in one run, interleaved
in rounds so that the noise of a shared machine falls on both alike. At concurrency 1 it
compares latency (p50, p99); at concurrency 32 throughput. Prints one JSON line.

    uv run python bench/overhead.py [--rounds 6] [--requests 200] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import interleaved_throughput, percentile, sequential
from quotad.client import AsyncClient, Client
from tests.support.daemon import DaemonProcess, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "measure the overhead of the daemon please"}]
BODY = msgspec.json.encode({"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 8})
CONFIG = """\
[daemon]
state_dir = "{{state_dir}}"
[http]
listen = ""
[cache]
mode = "off"
{provider}
"""


def measure(rounds: int, requests: int) -> dict[str, Any]:
    with (
        SimProcess() as sim,
        DaemonProcess(CONFIG.format(provider=sim_provider_config("sim", sim.base_url))) as daemon,
    ):
        url = f"{sim.base_url}/chat/completions"
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
        direct_c1: list[float] = []
        daemon_c1: list[float] = []
        with httpx.Client() as http, Client(socket=daemon.socket_path, app="bench") as native:

            def direct() -> None:
                http.post(url, content=BODY, headers=headers).raise_for_status()

            def through_daemon() -> None:
                native.chat("sim/gpt-4o-mini", MESSAGES, max_tokens=8, cache="bypass")

            sequential(direct, 50)  # warm both paths
            sequential(through_daemon, 50)
            for _ in range(rounds):
                direct_c1 += sequential(direct, requests)
                daemon_c1 += sequential(through_daemon, requests)

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
    return {
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a few requests (smoke test)")
    args = parser.parse_args()
    rounds, requests = (1, 20) if args.quick else (args.rounds, args.requests)
    print(msgspec.json.encode(measure(rounds, requests)).decode(), flush=True)


if __name__ == "__main__":
    main()
