"""Several hosts through one Valkey (DESIGN §10, issue 15 point 8): what sharing the gates
costs and what it keeps. Prints one JSON line.

- **Admission latency**: ``Acquire`` → ``Permit`` as raw frames on the daemon's socket, one
  after another, against a generous limit: a daemon of a three-host fleet against one host
  with no ``[cluster]`` (the direct baseline), interleaved round by round; the p50 of each
  and the added p50 (target: ≤ 0.5 ms).
- **Admissions per second** with one, two and three daemons of the fleet loaded at once (one
  pipelining load process per daemon, Acquire then Settle), and one host without
  ``[cluster]`` alone, interleaved round by round (target: ≥ 3,000/s for three together).
- **At the provider** (a sim enforcing the account's limit, its own log): three daemons and
  six closed-loop client processes, utilization of the limit and the most requests in any
  window (never above the limit) and the sim's 429s; then the same with Valkey killed
  mid-run: the *overshoot* (requests in a window beyond the limit; 0 expected) and what the
  hosts still served on their share.

    uv run python bench/cluster.py [--rounds 3] [--seconds 2] [--quick]

The machine is shared (2 cores): every daemon, load process and Valkey compete for them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from bench._raw_peer import RawPeer
from bench._timing import percentile
from quotad.protocol.messages import Acquire, Ok, Permit, Settle
from tests.support.daemon import DaemonProcess, daemon_config
from tests.support.load import read_start, start_together, wait_until

if TYPE_CHECKING:  # imported where used: a load process needs none of it (httpx: 0.35 s)
    from tests.support.fleet import Fleet

TARGET = "fast/m"
FAST_PROVIDER = """\
[providers.fast]
kind = "openai"
base_url = "{base_url}"
rpm = 100000000
tpm = 1000000000
"""


class AdmissionPeer(RawPeer):
    """Admissions as raw frames: the least a client can do per admission."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.acquire_frame = self.encoder.encode(Acquire(id=2, target=TARGET, tokens=100))

    def admit_once(self) -> float:
        """One admission (Acquire → Permit, timed) and its Settle; the seconds it took."""
        started = time.perf_counter()
        permit = self.request(self.acquire_frame)
        took = time.perf_counter() - started
        if not isinstance(permit, Permit):
            raise RuntimeError(f"not admitted: {permit}")
        self.request(self.encoder.encode(Settle(id=3, permit_id=permit.permit_id)))
        return took

    def admit_batch(self, depth: int) -> int:
        """``depth`` Acquires pipelined, then their Settles; the admissions made."""
        self.sock.sendall(self.acquire_frame * depth)
        permits = self.receive(depth)
        settles = b"".join(
            self.encoder.encode(Settle(id=3, permit_id=p.permit_id, tokens_used=100))
            for p in permits
            if isinstance(p, Permit)
        )
        admitted = len(settles) and sum(1 for p in permits if isinstance(p, Permit))
        self.sock.sendall(settles)
        for reply in self.receive(admitted):
            if not isinstance(reply, Ok):
                raise RuntimeError(f"settle refused: {reply}")
        return admitted


def worker(path: str, seconds: float, depth: int) -> None:
    """A load process: pipelined admissions on one daemon for ``seconds`` from the start
    :func:`~tests.support.load.start_together` gives once every load process is ready."""
    peer = AdmissionPeer(Path(path))
    peer.admit_batch(depth)  # warm
    wait_until(read_start())
    admitted, deadline = 0, time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < deadline:
        admitted += peer.admit_batch(depth)
    elapsed = time.monotonic() - started
    print(msgspec.json.encode({"admitted": admitted, "seconds": elapsed}).decode(), flush=True)


def throughput(sockets: list[Path], seconds: float, depth: int) -> float:
    """Admissions per second of one load process per socket, all at once."""
    commands = [
        [sys.executable, __file__, "--worker", str(path),
         "--seconds", str(seconds), "--depth", str(depth)]
        for path in sockets
    ]  # fmt: skip
    running = start_together(commands)
    results = []
    for process in running:
        output, _ = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise RuntimeError(f"a load process failed ({process.returncode})")
        results.append(msgspec.json.decode(output))
    return float(sum(r["admitted"] / r["seconds"] for r in results))


