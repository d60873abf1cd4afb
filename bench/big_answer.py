"""What one client's big answers cost the others: small chats through the HTTP front door
while another client's chats are answered with ~13 MB each (an answer's bound is
``providers.X.max_response_mb``, 32).

One real ``quotad serve`` (``auth = "none"``, the cache on) in front of a ``quotad sim`` (no
latency) for the small chats and ``bench/_big_answerer.py`` for the big ones (a provider whose
every answer is ~13 MB, built once: plain, or 9,000 server-sent events when streamed).
Its ``tokens`` answers stream that size of text as a model does, 1 to 8 characters a chunk
(13 MB: ~2.9M chunks), then a tool call in two pieces and the end. ``--clients`` tasks send
small chats one after another (cache bypassed). The big chats are sent
from another process (its decoding of 13 MB must not hold this one's small chats), one after
another, each a new prompt (but in ``hit`` cases). Each of ``--rounds`` rounds of a case sends
``--big`` big chats alone (the daemon's CPU), has the small chats run alone for as long, then
during ``--big`` more. With ``--baseline-source DIR`` a second daemon, run from the sources in
DIR, is measured beside this one on the same providers, their rounds in turn. Cases,
``DOOR_SHAPE_CACHE``:

- door: ``http`` (the front door, one connection per big chat) or ``native`` (quotad's
  client on the daemon's socket, ``daemon.max_frame`` raised to let 13 MB through);
- shape: ``plain``, ``stream`` or ``tokens`` (streamed a few characters a chunk; not among
  the cases run by default: at 13 MB a round takes minutes);
- cache: ``store`` (a miss: its answer is stored), ``bypass`` (neither looked up nor stored) or
  ``hit`` (every big chat the same prompt: after the first, each answered from the cache).

Reported per case: the small chats' p50, p99 and max latency without and during the big
answers (ms), the big chats' outcomes and median latency alone, and the daemon's CPU seconds
per big answer, all of it and its event loop's (its main thread's), and its peak resident
memory over the big chats (``peak_rss_mb``, from ``VmHWM`` reset before them; ``rss_before_mb``
its resident memory then), median of the rounds, no small traffic: unlike latencies on a shared
2-core machine (where the provider and the big client compete for the same cores), these do not
depend on what else runs. A case that stores reports what its largest answer takes in
``quotad.db`` per byte of its text (``stored_bytes_per_text_byte``; a baseline's rows are
decoded by this tree's code). Prints one JSON line.

    uv run python bench/big_answer.py [--rounds 3] [--big 4] [--clients 4] [--mb 13]
        [--cases http_plain_store,...] [--quick] [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import multiprocessing
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import alternating, compared_main, cpu_seconds, source_env
from bench.big_body import latency_figures, small_chats_while
from quotad.daemon.store import DB_FILE
from quotad.daemon.store.answers import CachedChat, decode_answer
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config
from tests.support.sim import SimProcess

BIG_MODEL = "big/gpt-4o-mini"
CASES = [
    f"{door}_{shape}_{cache}"
    for door in ("http", "native")
    for shape in ("plain", "stream")
    for cache in ("store", "bypass", "hit")
]
MAX_FRAME = 64 * 2**20
"""``daemon.max_frame``: a 13 MB answer is past the default 8 MiB on the native socket."""
MAX_RESPONSE_MB = 1024
"""The big provider's ``max_response_mb``: 13 MB of text streamed a few characters an event
is ~170 MB of events, past the default 32."""
ANSWERER = Path(__file__).resolve().parent / "_big_answerer.py"


def http_chat(port: int, body: bytes, cache: str) -> tuple[str, int]:
    """One chat posted on a new connection (closed after the answer); its outcome (the
    status) and the answer's bytes."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"x-quotad-app: bench\r\nx-quotad-cache: %s\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n" % (cache.encode(), len(body))
    )
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(head + body)
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received.split(b" ", 2)[1].decode(), len(received)


