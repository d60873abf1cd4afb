"""Every benchmark still runs: each ``bench/*.py`` with ``--quick`` prints one JSON line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
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
BENCH_TIMEOUT_S = 240
STOP_WAIT_S = 30


def run_bench(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (a benchmark, which starts daemons and providers of its own) in a
    process group of its own. Past ``timeout_s`` it is interrupted (SIGINT: its ``with``
    blocks stop what it started and remove their directories), then, if it has not ended
    within :data:`STOP_WAIT_S`, its whole group is killed. ``subprocess.run``'s timeout
    killed the benchmark alone, and the daemon, the providers and the process pool it had
    started ran on after the test, with their directories in /tmp."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=BENCH_DIR.parent,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_WAIT_S)  # not for its pipes: a child may hold them
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):  # none left: the usual end
                os.killpg(process.pid, signal.SIGKILL)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_a_bench_past_its_time_leaves_nothing_running(tmp_path: Path) -> None:
    """A benchmark's children outlived its timeout (``subprocess.run`` killed it alone)."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        run_bench([sys.executable, "-c", script], timeout_s=3)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:  # killed: reaped by init soon
        time.sleep(0.05)
    assert not _running(child)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[path.stem for path in BENCHES])
def test_bench_runs_quick(bench: Path) -> None:
    result = run_bench([sys.executable, str(bench), "--quick"], BENCH_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    figures = json.loads(lines[-1])
    assert figures["bench"] == bench.stem
    assert all(value is not None for value in figures.values())
    assert EXPECTED_FIGURES.get(bench.stem, set()) <= figures.keys()
