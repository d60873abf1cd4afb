"""What an unauthenticated client can make the HTTP front door spend: a POST without a key
whose chunked body is millions of one-byte chunks (DESIGN §7 wants the key checked before the
body is read).

A real ``quotad serve`` (``auth = "keys"``) gets the request head, then ``--chunks`` chunks of
one byte (``1\\r\\nx\\r\\n``) as fast as loopback takes them, then the last chunk; the client
reads the answer meanwhile. Reported per daemon: the CPU seconds and the peak RSS growth the
attack cost it (from /proc), the seconds until its answer came, the answer's status, and how
many body bytes the client had sent when it did. With ``--baseline-source DIR`` the same
attack runs first against a daemon run from the sources in DIR (an older checkout), so that
both figures come from one run on the same machine. Prints one JSON line.

    uv run python bench/http_unauthenticated_chunks.py [--chunks 8000000] [--quick]
        [--baseline-source /tmp/quotad-old]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._timing import cpu_seconds, source_env
from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
CHUNK = b"1\r\nx\r\n"
CHUNKS_PER_SEND = 10_000


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of process ``pid``, in KiB."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0])
    return figures


class Attack:
    """One connection: the head, then ``chunks`` one-byte chunks and the last chunk, sent by
    a thread while the caller waits for the answer."""

    def __init__(self, port: int, chunks: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.chunks = chunks
        self.sent_body_bytes = 0
        self.stop = threading.Event()
        self.sender = threading.Thread(target=self._send, daemon=True)

    def _send(self) -> None:
        block = CHUNK * CHUNKS_PER_SEND
        try:
            self.sock.sendall(HEAD)
            left = self.chunks
            while left > 0 and not self.stop.is_set():
                count = min(left, CHUNKS_PER_SEND)
                self.sock.sendall(block if count == CHUNKS_PER_SEND else CHUNK * count)
                self.sent_body_bytes += count * len(CHUNK)
                left -= count
            if not self.stop.is_set():
                self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the daemon closed the connection: what we measure

    def run(self, timeout_s: float) -> tuple[int, float, int]:
        """The answer's status (0: none), the seconds until it came, and the body bytes
        sent by then."""
        started = time.perf_counter()
        self.sender.start()
        self.sock.settimeout(timeout_s)
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = self.sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        waited = time.perf_counter() - started
        sent = self.sent_body_bytes
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sender.join(timeout_s)
        self.sock.close()
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
        return status, waited, sent


def attack_one(source: str | None, chunks: int) -> dict[str, Any]:
    """Start a daemon (from ``source``'s sources when given), attack it once, measure."""
    port = free_port()
    config = daemon_config(
        sim_provider_config("sim", "http://127.0.0.1:9/v1"),
        http=f'listen = "127.0.0.1:{port}"\nauth = "keys"',
    )
    env = source_env(source)
    with DaemonProcess(config, env=env) as daemon:
        assert daemon.process is not None
        pid = daemon.process.pid
        time.sleep(0.5)  # let start-up settle
        before_cpu = cpu_seconds(pid)
        before = memory_kib(pid)
        status, waited, sent = Attack(port, chunks).run(timeout_s=300)
        time.sleep(0.5)  # what the daemon still does after the answer counts too
        cpu = cpu_seconds(pid) - before_cpu
        after = memory_kib(pid)
    return {
        "status": status,
        "cpu_s": round(cpu, 3),
        "rss_growth_mib": round((after["VmHWM"] - before["VmRSS"]) / 1024, 1),
        "seconds_to_answer": round(waited, 3),
        "body_mib_sent_before_answer": round(sent / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chunks", type=int, default=8_000_000)
    parser.add_argument("--baseline-source", help="a checkout whose daemon to attack first")
    parser.add_argument("--quick", action="store_true", help="a few chunks (smoke test)")
    args = parser.parse_args()
    chunks = 100_000 if args.quick else args.chunks
    figures: dict[str, Any] = {"bench": "http_unauthenticated_chunks", "chunks": chunks}
    if args.baseline_source:
        for name, value in attack_one(args.baseline_source, chunks).items():
            figures[f"baseline_{name}"] = value
    for name, value in attack_one(None, chunks).items():
        figures[name] = value
    print(msgspec.json.encode(figures).decode(), flush=True)


if __name__ == "__main__":
    main()
