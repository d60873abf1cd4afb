"""A soak run: does anything in the daemon grow without bound under long, varied churn? Prints
one JSON line.

A real ``quotad sim`` (a few percent of answers failed, reset or cut mid-stream) and a real
``quotad serve`` (cache off, or on with ``--cache-mb`` as its small bound over distinct prompts;
the HTTP front door on; a budget and guardrails as the fuzzers configure them; an app with a
tiny rate limit, one with a tiny budget, a model with a tight window) run under a mixed load
from this process for ``--seconds``:

- native clients that connect as one of 3,000 apps, make a few requests, and disconnect (some
  with a request still in flight): chats with distinct prompts, users and tags (some masked by
  the guardrails, some blocked), streams read whole or abandoned after a chunk, requests
  cancelled by a short timeout, embeddings, status, spend, permits settled or left to their
  connection, a ``Subscribe`` (what ``quotad top`` uses) read a few times and dropped,
  models made by name (past the 1,024 a config allows), unknown models, bad requests, garbage
  frames;
- the HTTP front door on keep-alive connections (OpenAI chat and embeddings, Anthropic
  messages, plain and streamed, /v1/models, /metrics, /healthz, bad bodies) and on new
  connections (one request each; streams dropped after their first bytes);
- a config reload every ``--reload-s`` (an app's limit and a provider's timeout changed: the
  provider is replaced).

The daemon runs under ``bench/_soak_probe.py`` (a thread answering the benchmark's questions
from inside its process). After a warm-up (a fifth of the run by default), every
``--sample-s`` it samples ``/proc/PID`` (VmRSS, open descriptors, threads), the probe's figures
(asyncio tasks, the interpreter's allocated blocks: every live Python object, strings too; what
glibc's malloc holds in use, SQLite's page cache among it, and free) and the sizes of
``quotad.db`` and its WAL. Figures: requests done (and per kind), errors by code; each sampled
figure at start, end and peak; the slopes of RSS, blocks and malloc in use per 10,000
requests over the first and the second half of the measured run (a leak keeps its slope; what
fills up to a bound flattens; RSS alone also counts memory the allocators keep after a
transient peak); ``fds_end_minus_start``; the objects the collector tracks at start and once
the load stopped, with the types that grew most; the size of /metrics at start and end; and
the database's bytes per request (the ledger's row: growth by design, bounded by
``daemon.ledger_retention_days``).
``--tracemalloc`` traces the daemon's allocations while measured and prints where what is still
alive was allocated (stderr); ``--samples-out FILE`` keeps every sample.

    uv run python bench/soak.py [--seconds 120] [--quick] [--cache-mb 0] [--seed 1]
        [--tracemalloc] [--samples-out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._soak_load import Load, LoadTargets
from bench._timing import print_figures
from tests.support.daemon import DaemonProcess, free_port, two_sims_config
from tests.support.fuzz import FUZZ_TABLES
from tests.support.sim import SimProcess

MB = 1024 * 1024
PROBE = Path(__file__).resolve().parent / "_soak_probe.py"
RELOAD_MARK = "# soak: flipped on each reload"


def soak_config(sim: SimProcess, port: int, cache_mb: int) -> str:
    """The daemon's config: both sims' wire formats (one sim process), the front door, the
    fuzzers' budget and guardrails, and the tables that make some requests wait or fail."""
    cache = (
        f'[cache]\nmode = "on"\nmax_mb = {cache_mb}\n' if cache_mb else '[cache]\nmode = "off"\n'
    )
    extra = (
        FUZZ_TABLES
        + cache
        + f"[apps.throttled]\nrpm = 30 {RELOAD_MARK}\n"
        + "[apps.broke]\ndaily_usd = 0.000001\n"
        + '[providers.sim.models."queued"]\nlimits = [{{ requests = 20, window_s = 1.0 }}]\n'
    )
    http = f'listen = "127.0.0.1:{port}"\nauth = "none"\nidle_timeout_s = 5'
    provider = f"rpm = 1000000\ntimeout_s = 30 {RELOAD_MARK}"
    return two_sims_config(sim.base_url, sim.url, http=http, sim=provider, extra=extra)


@dataclass
class Sample:
    at_s: float
    requests: int
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    python_blocks: int
    malloc_in_use_mb: float
    malloc_free_mb: float
    db_mb: float
    wal_mb: float