def native_chat(path: str, stream: bool, prompt: str, cache: str) -> tuple[str, int]:
    """One chat on quotad's client; its outcome (``ok`` or the error's code) and the text's
    length."""
    from quotad.client import Client, QuotadError

    messages = [{"role": "user", "content": prompt}]
    try:
        with Client(socket=path, app="bench") as client:
            if stream:
                with client.chat_stream(BIG_MODEL, messages, cache=cache) as chunks:  # type: ignore[arg-type]
                    size = sum(len(chunk.delta) for chunk in chunks)
            else:
                size = len(client.chat(BIG_MODEL, messages, cache=cache).content or "")  # type: ignore[arg-type]
    except QuotadError as error:
        return error.code, 0
    return "ok", size


def send_big(case: str, port: int, path: str, nonces: list[int]) -> list[tuple[str, int, float]]:
    """Big chats of ``case``, one after another, one per nonce (run in another process): each
    one's outcome, answer size and latency."""
    door, shape, cache = case.split("_")
    if cache == "hit":
        nonces = [-1] * len(nonces)  # one prompt: stored by the warm-up, then hits
    cache = "bypass" if cache == "bypass" else "use"
    streamed = shape != "plain"
    results = []
    for nonce in nonces:
        started = time.perf_counter()
        prompt = f"big answer {'tokens ' if shape == 'tokens' else ''}{nonce}"
        if door == "http":
            stream = ',"stream":true' if streamed else ""
            body = (
                f'{{"model":"{BIG_MODEL}","messages":[{{"role":"user","content":'
                f'"{prompt}"}}]{stream}}}'
            ).encode()
            outcome, size = http_chat(port, body, cache)
        else:
            outcome, size = native_chat(path, streamed, prompt, cache)
        results.append((outcome, size, time.perf_counter() - started))
    return results


class Arm:
    """One daemon measured: its port, socket and pid, and what its rounds gathered, by case."""

    def __init__(self, daemon: DaemonProcess, port: int) -> None:
        assert daemon.process is not None
        self.pid = daemon.process.pid
        self.port = port
        self.path = str(daemon.socket_path)
        self.db_path = daemon.state_dir / DB_FILE
        self.gathered: dict[str, dict[str, list[Any]]] = {}

    def round(
        self, pool: concurrent.futures.Executor, case: str, big: int, clients: int, nonces: Any
    ) -> None:
        """One round of ``case``: big chats alone (the daemon's CPU), small chats alone, then
        small chats during big ones."""
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        gathered = self.gathered.setdefault(case, {})
        batch = [next(nonces) for _ in range(big)]
        rss_before = reset_peak_rss(self.pid)
        before = cpu_seconds(self.pid), cpu_seconds(self.pid, main_thread=True)
        alone = pool.submit(send_big, case, self.port, self.path, batch).result()
        gathered.setdefault("peak_rss_mb", []).append(memory_mb(self.pid, "VmHWM"))
        gathered.setdefault("rss_before_mb", []).append(rss_before)
        gathered.setdefault("cpu_s", []).append((cpu_seconds(self.pid) - before[0]) / big)
        loop_cpu_s = cpu_seconds(self.pid, main_thread=True) - before[1]
        gathered.setdefault("loop_cpu_s", []).append(loop_cpu_s / big)
        quiet_until = time.monotonic() + max(1.0, sum(latency for *_, latency in alone))
        quiet = anyio.run(small_chats_while, url, clients, lambda: time.monotonic() < quiet_until)
        batch = [next(nonces) for _ in range(big)]
        sender = pool.submit(send_big, case, self.port, self.path, batch)
        during = anyio.run(small_chats_while, url, clients, lambda: not sender.done())
        results = alone + sender.result()
        gathered.setdefault("outcomes", []).extend(outcome for outcome, *_ in results)
        gathered.setdefault("sizes", []).extend(size for _, size, _ in results)
        gathered.setdefault("big_latencies", []).extend(latency for *_, latency in alone)
        gathered.setdefault("without", []).extend(quiet)
        gathered.setdefault("during", []).extend(during)
        if not case.endswith("bypass"):
            gathered["stored"] = [stored_bytes_per_text_byte(self.db_path)]

    def figures(self) -> dict[str, Any]:
        return {
            case: {
                **(
                    {"stored_bytes_per_text_byte": gathered["stored"][0]}
                    if "stored" in gathered
                    else {}
                ),
                "answer_mb": round(statistics.median(gathered["sizes"]) / 1e6, 2),
                "big_outcomes": sorted(set(gathered["outcomes"])),
                "big_latency_ms_p50": round(statistics.median(gathered["big_latencies"]) * 1000, 1),
                "daemon_cpu_s_per_big": round(statistics.median(gathered["cpu_s"]), 3),
                "loop_cpu_s_per_big": round(statistics.median(gathered["loop_cpu_s"]), 3),
                "peak_rss_mb": round(statistics.median(gathered["peak_rss_mb"]), 1),
                "rss_before_mb": round(statistics.median(gathered["rss_before_mb"]), 1),
                "small_without": latency_figures(gathered["without"]),
                "small_during": latency_figures(gathered["during"]),
            }
            for case, gathered in self.gathered.items()
        }


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of process ``pid`` (``VmRSS``, ``VmHWM``: its peak since
    :func:`reset_peak_rss`), MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


