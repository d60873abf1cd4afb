"""One load process for the cross-process gate tests and ``bench/gates.py``: a closed-loop
client (the next request as soon as the last one answered) until a deadline.

    python -m tests.support.load daemon --socket S --app A --model M --start-at T --duration D
    python -m tests.support.load direct --url U --limit N --window S --start-at T --duration D

``daemon`` goes through quotad (its shared gates). ``direct`` is what users do today: the
process calls the provider itself, behind its own in-process sliding-window limiter set to
the provider's limit. Prints one JSON line: app, ok (replies in the steady state: after
``--warmup`` and before the deadline), rate_limited (429s seen), errors.

With ``--start-on-stdin`` instead of ``--start-at``, the process prints ``ready`` once it is
imported and connected, then reads the start time (an epoch) from stdin: :func:`start_together`
starts a set of such processes at once as soon as the last is ready, not after a fixed delay
that must cover the slowest start on a loaded machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import subprocess
import sys
import time
from typing import Any

import msgspec

from tests.support.daemon import daemon_config

MESSAGES = [{"role": "user", "content": "share the limit fairly"}]


READY = "ready"
START_MARGIN_S = 0.2
"""From the last process ready to the start: time to hand every process the start time."""


def wait_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        time.sleep(delay)


def read_start() -> float:
    """Say ready (a line on stdout) and read the start time (an epoch) from stdin: the
    process's side of :func:`start_together`."""
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    return float(sys.stdin.readline())


def wait_for_start(args: argparse.Namespace) -> None:
    """Wait for the start: ``--start-at``, or (``--start-on-stdin``) :func:`read_start`."""
    wait_until(read_start() if args.start_on_stdin else args.start_at)


def start_together(
    commands: list[list[str]], ready_timeout_s: float = 60.0
) -> list[subprocess.Popen[bytes]]:
    """Start ``commands`` (load processes with ``--start-on-stdin``, or any that call
    :func:`read_start`), wait until every one is ready, then give them all one start time,
    :data:`START_MARGIN_S` ahead; the processes, to ``communicate()`` with (it closes their
    stdin and reads the JSON line). Kills them all if one is not ready in ``ready_timeout_s``."""
    running = [subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for c in commands]
    try:
        deadline = time.monotonic() + ready_timeout_s
        for process in running:
            assert process.stdout is not None
            line = read_line_raw(process.stdout.fileno(), deadline)
            if line != READY.encode() + b"\n":
                raise RuntimeError(f"a load process was not ready: {line!r}")
        start_at = str(time.time() + START_MARGIN_S).encode() + b"\n"
        for process in running:
            assert process.stdin is not None
            process.stdin.write(start_at)
            process.stdin.flush()
    except BaseException:
        for process in running:
            process.kill()
            process.wait()
        raise
    return running


def read_line_raw(fd: int, deadline: float) -> bytes:
    """One line from ``fd``, a byte at a time (nothing past it is read: the rest is left to
    ``communicate()``); what came before EOF or ``deadline`` if no whole line did."""
    line = b""
    while not line.endswith(b"\n"):
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        byte = os.read(fd, 1) if readable else b""
        if not byte:
            break
        line += byte
    return line


def through_daemon(args: argparse.Namespace) -> dict[str, Any]:
    from quotad.client import Client, QuotadError

    result: dict[str, Any] = {"app": args.app, "ok": 0, "rate_limited": 0, "errors": {}}
    with Client(socket=args.socket, app=args.app) as client:
        client.status()  # connected before the start
        wait_for_start(args)
        counted_from = time.monotonic() + args.warmup
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            try:
                client.chat(args.model, MESSAGES, max_tokens=4, max_wait_s=60, cache="bypass")
            except QuotadError as error:
                result["errors"][error.code] = result["errors"].get(error.code, 0) + 1
                continue
            if counted_from <= time.monotonic() < deadline:  # the steady state only
                result["ok"] += 1
    return result


