"""The native path's round trips: a bare ``Status``, a permit (``Acquire`` + ``Settle``) and a
cache hit, each through the blocking ``Client`` and (status and permit) as raw frames on a
plain socket, the direct baseline that shows what the client library adds; with the daemon's
CPU per request read from /proc. With ``--baseline-src DIR`` (a checkout of another commit),
a second daemon runs that commit's code, and both are measured interleaved, round by round,
for a before/after in one run. Prints one JSON line.

    uv run python bench/native_path.py [--rounds 4] [--requests 500] [--baseline-src DIR]
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._raw_peer import RawPeer
from bench._timing import cpu_seconds, rounds_main, sequential, source_env
from quotad.client import Client
from quotad.protocol.messages import Acquire, Permit, Settle, Status
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "what does the cache save us?"}]


class RoundTripPeer(RawPeer):
    """A bare ``Status`` and a permit as raw frames: the least a client can do per round trip."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.status_frame = self.encoder.encode(Status(id=1))
        self.acquire_frame = self.encoder.encode(Acquire(id=2, target=MODEL, tokens=500))

    def status(self) -> None:
        self.request(self.status_frame)

    def permit(self) -> None:
        permit = self.request(self.acquire_frame)
        assert isinstance(permit, Permit)
        self.request(self.encoder.encode(Settle(id=3, permit_id=permit.permit_id)))


def calls(client: Client, raw: RoundTripPeer) -> dict[str, Callable[[], Any]]:
    def permit() -> None:
        with client.permit(MODEL, tokens=500) as held:
            held.settle(tokens=120)

    def hit() -> None:
        assert client.chat(MODEL, MESSAGES, max_tokens=16).cached

    return {
        "status": client.status,
        "raw_status": raw.status,
        "permit": permit,
        "raw_permit": raw.permit,
        "hit": hit,
    }


def measure(rounds: int, requests: int, baseline_src: str | None) -> dict[str, Any]:
    arms: dict[str, dict[str, str]] = {"": {}} if baseline_src is None else {"before_": {}, "": {}}
    if baseline_src is not None:
        arms["before_"] = source_env(baseline_src)
    with SimProcess() as sim:
        provider = sim_provider_config("sim", sim.base_url, extra="rpm = 100000000")
        config = daemon_config(provider)
        daemons = {arm: DaemonProcess(config, env=env) for arm, env in arms.items()}
        try:
            for daemon in daemons.values():
                daemon.start()
            clients = {arm: Client(socket=d.socket_path, app="bench") for arm, d in daemons.items()}
            kinds: dict[str, dict[str, Callable[[], Any]]] = {}
            for arm, client in clients.items():
                client.chat(MODEL, MESSAGES, max_tokens=16)  # stores the answer
                kinds[arm] = calls(client, RoundTripPeer(daemons[arm].socket_path))
                for call in kinds[arm].values():
                    sequential(call, 100)  # warm up
            latencies: dict[str, dict[str, list[float]]] = {
                arm: {kind: [] for kind in kinds[arm]} for arm in arms
            }
            cpu = {arm: dict.fromkeys(kinds[arm], 0.0) for arm in arms}
            for _ in range(rounds):
                for arm, daemon in daemons.items():
                    assert daemon.process is not None
                    for kind, call in kinds[arm].items():
                        before = cpu_seconds(daemon.process.pid)
                        latencies[arm][kind] += sequential(call, requests)
                        cpu[arm][kind] += cpu_seconds(daemon.process.pid) - before
            for client in clients.values():
                client.close()
        finally:
            for daemon in daemons.values():
                daemon.__exit__(None, None, None)
    figures: dict[str, Any] = {"bench": "native_path", "requests_per_kind": rounds * requests}
    for arm in arms:
        timed = latencies[arm]
        for kind, samples in timed.items():
            figures[f"{arm}{kind}_p50_ms"] = round(statistics.median(samples) * 1000, 3)
            figures[f"{arm}daemon_cpu_us_per_{kind}"] = round(cpu[arm][kind] / len(samples) * 1e6)
        figures[f"{arm}permits_per_s"] = round(len(timed["permit"]) / sum(timed["permit"]), 1)
        figures[f"{arm}client_share_of_status"] = round(
            1 - statistics.median(timed["raw_status"]) / statistics.median(timed["status"]), 3
        )
        figures[f"{arm}client_share_of_permit"] = round(
            1 - statistics.median(timed["raw_permit"]) / statistics.median(timed["permit"]), 3
        )
    if baseline_src is not None:
        for kind in ("status", "permit", "hit"):
            figures[f"{kind}_p50_after_before_ratio"] = round(
                figures[f"{kind}_p50_ms"] / figures[f"before_{kind}_p50_ms"], 3
            )
    return figures


def main() -> None:
    rounds_main(__doc__, measure, rounds=4, requests=500, quick_requests=50)


if __name__ == "__main__":
    main()