def reset_peak_rss(pid: int) -> float:
    """Start process ``pid``'s ``VmHWM`` over from its resident memory now; that, MB."""
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return memory_mb(pid, "VmRSS")


def stored_bytes_per_text_byte(db_path: Path) -> float:
    """The bytes the largest big answer in ``db_path`` takes (its payload) per byte of its
    text (UTF-8), as read by this tree's code."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        kind, payload = db.execute(
            "SELECT kind, payload FROM cache WHERE model = ? ORDER BY length(payload) DESC",
            (BIG_MODEL,),
        ).fetchone()
    answer = decode_answer(kind, payload)
    assert isinstance(answer, CachedChat)
    return round(len(payload) / len((answer.content or "").encode()), 3)


@contextlib.contextmanager
def big_answerer(size_mb: float) -> Any:
    """``bench/_big_answerer.py`` on a free port, answering ``size_mb`` MB; its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ANSWERER), str(port), str(size_mb)])
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the big answerer did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait()


def measure(
    sources: list[str | None], cases: list[str], size_mb: float, rounds: int, big: int, clients: int
) -> list[dict[str, Any]]:
    """The figures of a daemon run from each of ``sources`` (None: this tree's), all beside
    each other on the same providers, their rounds in turn (the first in alternate order)."""
    nonces = itertools.count()
    spawn = multiprocessing.get_context("spawn")
    with (
        SimProcess() as sim,
        big_answerer(size_mb) as big_url,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool,
        contextlib.ExitStack() as stack,
    ):
        arms = []
        for source in sources:
            port = free_port()
            config = daemon_config(
                sim_provider_config("sim", sim.base_url),
                sim_provider_config("big", big_url, extra=f"max_response_mb = {MAX_RESPONSE_MB}"),
                daemon=f"max_frame = {MAX_FRAME}",
                http=f'listen = "127.0.0.1:{port}"\nauth = "none"',
            )
            daemon = stack.enter_context(DaemonProcess(config, env=source_env(source)))
            arms.append(Arm(daemon, port))
        for case in cases:
            for arm in arms:  # warm-up: one big chat alone (lazy imports, first allocations)
                pool.submit(send_big, case, arm.port, arm.path, [next(nonces)]).result()
            for arm in alternating(arms, rounds):
                arm.round(pool, case, big, clients, nonces)
        return [arm.figures() for arm in arms]


def main() -> None:
    compared_main(
        "big_answer",
        __doc__,
        "1 MB answers, one round (smoke)",
        ("cases", ",".join(CASES)),
        measure,
    )


if __name__ == "__main__":
    main()
