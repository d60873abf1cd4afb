"""The wait queue's cost against its depth, on a virtual clock (no daemon, no sockets): a deep
queue of waiters from three apps (shares 1, 2, 3; priorities low to high, aging) behind one
provider window kept full. Per depth, two operations: a *step* (one slot frees, one waiter is
admitted and sent, a new one arrives: the queue keeps its depth) and a *blocked release* (a
dispatch that admits nothing: what a settle costs while the head waits). Each figure's direct
baseline is the same operation on a queue of depth 10 in the same run (``*_vs_depth_10``:
1.0 means depth costs nothing). With ``--baseline-src DIR`` (a checkout of another commit),
that commit's ``gates/queue.py`` runs the same steps, interleaved round by round, for a
before/after as ratios (``*_speedup``: baseline time / this tree's). Prints one JSON line.

    uv run python bench/gate_queue.py [--rounds 3] [--baseline-src DIR] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import print_figures
from quotad.daemon.gates import queue as this_queue
from quotad.daemon.gates.window import Demand, Gate, SlidingWindow

LIMIT = 100  # requests per 1 s window: a step frees one slot every 10 ms of virtual time
APPS = (("light", 1.0, 0), ("normal", 2.0, 1), ("heavy", 3.0, 2))
AGING_S = 10.0  # the default gates.aging_s


def load_queue(checkout: Path) -> ModuleType:
    """Another checkout's ``gates/queue.py`` (its windows are this tree's)."""
    path = checkout / "daemon" / "src" / "quotad" / "daemon" / "gates" / "queue.py"
    spec = importlib.util.spec_from_file_location("baseline_gate_queue", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no queue.py at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(queue_module: ModuleType, depth: int, steps: int) -> tuple[float, float]:
    """Microseconds per step and per blocked release with ``depth`` waiters queued."""
    window = SlidingWindow("requests", LIMIT, 1.0, 0.0)
    gate = Gate("provider:p", "provider", [window])
    gates = (gate,)
    queue = queue_module.WaitQueue(AGING_S)
    now = 0.0
    arrivals = 0

    def arrive() -> None:
        nonlocal arrivals
        app, share, priority = APPS[arrivals % len(APPS)]
        queue.add(queue_module.Waiter(Demand(gates, 0), app, priority, share, now))
        arrivals += 1

    while window.fits(1, now):  # the window full: everyone waits
        window.admit(1, now)
        now += 1.0 / LIMIT
    for _ in range(depth):
        arrive()
    queue.dispatch(now)
    step_s = release_s = 0.0
    for _ in range(steps):
        now += 1.0 / LIMIT
        started = time.perf_counter()
        arrive()
        admitted, _ = queue.dispatch(now)
        step_s += time.perf_counter() - started
        for waiter in admitted:
            waiter.reservation.sent(now)
            waiter.reservation.settle(None)
        started = time.perf_counter()
        queue.dispatch(now)  # nothing more fits: a settle's dispatch while the head waits
        release_s += time.perf_counter() - started
    assert len(queue) >= depth - 1, "the queue drained: the window was not kept full"
    return step_s / steps * 1e6, release_s / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="a checkout whose queue.py to compare")
    parser.add_argument("--quick", action="store_true", help="depths 10 and 100, one round")
    args = parser.parse_args()
    depths = (10, 100) if args.quick else (10, 100, 1000, 10000)
    rounds = 1 if args.quick else args.rounds
    arms: dict[str, ModuleType] = {"this": this_queue}
    if args.baseline_src is not None:
        arms["baseline"] = load_queue(args.baseline_src)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for depth in depths:
            steps = 50 if args.quick else max(30, min(1000, 200_000 // depth))
            for name, module in arms.items():  # interleaved: the noise falls on both
                samples.setdefault((name, depth), []).append(measure(module, depth, steps))
    figures: dict[str, Any] = {"bench": "gate_queue", "rounds": rounds}
    for name in arms:
        step = {d: statistics.median(s for s, _ in samples[name, d]) for d in depths}
        release = {d: statistics.median(r for _, r in samples[name, d]) for d in depths}
        figures[name] = {
            "step_us": {str(d): round(step[d], 2) for d in depths},
            "blocked_release_us": {str(d): round(release[d], 2) for d in depths},
            "step_vs_depth_10": {str(d): round(step[d] / step[10], 2) for d in depths},
            "blocked_release_vs_depth_10": {
                str(d): round(release[d] / release[10], 2) for d in depths
            },
        }
    if "baseline" in arms:
        figures["step_speedup"] = {
            str(d): round(
                figures["baseline"]["step_us"][str(d)] / figures["this"]["step_us"][str(d)], 2
            )
            for d in depths
        }
        figures["blocked_release_speedup"] = {
            str(d): round(
                figures["baseline"]["blocked_release_us"][str(d)]
                / figures["this"]["blocked_release_us"][str(d)],
                2,
            )
            for d in depths
        }
    print_figures(figures)


if __name__ == "__main__":
    main()
