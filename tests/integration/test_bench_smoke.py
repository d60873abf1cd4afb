"""Every benchmark still runs: each ``bench/*.py`` with ``--quick`` prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
BENCHES = sorted(path for path in BENCH_DIR.glob("*.py") if not path.name.startswith("_"))
EXPECTED_FIGURES = {
    "big_answer": {
        f"{door}_{shape}_{cache}"
        for door in ("http", "native")
        for shape in ("plain", "stream")
        for cache in ("store", "bypass", "hit")
    },
    "big_body": {"single", "messages", "parts", "cjk"},
    "guardrails": {
        "mixed",
        "chat_2kb",
        "dense_prose",
        "code",
        "json",
        "cjk",
        "restore",
        "hostile",
    },
    "guardrails_daemon": {"chat_2kb", "off_loop"},
    "gate_queue": {"this"},
    "metrics_scrape": {"body_bytes", "scrape_first_byte_ms_p50", "probe_p99_ratio", "errors"},
    "provider_fuzz": {"failed_inside", "ledger_rows", "ledger_rows_expected", "reserved_usd_after"},
    "soak": {
        "requests",
        "errors",
        "rss_slope_mb_per_10k_second_half",
        "fds_end_minus_start",
        "threads_end_minus_start",
        "tasks_end_minus_start",
        "served_after",
    },
    "wide_requests": {"extra", "settle_headers", "http_response_format"},
}
"""Figures some benchmarks must report (a benchmark's report says what it measured)."""


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[path.stem for path in BENCHES])
def test_bench_runs_quick(bench: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(bench), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=BENCH_DIR.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    figures = json.loads(lines[-1])
    assert figures["bench"] == bench.stem
    assert all(value is not None for value in figures.values())
    assert EXPECTED_FIGURES.get(bench.stem, set()) <= figures.keys()