def direct_with_own_limiter(args: argparse.Namespace) -> dict[str, Any]:
    """Each process keeps its own exact sliding window at the provider's limit."""
    import httpx  # here: half a second to import, which the daemon's clients need not wait

    result: dict[str, Any] = {"app": args.app, "ok": 0, "rate_limited": 0, "errors": {}}
    admitted: collections.deque[float] = collections.deque()
    body = msgspec.json.encode({"model": "m", "messages": MESSAGES, "max_tokens": 4})
    with httpx.Client(base_url=args.url, headers={"authorization": "Bearer k"}) as http:
        wait_for_start(args)
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline:
            now = time.monotonic()
            while admitted and admitted[0] + args.window <= now:
                admitted.popleft()
            if len(admitted) >= args.limit:
                time.sleep(max(0.0, admitted[0] + args.window - now))
                continue
            admitted.append(now)
            response = http.post("/chat/completions", content=body,
                                 headers={"content-type": "application/json"})  # fmt: skip
            if response.status_code == 429:
                result["rate_limited"] += 1
                time.sleep(float(response.headers.get("retry-after", "1")))
            elif response.status_code == 200:
                result["ok"] += 1
            else:
                code = str(response.status_code)
                result["errors"][code] = result["errors"].get(code, 0) + 1
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.support.load")
    parser.add_argument("mode", choices=["daemon", "direct"])
    parser.add_argument("--app", default="load")
    parser.add_argument("--socket")
    parser.add_argument("--model", default="sim/m")
    parser.add_argument("--url")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--start-on-stdin", action="store_true", help="say ready, read the start")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds not counted")
    args = parser.parse_args(argv)
    run = through_daemon if args.mode == "daemon" else direct_with_own_limiter
    sys.stdout.write(msgspec.json.encode(run(args)).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- the scenario

SHARED_LIMIT_TABLES = """\
[gates]
guard_s = {guard}
[providers.sim]
kind = "openai"
base_url = "{base_url}"
limits = [{{{{ requests = {limit}, window_s = {window} }}}}]
[apps.light]
share = 1
[apps.heavy]
share = 3
"""


def peak_in_window(times: list[float], window_s: float) -> int:
    """The most of ``times`` (sorted) inside any half-open window of ``window_s``."""
    peak, start = 0, 0
    for end, t in enumerate(times):
        while times[start] + window_s <= t:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def limit_figures(
    log: list[dict[str, Any]], limit: int, window_s: float, duration_s: float
) -> dict[str, Any]:
    """What the sim's log of chat requests says of its limit of ``limit`` per ``window_s``:
    the most requests that arrived (and that it admitted) within any window, and utilization:
    the requests admitted over the whole windows of ``duration_s`` from the first admitted,
    as a share of the limit over those windows."""
    arrivals = sorted(line["mono"] for line in log)
    admitted = sorted(line["mono"] for line in log if line["status"] == 200)
    windows = int(duration_s // window_s)
    first = admitted[0] if admitted else 0.0
    measured = [t for t in admitted if first <= t < first + windows * window_s]
    return {
        "peak_admitted_in_window": peak_in_window(admitted, window_s),
        "peak_arrivals_in_window": peak_in_window(arrivals, window_s),
        "utilization": round(len(measured) / (windows * limit), 4) if windows else 0.0,
    }


def run_shared_limit(
    mode: str,
    processes: int,
    limit: int,
    window_s: float,
    duration_s: float,
    guard_s: float = 0.05,
) -> dict[str, Any]:
    """``processes`` closed-loop processes (half app "light" share 1, half "heavy" share 3)
    against a sim that enforces ``limit`` requests per ``window_s``, started together; the
    figures from the sim's own log."""
    from tests.support.daemon import DaemonProcess
    from tests.support.sim import SimProcess, read_sim_log

    with SimProcess(rpm=limit, window_s=window_s, latency_ms=5, log=True) as sim:
        daemon = None
        if mode == "daemon":
            tables = SHARED_LIMIT_TABLES.format(
                base_url=sim.base_url, limit=limit, window=window_s, guard=guard_s
            )
            daemon = DaemonProcess(daemon_config(tables, cache='mode = "off"')).start()
        try:
            commands = []
            for index in range(processes):
                app = "heavy" if index % 2 else "light"
                command = [sys.executable, "-m", "tests.support.load", mode, "--app", app,
                           "--start-on-stdin", "--duration", str(duration_s),
                           "--warmup", str(window_s)]  # fmt: skip
                if daemon is not None:
                    command += ["--socket", str(daemon.socket_path)]
                else:
                    command += ["--url", sim.base_url, "--limit", str(limit),
                                "--window", str(window_s)]  # fmt: skip
                commands.append(command)
            running = start_together(commands)
            outputs = [p.communicate(timeout=duration_s + 60)[0] for p in running]
        finally:
            if daemon is not None:
                daemon.__exit__(None, None, None)
        stats = sim.stats()
        sim.stop()
        assert sim.log_path is not None
        log = [
            line
            for line in read_sim_log(sim.log_path)
            if line["path"].endswith("/chat/completions")
        ]
    results = [msgspec.json.decode(output) for output in outputs]
    ok = collections.Counter[str]()
    for result in results:
        ok[result["app"]] += result["ok"]
    return {
        "processes": processes,
        "limit": limit,
        "window_s": window_s,
        "duration_s": duration_s,
        "sim_429s": stats["rate_limited"],
        **limit_figures(log, limit, window_s, duration_s),
        "ok_by_app": dict(ok),
        "heavy_to_light": round(ok["heavy"] / ok["light"], 3) if ok["light"] else None,
        "client_errors": sum(sum(r["errors"].values()) for r in results),
    }
