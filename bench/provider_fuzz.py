"""A long fuzz run of what quotad parses from providers: a real daemon whose four accounts
(OpenAI and Anthropic, through the lean pool and through httpx's) are a hostile provider
answering each request with a seeded random broken answer (tests/support/provider_fuzz.py; the
suite runs 600), sent valid requests (chat, stream, embeddings) by quotad's client, the openai
SDK and the anthropic SDK, from several threads. Reports the outcomes, the cases that failed
inside (an ``internal`` error, a 500, no answer: must be 0), whether the daemon is still up,
serves a normal provider (a ``quotad sim``) afterwards and stops on SIGTERM (a run stops
sending once 8 cases went unanswered: the daemon is wedged), the tracebacks in its log (must
be 0), the ledger's rows against the cases (must be equal) and its bad costs (negative or NaN:
must be 0), what is left reserved on the budgets (must be 0), and the rate of the fuzz cases
against the same daemon's rate for valid answers from the same server (the baseline, measured
in the same run). Prints one JSON line.

    uv run python bench/provider_fuzz.py [--cases 20000] [--seed 1] [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import fuzz_rate_figures, seeded_main
from tests.support import provider_fuzz_run
from tests.support.provider_fuzz import VALID_CASE

WARM_UP = 32
"""Valid cases before the baseline is timed."""


def measure(cases: int, seed: int) -> dict[str, Any]:
    stopped_on_sigterm = True
    try:
        with provider_fuzz_run.FuzzRig(seed) as rig:
            warm_up = provider_fuzz_run.run(rig, WARM_UP, first=VALID_CASE)  # connections
            baseline_count = max(64, cases // 10)
            started = time.perf_counter()
            baseline = provider_fuzz_run.run(rig, baseline_count, first=VALID_CASE + WARM_UP)
            baseline_s = time.perf_counter() - started
            started = time.perf_counter()
            results = provider_fuzz_run.run(rig, cases)
            fuzz_s = time.perf_counter() - started
            process = rig.process.process
            assert process is not None
            alive = process.poll() is None and not results.wedged
            served_after = alive and provider_fuzz_run.served_after(rig)
            reserved = provider_fuzz_run.reserved_usd(rig) if alive else None
            ledger = provider_fuzz_run.ledger_figures(rig.process.state_dir)
            tracebacks = rig.process.log().count("Traceback")
    except subprocess.TimeoutExpired:  # the daemon did not stop on SIGTERM (it was killed)
        stopped_on_sigterm = False
    baseline_rps = baseline_count / baseline_s
    return fuzz_rate_figures("provider_fuzz", cases, seed, fuzz_s, baseline_rps) | {
        "outcomes": dict(sorted(results.outcomes.items())),
        "failed_inside": len(results.failures),
        "baseline_failed_inside": len(baseline.failures) + len(warm_up.failures),
        "baseline_ok": baseline.outcomes["ok"],
        "daemon_alive": alive,
        "daemon_stopped_on_sigterm": stopped_on_sigterm,
        "served_after": served_after,
        "tracebacks_in_log": tracebacks,
        "ledger_rows": ledger.rows,
        "ledger_rows_expected": cases + baseline_count + WARM_UP,
        "ledger_bad_costs": len(ledger.bad_costs),
        "ledger_negative_tokens": ledger.bad_tokens,
        "reserved_usd_after": reserved if reserved is not None else -1.0,
        "first_failures": results.failures[:3],
    }


def main() -> None:
    seeded_main(
        __doc__, measure, cases=("cases", 20_000, 300), quick_help="a few hundred cases (smoke)"
    )


if __name__ == "__main__":
    main()
