"""``quotad top`` at 10 updates a second costs the daemon under 5 % of its throughput.

Runs ``bench/tui_cost.py`` briefly against a real daemon and sim. The daemon-side cost is read
as the daemon's CPU share with twenty subscriptions at 0.1 s switched on and off in paired windows
under a steady load, per subscription (the daemon serves on one event loop, so its share of a
core is its share of capacity). Closed-loop throughput ratios on a small shared machine are too
noisy to assert; the bench prints them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "tui_cost.py"


@pytest.mark.slow
def test_a_subscriber_at_10_per_second_costs_the_daemon_under_5_percent() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--rounds", "1", "--requests", "200",
         "--pairs", "6", "--window", "0.5"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=BENCH.parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["subscription_daemon_cost_pct"] < 5.0, figures
    assert figures["daemon_cpu_pct_without"] > 0, figures  # the load really ran
    assert figures["tui_snapshots_per_s"] >= 4.0, figures  # the TUI really followed at ~10/s
    assert figures["rps_alone"] > 0
    assert figures["rps_with_tui"] > 0
