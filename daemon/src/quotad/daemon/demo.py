"""``quotad demo``: simulated providers, a daemon and several apps' client processes, all in a
temp dir, with a live view (the TUI, or a text summary with ``--headless``).

Everything is real: the sims are ``quotad sim`` processes on loopback ports, the daemon is
``quotad serve`` on a temp Unix socket, and each app is its own process using
:class:`quotad.client.Client`. ``python -m quotad.daemon.demo load ...`` is one such app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from quotad.protocol.figures import usd

SIM_READY_PREFIX = "quotad sim listening on "
START_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class DemoApp:
    """One app of the demo: its name, policy and how hard it pushes."""

    name: str
    priority: str
    share: int
    processes: int
    concurrency: int
    model: str


DEMO_APPS = (
    DemoApp("agent", "high", 3, 1, 2, "fast"),
    DemoApp("indexer", "low", 1, 2, 3, "fast"),
    DemoApp("notebook", "normal", 2, 1, 1, "smart"),
)
PROMPTS = (
    "summarise the design of a rate limiter",
    "what is a sliding window",
    "list three uses of SQLite",
    "explain circuit breakers briefly",
    "why share one rate budget across processes",
    "write a haiku about queues",
)

DEMO_CONFIG = """\
[daemon]
state_dir = "{state_dir}"
drain_s = 5

[http]
listen = ""

# each gate is the limit its sim enforces: the sims see no 429 from quotad's traffic
[providers.openai-sim]
kind = "openai"
base_url = "{openai_url}"
limits = [{{ requests = 40, window_s = 5.0 }}]

[providers.anthropic-sim]
kind = "anthropic"
base_url = "{anthropic_url}"
limits = [{{ requests = 20, window_s = 2.0 }}]

[models.fast]
targets = ["openai-sim/gpt-4o-mini", "anthropic-sim/claude-3-5-haiku-latest"]
strategy = "failover"

[models.smart]
targets = ["anthropic-sim/claude-sonnet-4-5", "openai-sim/gpt-4o"]
strategy = "failover"

[apps.agent]
priority = "high"
share = 3

[apps.indexer]
priority = "low"
share = 1

