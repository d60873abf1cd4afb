"""Fuzzing the Unix socket for longer than the test suite does: seeded random and mutated frames
(``tests/support/fuzz.py``) on new connections against a real daemon in front of a real
``quotad sim``, in rounds of 5,000 frames with a seed each, each round followed by 50
conversations that are granted a permit and settle it with odd values
(``tests/support/fuzz_extremes.py``). A round after which the daemon is gone counts as a crash
(its seed is printed, and the daemon restarted); one where the daemon left a connection
unanswered for 10 s (30 s in a permit conversation) as a stall (its seed is printed). Before
and after, a client's status round trip (p50) and the daemon's RSS, as a baseline for "still
serving as before". Prints one JSON line.

    uv run python bench/fuzz_frames.py [--frames 100000] [--seed 1] [--quick]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import seeded_main, sequential
from quotad.client import Client
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.fuzz import FUZZ_TABLES, FrameMaker, FuzzTally, send_batches
from tests.support.fuzz_extremes import play_permits
from tests.support.sim import SimProcess

ROUND_FRAMES = 5000
PERMIT_ROUNDS = 50
MESSAGES = [{"role": "user", "content": "still there?"}]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid``, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status_p50_ms(daemon: DaemonProcess, count: int) -> float:
    with Client(socket=daemon.socket_path, app="bench") as client:
        sequential(client.status, 50)
        return statistics.median(sequential(client.status, count)) * 1000


def measure(frames: int, seed: int) -> dict[str, Any]:
    with SimProcess() as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra="rpm = 100000"), FUZZ_TABLES
        )
        daemon = DaemonProcess(config).start()
        try:
            assert daemon.process is not None
            status_before = status_p50_ms(daemon, 500)
            rss_before = rss_mb(daemon.process.pid)
            tally = FuzzTally()
            crash_seeds: list[int] = []
            stall_seeds: list[int] = []
            granted = settled = 0
            tracebacks = 0
            started = time.perf_counter()
            round_seed = seed
            while tally.frames < frames:
                try:
                    target = min(frames, tally.frames + ROUND_FRAMES)
                    send_batches(daemon.socket_path, FrameMaker(round_seed), target, tally)
                    permits = random.Random(f"{round_seed}:permits")
                    round_granted, round_settled = play_permits(
                        daemon.socket_path, permits, PERMIT_ROUNDS
                    )
                    granted += round_granted
                    settled += round_settled
                except TimeoutError:
                    stall_seeds.append(round_seed)
                except OSError:
                    pass  # the daemon went away mid-round: counted below
                if daemon.process.poll() is not None:
                    crash_seeds.append(round_seed)
                    tracebacks += daemon.log().count("Traceback")
                    daemon.kill()
                    daemon.start()
                round_seed += 1
            elapsed = time.perf_counter() - started
            assert daemon.process is not None
            rss_after = rss_mb(daemon.process.pid)
            status_after = status_p50_ms(daemon, 500)
            with Client(socket=daemon.socket_path, app="bench") as client:
                served_after = bool(client.chat("sim/m", MESSAGES, max_tokens=4).content)
            tracebacks += daemon.log().count("Traceback")
        finally:
            daemon.__exit__(None, None, None)
    return {
        "bench": "fuzz_frames",
        "frames_sent": tally.frames,
        "connections": tally.connections,
        "replies": tally.replies,
        "crashes": len(crash_seeds),
        "crash_seeds": crash_seeds,
        "stalls": len(stall_seeds),
        "stall_seeds": stall_seeds,
        "permits_granted": granted,
        "settles_answered": settled,
        "tracebacks_in_log": tracebacks,
        "served_after": served_after,
        "frames_per_s": round(tally.frames / elapsed, 1),
        "status_p50_ms_before": round(status_before, 3),
        "status_p50_ms_after": round(status_after, 3),
        "status_after_before_ratio": round(status_after / status_before, 3),
        "daemon_rss_mb_before": round(rss_before, 1),
        "daemon_rss_mb_after": round(rss_after, 1),
    }


def main() -> None:
    seeded_main(
        __doc__, measure, cases=("frames", 100_000, 1000), quick_help="a thousand frames (smoke)"
    )


if __name__ == "__main__":
    main()