@dataclass
class Sampler:
    """Samples the daemon every ``every_s`` on a thread; the load counts ``requests``."""

    pid: int
    probe: Path
    database: Path
    every_s: float
    load: Load
    samples: list[Sample] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Sample:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        wal = self.database.with_name(self.database.name + "-wal")
        inside = ask(self.probe, "tasks")
        taken = Sample(
            at_s=time.monotonic() - self.started,
            requests=self.load.requests,
            rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
            fds=len(list(Path(f"/proc/{self.pid}/fd").iterdir())),
            threads=int(fields["Threads"]),
            tasks=int(inside["tasks"]),
            python_blocks=int(inside["python_blocks"]),
            malloc_in_use_mb=float(inside.get("malloc_in_use_mb", 0.0)),
            malloc_free_mb=float(inside.get("malloc_free_mb", 0.0)),
            db_mb=size(self.database) / MB,
            wal_mb=size(wal) / MB,
        )
        self.samples.append(taken)
        return taken

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def ask(probe: Path, word: str) -> dict[str, Any]:
    """The probe's answer to ``word`` (see bench/_soak_probe.py)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(str(probe))
        connection.sendall(word.encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = connection.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data)
    if "error" in answer:
        raise RuntimeError(f"the probe could not answer {word}: {answer['error']}")
    return answer


def slope_per_10k(samples: list[Sample], name: str = "rss_mb") -> float:
    """Least-squares slope of a sampled figure (RSS in MB by default) against requests done,
    per 10,000 requests."""
    if len(samples) < 2:
        return 0.0
    xs = [sample.requests for sample in samples]
    ys = [float(getattr(sample, name)) for sample in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread * 1e4


def grown_types(before: dict[str, int], after: dict[str, int], count: int = 8) -> dict[str, int]:
    """The object types whose count grew most between two ``objects`` answers."""
    growth = Counter({name: after.get(name, 0) - before.get(name, 0) for name in after})
    return {name: delta for name, delta in growth.most_common(count) if delta > 0}


def reload_config(daemon: DaemonProcess) -> None:
    """Change the config a little before a reload, so that it applies something: an app's
    limit, and a provider's timeout (the provider is replaced: its pool closed once the
    requests that began before have ended). Each line marked flips between 30 and 31."""
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(
        re.sub(
            rf"= (30|31) {RELOAD_MARK}", lambda found: f"= {61 - int(found[1])} {RELOAD_MARK}", text
        )
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    sim = SimProcess(
        latency_ms=3,
        jitter_ms=3,
        fail_rate=0.03,
        seed=args.seed,
        extra_args=["--reset-rate", "0.01", "--break-stream-rate", "0.02", "--chunk-delay-ms", "1"],
    )
    with sim:
        config = soak_config(sim, port, args.cache_mb)
        daemon = DaemonProcess(config)
        probe = daemon.directory / "probe.sock"
        daemon.launcher = (sys.executable, str(PROBE), str(probe))  # runs the daemon
        with daemon:
            assert daemon.process is not None
            targets = LoadTargets(daemon.socket_path, f"http://127.0.0.1:{port}")
            load = Load(targets, random.Random(args.seed), reload=lambda: reload_config(daemon))
            sampler = Sampler(
                daemon.process.pid, probe, daemon.state_dir / "quotad.db", args.sample_s, load
            )
            warmup_s = args.warmup_s if args.warmup_s is not None else args.seconds / 5
            objects: dict[str, dict[str, Any]] = {}
            metrics_kb: dict[str, float] = {}

            async def run() -> None:
                async with anyio.create_task_group() as group:
                    group.start_soon(load.run, args.seconds, args.native, args.http, args.reload_s)
                    await anyio.sleep(warmup_s)
                    objects["start"] = await anyio.to_thread.run_sync(ask, probe, "objects")
                    metrics_kb["start"] = await metrics_size_kb(targets.url)
                    if args.tracemalloc:
                        await anyio.to_thread.run_sync(ask, probe, "tracemalloc")
                    with sampler:
                        sampler.sample()
                        await load.finished.wait()
                    sampler.sample()
                    metrics_kb["end"] = await metrics_size_kb(targets.url)
                    if args.tracemalloc:  # what grew while measured, for whoever hunts it
                        grown = await anyio.to_thread.run_sync(ask, probe, "tracemalloc")
                        print(f"traced {grown['traced_mb']:.1f} MB", file=sys.stderr)
                        print("\n".join(grown["grown"]), file=sys.stderr)
                objects["end"] = await anyio.to_thread.run_sync(ask, probe, "objects")

            anyio.run(run, backend_options={"use_uvloop": True})
            served_after = still_serves(targets)
            alive = daemon.process.poll() is None
            tracebacks = daemon.log().count("Traceback")
    if args.samples_out is not None:
        lines = [msgspec.json.encode(sample) for sample in sampler.samples]
        args.samples_out.write_bytes(b"\n".join(lines) + b"\n")
    result = figures(args, load, sampler.samples, objects, served_after and alive, tracebacks)
    result["metrics_kb_start"], result["metrics_kb_end"] = metrics_kb["start"], metrics_kb["end"]
    return result


async def metrics_size_kb(url: str) -> float:
    """The size of the front door's /metrics text (it grows with the targets and apps it
    counts apart, up to their bounds)."""
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        return round(len((await http.get(f"{url}/metrics")).content) / 1024, 1)


def still_serves(targets: LoadTargets) -> bool:
    """Whether the daemon still answers a chat on the socket and on the front door."""
    from quotad.client import Client

    with Client(socket=targets.socket, app="soak-after") as client:
        native = bool(client.chat("fast", [{"role": "user", "content": "still there?"}]).content)
    body = {"model": "fast", "messages": [{"role": "user", "content": "still there?"}]}
    reply = httpx.post(f"{targets.url}/v1/chat/completions", json=body, trust_env=False)
    return native and reply.status_code == 200


def figures(
    args: argparse.Namespace,
    load: Load,
    samples: list[Sample],
    objects: dict[str, dict[str, Any]],
    served_after: bool,
    tracebacks: int,
) -> dict[str, Any]:
    start, end = samples[0], samples[-1]
    middle = start.requests + (end.requests - start.requests) / 2
    first_half = [sample for sample in samples if sample.requests <= middle]
    second_half = [sample for sample in samples if sample.requests >= middle]
    measured = end.requests - start.requests
    result: dict[str, Any] = {
        "bench": "soak",
        "seconds": args.seconds,
        "cache_mb": args.cache_mb,
        "requests": load.requests,
        "requests_measured": measured,
        "requests_per_s": round(measured / max(end.at_s - start.at_s, 1e-9), 1),
        "by_kind": dict(sorted(load.kinds.items())),
        "errors": dict(sorted(load.errors.items())),
        "reloads": load.reloads,
        "samples": len(samples),
    }
    for name in ("rss_mb", "fds", "threads", "tasks", "python_blocks", "malloc_in_use_mb"):
        values = [getattr(sample, name) for sample in samples]
        result[f"{name}_start"] = round(values[0], 1)
        result[f"{name}_end"] = round(values[-1], 1)
        result[f"{name}_peak"] = round(max(values), 1)
    result["rss_slope_mb_per_10k_first_half"] = round(slope_per_10k(first_half), 3)
    result["rss_slope_mb_per_10k_second_half"] = round(slope_per_10k(second_half), 3)
    for name in ("python_blocks", "malloc_in_use_mb"):
        for half, chosen in (("first", first_half), ("second", second_half)):
            result[f"{name}_slope_per_10k_{half}_half"] = round(slope_per_10k(chosen, name), 3)
    result["malloc_free_mb_end"] = round(end.malloc_free_mb, 1)
    result["fds_end_minus_start"] = end.fds - start.fds
    result["threads_end_minus_start"] = end.threads - start.threads
    result["tasks_end_minus_start"] = end.tasks - start.tasks
    result["objects_start"] = objects["start"]["objects"]
    result["objects_end"] = objects["end"]["objects"]
    result["objects_grown_most"] = grown_types(objects["start"]["types"], objects["end"]["types"])
    result["db_mb_start"] = round(start.db_mb, 2)
    result["db_mb_end"] = round(end.db_mb, 2)
    result["wal_mb_peak"] = round(max(sample.wal_mb for sample in samples), 2)
    result["db_bytes_per_request"] = round((end.db_mb - start.db_mb) * MB / max(measured, 1), 1)
    result["served_after"] = served_after
    result["tracebacks_in_log"] = tracebacks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument(
        "--warmup-s", type=float, default=None, help="before sampling (default: a fifth of the run)"
    )
    parser.add_argument("--cache-mb", type=int, default=0, help="0: cache off")
    parser.add_argument("--native", type=int, default=8, help="native client tasks")
    parser.add_argument("--http", type=int, default=6, help="front-door tasks")
    parser.add_argument("--reload-s", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the daemon's allocations; the lines that grew most go to stderr (slow)",
    )
    parser.add_argument("--samples-out", type=Path, help="write every sample there (JSON lines)")
    parser.add_argument("--quick", action="store_true", help="about 5 s (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.sample_s, args.reload_s = 5.0, 0.5, 2.0
    print_figures(measure(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
