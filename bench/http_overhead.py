"""What the HTTP front door adds to a call: httpx → quotad HTTP → sim, against httpx → sim
directly.

Both paths send the same OpenAI chat request with the same httpx clients to the same
``quotad sim`` process (no latency, no limits), interleaved in rounds so that the noise of a
shared machine falls on both alike. At concurrency 1 it compares latency (p50, p99); at
concurrency 32 throughput. Every answer is checked (status 200, a completion); errors are
counted, not hidden. It also reports the CPU time the daemon spends per front-door request
(and the sim per direct request, for scale): unlike latency on a shared machine, that figure
does not depend on what else runs. Prints one JSON line.

    uv run python bench/http_overhead.py [--rounds 6] [--requests 200] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, interleaved_throughput, percentile, sequential
from tests.support.daemon import DaemonProcess, free_port, sim_provider_config
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "measure the overhead of the front door please"}]
CONFIG = """\
[daemon]
state_dir = "{{state_dir}}"
[http]
listen = "127.0.0.1:{port}"
auth = "none"
[cache]
mode = "off"
{provider}
"""
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
        self.direct = 0
        self.front_door = 0

    def check(self, response: httpx.Response, path: str) -> None:
        if response.status_code != 200 or not response.json()["choices"][0]["message"]["content"]:
            setattr(self, path, getattr(self, path) + 1)


def measure(rounds: int, requests: int) -> dict[str, Any]:
    port = free_port()
    errors = Errors()
    with SimProcess() as sim:
        config = CONFIG.format(port=port, provider=sim_provider_config("sim", sim.base_url))
        with DaemonProcess(config) as daemon:
            direct_url = f"{sim.base_url}/chat/completions"
            front_door_url = f"http://127.0.0.1:{port}/v1/chat/completions"
            direct_body = body("gpt-4o-mini")
            front_door_body = body("sim/gpt-4o-mini")
            direct_c1: list[float] = []
            front_door_c1: list[float] = []
            with httpx.Client(trust_env=False) as http:

                def direct() -> None:
                    response = http.post(direct_url, content=direct_body, headers=HEADERS)
                    errors.check(response, "direct")

                def through_front_door() -> None:
                    response = http.post(front_door_url, content=front_door_body, headers=HEADERS)
                    errors.check(response, "front_door")

                sequential(direct, 50)  # warm both paths
                sequential(through_front_door, 50)
                daemon_cpu = CpuMeter(daemon.process.pid if daemon.process else None)
                sim_cpu = CpuMeter(sim.pid)
                for _ in range(rounds):
                    direct_c1 += sim_cpu.measure(lambda: sequential(direct, requests))
                    front_door_c1 += daemon_cpu.measure(
                        lambda: sequential(through_front_door, requests)
                    )

            async def c32() -> tuple[list[float], list[float]]:
                limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
                async with httpx.AsyncClient(limits=limits, trust_env=False) as http:

                    async def direct() -> None:
                        response = await http.post(direct_url, content=direct_body, headers=HEADERS)
                        errors.check(response, "direct")

                    async def through_front_door() -> None:
                        response = await http.post(
                            front_door_url, content=front_door_body, headers=HEADERS
                        )
                        errors.check(response, "front_door")

                    return await interleaved_throughput(
                        direct, through_front_door, rounds, requests * 2, 32
                    )

            direct_rps, front_door_rps = anyio.run(c32, backend_options={"use_uvloop": True})

    direct_p50 = statistics.median(direct_c1)
    front_door_p50 = statistics.median(front_door_c1)
    return {
        "bench": "http_overhead",
        "requests_per_path_c1": len(direct_c1),
        "c1_direct_p50_ms": round(direct_p50 * 1000, 3),
        "c1_front_door_p50_ms": round(front_door_p50 * 1000, 3),
        "c1_added_p50_ms": round((front_door_p50 - direct_p50) * 1000, 3),
        "c1_direct_p99_ms": round(percentile(direct_c1, 0.99) * 1000, 3),
        "c1_daemon_cpu_us_per_request": round(daemon_cpu.total_s / len(front_door_c1) * 1e6),
        "c1_sim_cpu_us_per_request": round(sim_cpu.total_s / len(direct_c1) * 1e6),
        "c1_front_door_p99_ms": round(percentile(front_door_c1, 0.99) * 1000, 3),
        "c32_direct_rps": round(statistics.median(direct_rps), 1),
        "c32_front_door_rps": round(statistics.median(front_door_rps), 1),
        "c32_throughput_ratio": round(
            statistics.median(front_door_rps) / statistics.median(direct_rps), 3
        ),
        "errors_direct": errors.direct,
        "errors_front_door": errors.front_door,
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
