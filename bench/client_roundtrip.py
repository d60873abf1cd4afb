"""The clients' own cost: a ``Status`` round trip to a real daemon through ``Client.status()``
and ``AsyncClient.status()`` (asyncio + uvloop), beside the floor, the same frames over a bare
socket (encode, one ``sendall``, ``recv_into`` a buffer, decode) with no client around them.
Beside each p50, the CPU time the calling process spent per call (steadier than wall time on a
loaded machine: it leaves out the daemon and the waits).

Each arm runs in a worker process of its own, calling one after another; the arms take turns
in rounds (their order rotating) so that the noise of a shared machine falls on all alike.
``--baseline-src DIR`` adds the blocking and async clients of another checkout (its
``client/src``, e.g. from ``git archive COMMIT client/src | tar -x -C DIR``) as two more arms,
for before/after figures in one run. Prints one JSON line: p50s, and ratios to the floor (and
to the baseline).

    uv run python bench/client_roundtrip.py [--rounds 8] [--requests 1000] [--quick]
        [--baseline-src DIR/client/src]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200


# --------------------------------------------------------------------------- workers


def bare_worker(socket_path: str) -> None:
    """The floor: Hello, then Status frames written and read on a plain socket."""
    from quotad.protocol.framing import FrameEncoder, reply_decoder
    from quotad.protocol.messages import Hello, Status, StatusReply

    encoder = FrameEncoder()
    decoder = reply_decoder()
    buffer = bytearray(65536)
    view = memoryview(buffer)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        request_id = 0

        def round_trip(message: Any) -> Any:
            sock.sendall(encoder.encode(message))
            while True:
                size = sock.recv_into(buffer)
                if size == 0:
                    raise ConnectionError("the daemon closed the connection")
                for reply in decoder.feed(view[:size]):
                    return reply

        round_trip(Hello(app="bench", client="bench"))

        def status() -> None:
            nonlocal request_id
            request_id += 1
            reply = round_trip(Status(id=request_id))
            assert type(reply) is StatusReply, reply

        serve_rounds(status)


def sync_worker(socket_path: str) -> None:
    from quotad.client import Client

    with Client(socket=socket_path, app="bench") as client:
        serve_rounds(client.status)


def async_worker(socket_path: str) -> None:
    import anyio
    import anyio.to_thread

    from quotad.client import AsyncClient

    async def main() -> None:
        async with AsyncClient(socket=socket_path, app="bench") as client:
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                latencies = []
                cpu_started = time.process_time()
                for _ in range(int(line)):
                    started = time.perf_counter()
                    await client.status()
                    latencies.append(time.perf_counter() - started)
                report(latencies, time.process_time() - cpu_started)

    anyio.run(main, backend_options={"use_uvloop": True})


def serve_rounds(call: Any) -> None:
    """For each count read from stdin, time that many calls."""
    while line := sys.stdin.readline():
        latencies = []
        cpu_started = time.process_time()
        for _ in range(int(line)):
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        report(latencies, time.process_time() - cpu_started)


def report(latencies: list[float], cpu_s: float) -> None:
    """One JSON line to the parent: each call's latency, and the CPU time of them all."""
    print(json.dumps({"latencies": latencies, "cpu_s": cpu_s}), flush=True)


WORKERS = {"bare": bare_worker, "sync": sync_worker, "async": async_worker}


# --------------------------------------------------------------------------- the run


class Arm:
    """One worker process: a kind of client, from one source tree."""

    def __init__(self, kind: str, src: Path, socket_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, "--socket", str(socket_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.latencies: list[float] = []
        self.cpu_s = 0.0
        self.run(WARM_UP)

    def run(self, count: int) -> tuple[list[float], float]:
        stdin: IO[str] | None = self.process.stdin
        stdout: IO[str] | None = self.process.stdout
        if stdin is None or stdout is None:
            raise RuntimeError("a worker without pipes")
        stdin.write(f"{count}\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"a worker exited with {self.process.wait()}")
        answer = json.loads(line)
        return answer["latencies"], answer["cpu_s"]

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def measure(rounds: int, requests: int, baseline_src: Path | None) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.support.daemon import DaemonProcess, daemon_config

    src = ROOT / "client" / "src"
    arms_wanted = {"bare": ("bare", src), "sync": ("sync", src), "async": ("async", src)}
    if baseline_src is not None:
        arms_wanted["baseline_sync"] = ("sync", baseline_src)
        arms_wanted["baseline_async"] = ("async", baseline_src)
    with DaemonProcess(daemon_config()) as daemon:
        arms: dict[str, Arm] = {}
        try:
            for name, (kind, tree) in arms_wanted.items():
                arms[name] = Arm(kind, tree, daemon.socket_path)
            names = list(arms)
            for turn in range(rounds):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    arm = arms[name]
                    latencies, cpu_s = arm.run(requests)
                    arm.latencies += latencies
                    arm.cpu_s += cpu_s
        finally:
            for arm in arms.values():
                arm.stop()
    p50 = {name: statistics.median(arm.latencies) for name, arm in arms.items()}
    figures: dict[str, Any] = {
        "bench": "client_roundtrip",
        "requests_per_arm": len(arms["bare"].latencies),
    }
    cpu_us = {name: arm.cpu_s / len(arm.latencies) * 1e6 for name, arm in arms.items()}
    for name, value in p50.items():
        figures[f"{name}_p50_ms"] = round(value * 1000, 4)
        figures[f"{name}_cpu_us_per_call"] = round(cpu_us[name], 2)
    for name in ("sync", "async"):
        figures[f"{name}_over_bare_ratio"] = round(p50[name] / p50["bare"], 3)
        if baseline_src is not None:
            figures[f"{name}_vs_baseline_ratio"] = round(p50[name] / p50[f"baseline_{name}"], 3)
            figures[f"{name}_cpu_vs_baseline_ratio"] = round(
                cpu_us[name] / cpu_us[f"baseline_{name}"], 3
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a few requests (smoke test)")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's client/src")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](args.socket)
        return
    rounds, requests = (1, 50) if args.quick else (args.rounds, args.requests)
    figures = measure(rounds, requests, args.baseline_src)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