def measure(
    rounds: int, seconds: float, requests: int, depth: int, limit: int, window_s: float,
    duration_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One fleet of three daemons for every figure: provider ``fast`` (a generous limit) for
    admissions, provider ``sim`` (``limit`` per ``window_s``, enforced by the sim) for the
    load at the provider; Valkey is killed last."""
    from tests.support.fleet import Fleet, requests_limit

    with Fleet(
        hosts=3,
        provider_extra=requests_limit(limit, window_s),
        extra=FAST_PROVIDER.format(base_url="<sim_url>"),
        sim={"rpm": limit, "window_s": window_s, "latency_ms": 5, "log": True},
        timeout_s=0.25,
        heartbeat_s=1.0,  # the defaults a fleet runs with
    ) as fleet:
        figures = admissions(fleet, rounds, seconds, requests, depth)
        figures |= at_the_provider(fleet, limit, window_s, duration_s)
    return figures


def admissions(
    fleet: Fleet, rounds: int, seconds: float, requests: int, depth: int
) -> dict[str, Any]:
    """Latency and throughput of admission: fleet daemons against one plain host."""
    fast = FAST_PROVIDER.format(base_url=fleet.sim.base_url)
    plain = DaemonProcess(daemon_config(fast, cache='mode = "off"'))
    try:
        plain.start()
        sockets = fleet.sockets()
        peers = {"one_host": AdmissionPeer(plain.socket_path), "fleet": AdmissionPeer(sockets[0])}
        for peer in peers.values():
            for _ in range(200):
                peer.admit_once()  # warm: leases borrowed, code paths hot
        latency: dict[str, list[float]] = {arm: [] for arm in peers}
        arms = {
            "one_host": [plain.socket_path],
            "fleet_1": sockets[:1],
            "fleet_2": sockets[:2],
            "fleet_3": sockets,
        }
        rates: dict[str, list[float]] = {arm: [] for arm in arms}
        calls_before = sum(s.cluster.redis_calls for s in fleet.statuses() if s.cluster)
        for _ in range(rounds):
            for arm, peer in peers.items():
                latency[arm] += [peer.admit_once() for _ in range(requests)]
            for arm, arm_sockets in arms.items():
                rates[arm].append(throughput(arm_sockets, seconds, depth))
        calls = sum(s.cluster.redis_calls for s in fleet.statuses() if s.cluster) - calls_before
    finally:
        plain.__exit__(None, None, None)
    figures: dict[str, Any] = {}
    for arm, samples in latency.items():
        figures[f"{arm}_admit_p50_ms"] = round(statistics.median(samples) * 1000, 3)
        figures[f"{arm}_admit_p99_ms"] = round(percentile(samples, 0.99) * 1000, 3)
    figures["fleet_added_p50_ms"] = round(
        figures["fleet_admit_p50_ms"] - figures["one_host_admit_p50_ms"], 3
    )
    for arm, samples in rates.items():
        figures[f"{arm}_admissions_per_s"] = round(statistics.median(samples))
    figures["fleet_3_to_one_host"] = round(
        figures["fleet_3_admissions_per_s"] / figures["one_host_admissions_per_s"], 3
    )
    fleet_admissions = rounds * requests + sum(
        sum(rates[arm]) * seconds for arm in ("fleet_1", "fleet_2", "fleet_3")
    )
    figures["redis_calls_per_1000_admissions"] = round(1000 * calls / fleet_admissions, 3)
    return figures


def at_the_provider(fleet: Fleet, limit: int, window_s: float, duration_s: float) -> dict[str, Any]:
    """Utilization and peak per window at the sim; then Valkey killed mid-run."""
    from tests.support.fleet import run_fleet_load

    figures: dict[str, Any] = {"provider_limit": limit, "provider_window_s": window_s}
    shared = run_fleet_load(
        fleet, processes_per_host=2, duration_s=duration_s, limit=limit, window_s=window_s
    )
    figures["utilization"] = shared["utilization"]
    figures["peak_in_window"] = shared["peak_arrivals_in_window"]
    figures["sim_429s"] = shared["sim_429s"]
    degraded = run_fleet_load(
        fleet,
        processes_per_host=2,
        duration_s=duration_s,
        limit=limit,
        window_s=window_s,
        kill_valkey_at_s=duration_s / 3,
    )
    figures["degraded_peak_in_window"] = degraded["peak_arrivals_in_window"]
    figures["degraded_overshoot"] = max(0, degraded["peak_arrivals_in_window"] - limit)
    figures["degraded_sim_429s"] = degraded["sim_429s"]
    figures["degraded_answered_after_kill"] = degraded["answered_after_kill"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput arm")
    parser.add_argument("--requests", type=int, default=500, help="per latency round")
    parser.add_argument("--depth", type=int, default=64, help="admissions pipelined")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 0.25 s per throughput arm, 0.5 s windows"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seconds, args.depth)
        return
    if args.quick:
        args.rounds, args.seconds, args.requests = 1, 0.25, 50
    figures: dict[str, Any] = {"bench": "cluster", "rounds": args.rounds}
    if args.quick:
        limit, window_s, duration_s = 20, 0.5, 1.5
    else:
        limit, window_s, duration_s = 30, 2.0, 6.0
    figures |= measure(
        args.rounds, args.seconds, args.requests, args.depth, limit, window_s, duration_s
    )
    print(msgspec.json.encode(figures).decode())


if __name__ == "__main__":
    main()
