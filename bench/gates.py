"""The shared gates: permit round trips through the native client, and the accuracy of one
limit shared by 8 real processes against a provider (``quotad sim``) that enforces it, beside
what users do today (each process behind its own in-process limiter at the same limit).
Prints one JSON line.

    uv run python bench/gates.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.load import run_shared_limit
from tests.support.sim import SimProcess


def permit_round_trips(count: int) -> dict[str, Any]:
    """Acquire + Settle, one after another, on a target with generous limits."""
    with SimProcess() as sim:
        provider = sim_provider_config("p", sim.base_url, extra="rpm = 1000000\ntpm = 1000000000")
        with (
            DaemonProcess(daemon_config(provider)) as daemon,
            Client(socket=daemon.socket_path, app="bench") as client,
        ):
            latencies = []
            for _ in range(count):
                started = time.perf_counter()
                with client.permit("p/m", tokens=500) as permit:
                    permit.settle(tokens=120)
                latencies.append(time.perf_counter() - started)
    return {
        "permit_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "permits_per_s": round(len(latencies) / sum(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 4 processes, not 8, for two 1 s windows (each arm's processes "
        "import their client on 2 cores before they start)",
    )
    args = parser.parse_args()
    processes, window_s, duration = (4, 1.0, 2.0) if args.quick else (8, 2.0, 10.0)
    figures: dict[str, Any] = {"bench": "gates"}
    figures.update(permit_round_trips(200 if args.quick else 3000))
    shared = run_shared_limit(
        "daemon", processes=processes, limit=20, window_s=window_s, duration_s=duration
    )
    figures["shared"] = shared
    figures["own_limiters"] = run_shared_limit(
        "direct", processes=processes, limit=20, window_s=window_s, duration_s=duration
    )
    if not args.quick:  # what the guard interval costs in utilization
        figures["guard_sweep"] = {
            str(guard): run_shared_limit(
                "daemon",
                processes=processes,
                limit=20,
                window_s=window_s,
                duration_s=duration,
                guard_s=guard,
            )["utilization"]
            for guard in (0.0, 0.25)
        }
        figures["guard_sweep"]["0.05"] = shared["utilization"]
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
