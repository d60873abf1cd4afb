"""A long fuzz run against the HTTP front door of a real daemon: many seeded random and mutated
requests (tests/support/http_fuzz.py; the suite sends a few thousand), from several threads, to
a ``quotad serve`` in front of two ``quotad sim`` processes. Reports how many were answered by
status, how many failed inside (a 500, an internal error in a stream, no answer to well-formed
HTTP even on a new connection: must be 0; how many were sent again because their keep-alive
connection was closed for idleness under them is ``retried_after_reset``), whether the daemon is
still up and serves an SDK afterwards, the tracebacks in its log (must be 0), what breaks one
ledger row per request (a request id with two rows, a 200 answer's with none: must be 0), what
its budgets hold reserved afterwards (must be 0), and the rate
against the same daemon's rate for valid requests alone (the baseline, measured in the same
run). Prints one JSON line.

    uv run python bench/http_fuzz.py [--cases 30000] [--seed 1] [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import fuzz_rate_figures, seeded_main
from quotad.client import Client
from tests.integration.test_http_fuzz import fuzz_config
from tests.support import http_fuzz
from tests.support.daemon import DaemonProcess, free_port
from tests.support.sim import SimProcess


def measure(cases: int, seed: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        SimProcess() as openai_sim,
        SimProcess() as anthropic_sim,
        DaemonProcess(fuzz_config(openai_sim.base_url, anthropic_sim.base_url, port)) as daemon,
    ):
        valid = [
            http_fuzz.Case(path, {"content-type": "application/json"}, msgspec.json.encode(body))
            for path, bodies in http_fuzz.seeds("sim/gpt-4o-mini").items()
            for body in bodies
        ]
        started = time.perf_counter()
        baseline = http_fuzz.run_cases(
            url, (valid * (cases // 10 // len(valid) + 1))[: cases // 10]
        )
        baseline_s = time.perf_counter() - started
        started = time.perf_counter()
        results = http_fuzz.run(url, seed, cases)
        fuzz_s = time.perf_counter() - started
        assert daemon.process is not None
        alive = daemon.process.poll() is None
        served_after = False
        reserved = -1.0
        if alive:
            with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
                reply = client.chat.completions.create(
                    model="fast", messages=[{"role": "user", "content": "still there?"}]
                )
                served_after = bool(reply.choices[0].message.content)
            with Client(socket=daemon.socket_path, app="bench") as quotad:
                reserved = sum(budget.reserved_usd for budget in quotad.status().budgets)
        tracebacks = daemon.log().count("Traceback")
        ledger = http_fuzz.ledger_problems(
            daemon.state_dir, baseline.answered_ids + results.answered_ids
        )
    baseline_rps = sum(baseline.statuses.values()) / baseline_s
    return fuzz_rate_figures("http_fuzz", cases, seed, fuzz_s, baseline_rps) | {
        "answered": sum(results.statuses.values()),
        "statuses": {str(status): count for status, count in sorted(results.statuses.items())},
        "failed_inside": len(results.internal),
        "baseline_failed_inside": len(baseline.internal),
        "retried_after_reset": results.retried,
        "daemon_alive": alive,
        "served_after": served_after,
        "tracebacks_in_log": tracebacks,
        "ledger_problems": len(ledger),
        "reserved_usd_after": reserved if alive else -1.0,
        "first_failures": results.internal[:3],
        "first_ledger_problems": ledger[:3],
    }


def main() -> None:
    seeded_main(
        __doc__, measure, cases=("cases", 30_000, 300), quick_help="a few hundred cases (smoke)"
    )


if __name__ == "__main__":
    main()