[apps.notebook]
priority = "normal"
share = 2
"""


# --------------------------------------------------------------------------- processes


def _python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def start_sim(args: list[str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a ``quotad sim``; its process and ``http://host:port``."""
    process = subprocess.Popen(
        _python_module("quotad.daemon.cli", "sim", "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.startswith(SIM_READY_PREFIX):
        process.kill()
        raise RuntimeError(f"quotad sim did not start: {line!r}")
    return process, line.removeprefix(SIM_READY_PREFIX)


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until the daemon accepts connections on ``path``."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"quotad serve exited with {process.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"quotad serve did not listen on {path} within {timeout_s:.0f} s")


@dataclass
class DemoWorld:
    """The demo's processes and files."""

    directory: Path
    socket_path: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    loads: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sim_urls: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the load, then the daemon and sims (SIGTERM, then SIGKILL)."""
        for process in [*self.loads, *reversed(self.processes)]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.loads, *reversed(self.processes)]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def demo_world(duration_s: float) -> Iterator[DemoWorld]:
    """Sims, daemon and load processes, torn down on exit."""
    directory = Path(tempfile.mkdtemp(prefix="quotad-demo-", dir="/tmp"))
    world = DemoWorld(directory, directory / "quotad.sock")
    log = (directory / "processes.log").open("ab")
    try:
        openai_sim, openai_url = start_sim(
            ["--rpm", "40", "--window", "5", "--latency-ms", "120", "--jitter-ms", "60"], log
        )
        world.processes.append(openai_sim)
        anthropic_sim, anthropic_url = start_sim(
            ["--rpm", "20", "--window", "2", "--latency-ms", "200", "--jitter-ms", "80",
             "--fail-rate", "0.05"],
            log,
        )  # fmt: skip
        world.processes.append(anthropic_sim)
        world.sim_urls += [openai_url, anthropic_url]
        config_path = directory / "quotad.toml"
        config_path.write_text(
            DEMO_CONFIG.format(
                state_dir=directory / "state",
                openai_url=f"{openai_url}/v1",
                anthropic_url=f"{anthropic_url}/v1",
            )
        )
        env = {**os.environ, "QUOTAD_SOCKET": str(world.socket_path)}
        daemon = subprocess.Popen(
            _python_module("quotad.daemon.cli", "serve", "--config", str(config_path)),
            stdout=log,
            stderr=log,
            env=env,
        )
        world.processes.append(daemon)
        wait_for_socket(world.socket_path, daemon, START_TIMEOUT_S)
        for app in DEMO_APPS:
            for index in range(app.processes):
                command = _python_module(
                    "quotad.daemon.demo", "load", "--socket", str(world.socket_path),
                    "--app", app.name, "--model", app.model,
                    "--concurrency", str(app.concurrency), "--seed", str(index),
                    "--duration", str(duration_s),
                )  # fmt: skip
                world.loads.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log))
        yield world
    finally:
        world.stop()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- one app's load


class LoadResult(msgspec.Struct):
    """What one load process did, printed as one JSON line when it stops."""

    app: str
    ok: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s_total: float = 0.0
    wait_s_total: float = 0.0


def run_load(
    socket_path: str, app: str, model: str, concurrency: int, seed: int, duration_s: float
) -> LoadResult:
    """Send chats from ``concurrency`` threads until ``duration_s`` passes or SIGTERM."""
    import threading

    from quotad.client import Client, QuotadError

    result = LoadResult(app=app)
    stop = threading.Event()
    lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + duration_s if duration_s else float("inf")

    def worker(number: int) -> None:
        rng = random.Random(seed * 100 + number)
        with Client(socket=socket_path, app=app) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                # about one request in four repeats an earlier one: a cache hit
                prompt = f"{rng.choice(PROMPTS)} (take {rng.randint(1, 40)})"
                try:
                    reply = client.chat(
                        model,
                        [{"role": "user", "content": prompt}],
                        max_tokens=64,
                        max_wait_s=10,
                    )
                except QuotadError as error:
                    with lock:
                        result.errors[error.code] = result.errors.get(error.code, 0) + 1
                    stop.wait(0.2)
                    continue
                with lock:
                    result.ok += 1
                    result.cached += reply.cached
                    result.prompt_tokens += reply.usage.prompt_tokens
                    result.completion_tokens += reply.usage.completion_tokens
                    result.cost_usd += reply.cost_usd
                    result.latency_s_total += reply.latency_s
                    result.wait_s_total += reply.wait_s
                stop.wait(rng.uniform(0.0, 0.3))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


# --------------------------------------------------------------------------- the view


def _summary_lines(world: DemoWorld, started: float) -> list[str]:
    from quotad.client import Client, QuotadError

    try:
        with Client(socket=world.socket_path, app="demo") as client:
            status = client.status()
    except QuotadError as error:
        return [f"daemon not answering: {error}"]
    lines = [
        f"quotad demo  {time.monotonic() - started:5.0f}s  requests {status.requests_total}  "
        f"in flight {status.in_flight}  socket {world.socket_path}"
    ]
    for target in status.targets:
        lines.append(
            f"  {target.name:42} {target.breaker:9} in flight {target.in_flight:3}  "
            f"requests {target.requests:5}  failures {target.failures:4}"
        )
    for gate in status.gates:
        windows = "  ".join(f"{w.used}/{w.limit} {w.unit}/{w.window_s:g}s" for w in gate.windows)
        lines.append(f"  gate {gate.name:37} {windows}")
    return lines


def _collect_results(world: DemoWorld) -> dict[str, LoadResult]:
    totals: dict[str, LoadResult] = {}
    decoder = msgspec.json.Decoder(LoadResult)
    for process in world.loads:
        output = process.stdout.read() if process.stdout else b""
        for line in output.splitlines():
            with contextlib.suppress(msgspec.DecodeError):
                part = decoder.decode(line)
                total = totals.setdefault(part.app, LoadResult(app=part.app))
                total.ok += part.ok
                total.cached += part.cached
                total.prompt_tokens += part.prompt_tokens
                total.completion_tokens += part.completion_tokens
                total.cost_usd += part.cost_usd
                total.latency_s_total += part.latency_s_total
                total.wait_s_total += part.wait_s_total
                for code, count in part.errors.items():
                    total.errors[code] = total.errors.get(code, 0) + count
    return totals


def _sims_line(world: DemoWorld) -> str:
    """What the simulated providers saw: the proof that the shared gates held."""
    import httpx

    seen = []
    for url in world.sim_urls:
        try:
            stats = httpx.get(f"{url}/sim/stats", timeout=2.0).json()
        except (httpx.HTTPError, ValueError):
            continue
        seen.append((stats["requests"], stats["rate_limited"], stats["failed"]))
    requests, limited, failed = (
        (sum(column) for column in zip(*seen, strict=True)) if seen else (0, 0, 0)
    )
    return (
        f"  the providers saw {requests} requests: {limited} answered 429 (over their limits), "
        f"{failed} injected failures (failed over)"
    )


def _final_summary(results: dict[str, LoadResult], elapsed_s: float) -> str:
    lines = [f"quotad demo: {elapsed_s:.1f} s of load from {len(results)} apps"]
    for app in DEMO_APPS:
        result = results.get(app.name, LoadResult(app=app.name))
        mean = result.latency_s_total / result.ok * 1000 if result.ok else 0.0
        wait = result.wait_s_total / result.ok * 1000 if result.ok else 0.0
        errors = ", ".join(f"{code} {count}" for code, count in sorted(result.errors.items()))
        lines.append(
            f"  {app.name:9} ({app.priority:6} share {app.share})  ok {result.ok:5}  "
            f"cached {result.cached:4}  mean latency {mean:6.0f} ms  mean wait {wait:6.0f} ms  "
            f"tokens {result.prompt_tokens + result.completion_tokens:7}  "
            f"{usd(result.cost_usd)}" + (f"  errors: {errors}" if errors else "")
        )
    return "\n".join(lines)


def run_demo(*, headless: bool, duration_s: float) -> int:
    """``quotad demo``: the exit code."""
    run_tui: Callable[..., None] | None = None
    if not headless:
        with contextlib.suppress(ImportError):
            from quotad.tui.app import run_tui
    with demo_world(duration_s) as world:
        started = time.monotonic()  # from when the load starts: setting up may take a while
        try:
            if not headless and run_tui is not None:
                run_tui(socket=str(world.socket_path))
            else:
                interactive = sys.stdout.isatty() and not headless
                # Each load process stops by itself after the duration and prints its result;
                # wait for that (a process still starting on a busy machine is not cut short,
                # which would lose its result), with START_TIMEOUT_S more for their start.
                deadline = started + duration_s + START_TIMEOUT_S if duration_s else float("inf")
                while time.monotonic() < deadline and any(p.poll() is None for p in world.loads):
                    lines = _summary_lines(world, started)
                    if interactive:
                        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                    elif int(time.monotonic() - started) % 5 == 0:
                        sys.stdout.write(lines[0] + "\n")
                    sys.stdout.flush()
                    time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        for process in world.loads:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        results = _collect_results(world)
        print("\n".join(_summary_lines(world, started)))
        sims = _sims_line(world)
    print(_final_summary(results, time.monotonic() - started))
    print(sims)
    return 0 if sum(r.ok for r in results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m quotad.daemon.demo load ...``: one app's load process."""
    parser = argparse.ArgumentParser(prog="quotad-demo-load")
    parser.add_argument("command", choices=["load"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = run_load(args.socket, args.app, args.model, args.concurrency, args.seed, args.duration)
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
