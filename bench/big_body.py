"""What one client's big request costs the others: small chats through the HTTP front door
while another client posts chats of about 13 MB (the body bound is ``http.max_body_mb``, 16).

One real ``quotad serve`` (``auth = "none"``, the cache on) in front of two ``quotad sim``s (no
latency): the big chats go to one, the small ones to the other, so that what the small ones
wait for is the daemon, not a sim busy reading a big body. ``--clients`` tasks send small
chats one after another (cache bypassed). Each of ``--rounds`` rounds of a shape of big body
posts ``--big`` big chats one after another alone (each a new prompt: a cache miss), then
has the small chats run alone for as long, then during ``--big`` more. With
``--baseline-source DIR`` a second daemon, run from the sources in DIR, is measured beside
this one on the same sims, their rounds in turn. Shapes:

- ``single``: one user message of ~13 MB of ASCII text;
- ``messages``: 9,000 messages of ~1.4 KB each (the bound is 10,000);
- ``parts``: one message of 9,000 text parts of ~1.4 KB each;
- ``cjk``: one user message of ~13 MB of CJK text (3 bytes a character).

Reported per shape: the small chats' p50, p99 and max latency without and during the big ones
(ms), the big chats' statuses and median latency alone, and the daemon's CPU seconds per big
chat (median of the rounds), measured with no small traffic (from /proc: it does not depend on
what else runs). Prints one JSON line.

    uv run python bench/big_body.py [--rounds 3] [--big 4] [--clients 4] [--mb 13] [--quick]
        [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import alternating, compared_main, cpu_seconds, percentile, source_env
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

MODEL = "sim/gpt-4o-mini"
BIG_MODEL = "big/gpt-4o-mini"
HEADERS = {"content-type": "application/json", "x-quotad-app": "bench"}
SMALL_BODY = msgspec.json.encode(
    {"model": MODEL, "messages": [{"role": "user", "content": "a small chat"}], "max_tokens": 8}
)
PIECES = 9_000
ASCII_LINE = "the quick brown fox jumps over the lazy dog 0123456789. "
CJK_LINE = "快速的棕色狐狸跳过了懒狗。 東京都の天気は晴れです。 "


def _text(line: str, size: int) -> str:
    """``line`` repeated to ``size`` UTF-8 bytes (about)."""
    return line * (size // len(line.encode()) + 1)


def big_chat(shape: str, size: int, nonce: int) -> bytes:
    """A chat body of about ``size`` bytes in ``shape``; ``nonce`` makes its prompt new."""
    head = f"request {nonce}: "
    messages: list[dict[str, Any]]
    if shape == "single":
        messages = [{"role": "user", "content": head + _text(ASCII_LINE, size)}]
    elif shape == "cjk":
        messages = [{"role": "user", "content": head + _text(CJK_LINE, size)}]
    elif shape == "messages":
        piece = _text(ASCII_LINE, size // PIECES)
        roles = itertools.cycle(["user", "assistant"])
        messages = [{"role": next(roles), "content": piece} for _ in range(PIECES - 1)]
        messages.append({"role": "user", "content": head + piece})
    elif shape == "parts":
        piece = _text(ASCII_LINE, size // PIECES)
        parts = [{"type": "text", "text": piece} for _ in range(PIECES - 1)]
        messages = [{"role": "user", "content": [{"type": "text", "text": head}, *parts]}]
    else:
        raise ValueError(shape)
    return msgspec.json.encode({"model": BIG_MODEL, "messages": messages, "max_tokens": 8})


class BigSender:
    """A thread that posts big chats one after another, on a plain socket (whose sendall lets
    go of the GIL, so that the small chats' client in this process is not held); their
    statuses and latencies."""

    def __init__(self, port: int, bodies: Callable[[int], bytes], count: int) -> None:
        self.port = port
        self.bodies = [bodies(index) for index in range(count)]
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=120) as sock:
            for body in self.bodies:
                head = BIG_HEAD % len(body)
                started = time.perf_counter()
                sock.sendall(head)
                sock.sendall(body)
                status = read_answer(sock)
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(status)

    def run(self) -> None:
        self.thread.start()
        self.thread.join()


async def small_chats_while(url: str, clients: int, busy: Callable[[], bool]) -> list[float]:
    """Latencies of small chats from ``clients`` tasks, each one after another, while
    ``busy()`` (at least one each)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60) as http:

        async def client() -> None:
            nonlocal errors
            first = True
            while first or busy():
                first = False
                started = time.perf_counter()
                response = await http.post(url, content=SMALL_BODY, headers=SMALL_HEADERS)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

        async with anyio.create_task_group() as group:
            for _ in range(clients):
                group.start_soon(client)
    if errors:
        raise RuntimeError(f"{errors} small chats failed")
    return latencies


