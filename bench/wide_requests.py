"""What one valid request with a field far wider than any client sends costs the others: how
long another client's ``Status`` round trip waits while the daemon reads and answers it.

One real ``quotad serve`` (the front door on, ``auth = "none"``; a budget and guardrails that
mask addresses, as the fuzzers' daemon: :data:`tests.support.fuzz.FUZZ_TABLES`) in front of a
``quotad sim``.
Each shape (:func:`tests.support.fuzz_extremes.wide_message`, at the counts of the fuzz
finding) is sent on its own connection, one at a time, while another client sends ``Status``
after ``Status`` on its own; a round measures, for each shape, the longest of those round trips
that overlapped the wide request (what the event loop was held), how many went through meanwhile,
the wide request's answer and latency, and the CPU time of the daemon's main thread (the event
loop's) over the request. ``settle_headers`` settles a permit really granted;
``http_response_format`` posts the chat through the front door. With ``--baseline-source DIR``
a second daemon, run from the sources in DIR, is measured beside this one on the same sim,
their rounds in turn. Reported per shape: the frame's (or body's) MiB, the answers, and the
medians over the rounds. Prints one JSON line.

    uv run python bench/wide_requests.py [--rounds 3] [--shapes extra,settle_headers]
        [--quick] [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import (
    alternating,
    bench_parser,
    cpu_seconds,
    front_door_daemon,
    print_figures,
)
from bench.big_body import read_answer
from quotad.client import Client
from quotad.protocol.framing import FrameEncoder
from quotad.protocol.messages import Acquire, Error, Hello, Permit
from tests.support.daemon import DaemonProcess, sim_provider_config
from tests.support.fuzz import FUZZ_TABLES
from tests.support.fuzz_extremes import RAW, wide_message
from tests.support.raw_socket import read_replies, unix_connection
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
SHAPES: dict[str, tuple[str, int, int]] = {
    "extra": ("extra", 500_000, 0), "content_addresses": ("content", 0, 7_360_000),
    "tool_choice": ("tool_choice", 400_000, 0), "part_fields": ("part_fields", 400_000, 0),
    "tool_schema": ("tool_schema", 300_000, 0),
    "response_format": ("response_format", 200_000, 0),
    "admin_args": ("admin_args", 600_000, 0), "settle_headers": ("settle_headers", 700_000, 0),
    "http_response_format": ("response_format", 800_000, 0),
    "extra_spread": ("spread_extra", 500_000, 0), "extra_50k": ("extra", 50_000, 0),
    "tool_schema_20k": ("tool_schema", 20_000, 0),
}  # fmt: skip
"""Each measured shape: the :func:`wide_message` shape, its count and its length."""
QUICK_SCALE = 100
ENCODER = FrameEncoder()
HTTP_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"x-quotad-app: bench\r\ncontent-length: %d\r\n\r\n"
)


def payload_of(shape: str, scale: int) -> bytes:
    """The frame's payload (for the front door, the JSON body) of ``shape``."""
    kind, count, length = SHAPES[shape]
    fields = wide_message(kind, count // scale, length // scale, MODEL)
    if shape.startswith("http_"):
        body = {key: value for key, value in fields.items() if key not in ("type", "id")}
        return msgspec.json.encode(body)
    return RAW.encode(fields)


class StatusProbe:
    """Another client sending ``Status`` after ``Status`` on its own connection (a thread);
    when each round trip started and ended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trips: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Client(socket=self.path, app="probe") as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                client.status()
                self.trips.append((started, time.perf_counter()))
                time.sleep(0.001)

    def during(self, start: float, end: float) -> list[float]:
        """Round trips that overlapped ``start``..``end``, in seconds."""
        return [stop - begin for begin, stop in self.trips if stop >= start and begin <= end]


def send_wide(daemon: DaemonProcess, port: int, shape: str, payload: bytes) -> tuple[str, float]:
    """Send one wide request and read its answer: what it was, and the latency."""
    if shape.startswith("http_"):
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            started = time.perf_counter()
            sock.sendall(HTTP_HEAD % len(payload))
            sock.sendall(payload)
            status = read_answer(sock)
            return f"http {status}", time.perf_counter() - started
    with unix_connection(daemon.socket_path, timeout_s=120) as sock:
        sock.sendall(ENCODER.encode(Hello(app="wide")))
        read_replies(sock, 1)
        if shape == "settle_headers":  # a permit really granted, settled with wide headers
            sock.sendall(ENCODER.encode(Acquire(id=7, target=MODEL, tokens=10)))
            permit = read_replies(sock, 1)[0]
            assert isinstance(permit, Permit), permit
            fields = msgspec.msgpack.decode(payload)
            fields["permit_id"] = permit.permit_id
            payload = RAW.encode(fields)
        started = time.perf_counter()
        sock.sendall(len(payload).to_bytes(4, "big") + payload)
        reply = read_replies(sock, 1)[0]
        latency = time.perf_counter() - started
    answer = (
        f"{reply.code}: {reply.message[:90]}" if isinstance(reply, Error) else type(reply).__name__
    )
    return answer, latency


class Arm:
    """One daemon measured, and what its rounds gathered, by shape."""

    def __init__(self, daemon: DaemonProcess, port: int) -> None:
        assert daemon.process is not None
        self.daemon = daemon
        self.pid = daemon.process.pid
        self.port = port
        self.gathered: dict[str, dict[str, list[Any]]] = {}

    def round(self, shape: str, payload: bytes) -> None:
        probe = StatusProbe(self.daemon.socket_path)
        probe.thread.start()
        time.sleep(0.2)  # the probe connected and going
        cpu_before = cpu_seconds(self.pid, main_thread=True)
        start = time.perf_counter()
        answer, latency = send_wide(self.daemon, self.port, shape, payload)
        end = time.perf_counter()
        cpu = cpu_seconds(self.pid, main_thread=True) - cpu_before
        time.sleep(0.1)
        probe.stop.set()
        probe.thread.join()
        trips = probe.during(start, end)
        gathered = self.gathered.setdefault(shape, {})
        gathered.setdefault("answers", []).append(answer)
        gathered.setdefault("latency", []).append(latency)
        gathered.setdefault("held", []).append(max(trips))
        gathered.setdefault("trips", []).append(len(trips))
        gathered.setdefault("cpu", []).append(cpu)

    def figures(self, sizes: dict[str, int]) -> dict[str, Any]:
        return {
            shape: {
                "mib": round(sizes[shape] / 2**20, 1),
                "answers": sorted(set(gathered["answers"])),
                "status_max_ms": round(statistics.median(gathered["held"]) * 1000, 1),
                "statuses_during": statistics.median(gathered["trips"]),
                "loop_cpu_ms": round(statistics.median(gathered["cpu"]) * 1000, 1),
                "latency_ms": round(statistics.median(gathered["latency"]) * 1000, 1),
            }
            for shape, gathered in self.gathered.items()
        }


def measure(
    sources: list[str | None], shapes: list[str], rounds: int, scale: int
) -> list[dict[str, Any]]:
    """The figures of a daemon run from each of ``sources`` (None: this tree's), beside each
    other on the same sim, their rounds in turn."""
    payloads = {shape: payload_of(shape, scale) for shape in shapes}
    with SimProcess() as sim, contextlib.ExitStack() as stack:
        arms = []
        for source in sources:
            provider = sim_provider_config("sim", sim.base_url)
            arms.append(Arm(*front_door_daemon(stack, source, provider, FUZZ_TABLES)))
        for shape in shapes:
            for arm in alternating(arms, rounds):
                arm.round(shape, payloads[shape])
        sizes = {shape: len(payload) for shape, payload in payloads.items()}
        return [arm.figures(sizes) for arm in arms]


def main() -> None:
    parser = bench_parser(__doc__, "each shape a hundredth as wide, one round (smoke)", rounds=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--baseline-source", help="a checkout whose daemon to measure alongside")
    args = parser.parse_args()
    rounds, scale = (1, QUICK_SCALE) if args.quick else (args.rounds, 1)
    sources: list[str | None] = [None] + ([args.baseline_source] if args.baseline_source else [])
    arms = measure(sources, args.shapes.split(","), rounds, scale)
    figures: dict[str, Any] = {"bench": "wide_requests", "rounds": rounds, **arms[0]}
    if args.baseline_source:
        figures["baseline"] = arms[1]
    print_figures(figures)


if __name__ == "__main__":
    main()