SMALL_HEADERS = {**HEADERS, "x-quotad-cache": "bypass"}
BIG_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"x-quotad-app: bench\r\ncontent-length: %d\r\n\r\n"
)


def read_answer(sock: socket.socket) -> int:
    """Read one answer with a content-length from ``sock``; its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the daemon closed the connection")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the daemon closed the connection")
        rest += chunk
    return int(head.split(b" ", 2)[1])


def latency_figures(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "count": len(latencies),
    }


class Arm:
    """One daemon measured: its port and pid, and what its rounds gathered, by shape."""

    def __init__(self, daemon: DaemonProcess, port: int) -> None:
        assert daemon.process is not None
        self.pid = daemon.process.pid
        self.port = port
        self.gathered: dict[str, dict[str, list[Any]]] = {}

    def round(self, shape: str, size: int, big: int, clients: int, nonces: Any) -> None:
        """One round of ``shape``: big chats alone (the daemon's CPU), small chats alone, then
        small chats during big ones."""

        def bodies(_: int) -> bytes:
            return big_chat(shape, size, next(nonces))

        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        gathered = self.gathered.setdefault(shape, {})
        alone = BigSender(self.port, bodies, big)
        before = cpu_seconds(self.pid)
        alone.run()
        gathered.setdefault("cpu_s", []).append((cpu_seconds(self.pid) - before) / big)
        quiet_until = time.monotonic() + max(1.0, sum(alone.latencies))
        quiet = anyio.run(small_chats_while, url, clients, lambda: time.monotonic() < quiet_until)
        sender = BigSender(self.port, bodies, big)
        sender.thread.start()
        during = anyio.run(small_chats_while, url, clients, sender.thread.is_alive)
        sender.thread.join()
        gathered.setdefault("body_bytes", []).append(len(sender.bodies[0]))
        gathered.setdefault("statuses", []).extend(alone.statuses + sender.statuses)
        gathered.setdefault("big_latencies", []).extend(alone.latencies)
        gathered.setdefault("without", []).extend(quiet)
        gathered.setdefault("during", []).extend(during)

    def figures(self) -> dict[str, Any]:
        return {
            shape: {
                "body_mb": round(gathered["body_bytes"][0] / 1e6, 2),
                "big_status": sorted(set(gathered["statuses"])),
                "big_latency_ms_p50": round(statistics.median(gathered["big_latencies"]) * 1000, 1),
                "daemon_cpu_s_per_big": round(statistics.median(gathered["cpu_s"]), 3),
                "small_without": latency_figures(gathered["without"]),
                "small_during": latency_figures(gathered["during"]),
            }
            for shape, gathered in self.gathered.items()
        }


def measure(
    sources: list[str | None], shapes: list[str], size: int, rounds: int, big: int, clients: int
) -> list[dict[str, Any]]:
    """The figures of a daemon run from each of ``sources`` (None: this tree's), all beside
    each other on the same sims, their rounds in turn (the first in alternate order), so that
    the noise of a shared machine falls on all alike."""
    nonces = itertools.count()
    with SimProcess() as sim, SimProcess() as big_sim, contextlib.ExitStack() as stack:
        arms = []
        for source in sources:
            port = free_port()
            config = daemon_config(
                sim_provider_config("sim", sim.base_url),
                sim_provider_config("big", big_sim.base_url),
                http=f'listen = "127.0.0.1:{port}"\nauth = "none"',
            )
            daemon = stack.enter_context(DaemonProcess(config, env=source_env(source)))
            arms.append(Arm(daemon, port))
        for shape in shapes:
            for arm in arms:  # warm-up: one big chat alone (lazy imports, first allocations)
                warm = big_chat(shape, size, next(nonces))
                BigSender(arm.port, lambda _, body=warm: body, 1).run()  # type: ignore[misc]
            for arm in alternating(arms, rounds):
                arm.round(shape, size, big, clients, nonces)
        return [arm.figures() for arm in arms]


def main() -> None:
    def in_megabytes(
        sources: list[str | None], shapes: list[str], mb: float, rounds: int, big: int, clients: int
    ) -> list[dict[str, Any]]:
        return measure(sources, shapes, int(mb * 1e6), rounds, big, clients)

    shapes = ("shapes", "single,messages,parts,cjk")
    compared_main("big_body", __doc__, "1 MB bodies, one round (smoke)", shapes, in_megabytes)


if __name__ == "__main__":
    main()
