"""Descriptor exhaustion never wedges the HTTP listener: a real daemon under a lowered
RLIMIT_NOFILE (on uvloop, and on asyncio's own loop) gets thousands of idle TCP connections,
more than it has descriptors for. It stays up, serves the connections it has, /healthz says
(503) that accepting fails and since when, and once the idle clients leave it accepts again
and /healthz is 200."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import msgspec
import pytest

from tests.support.daemon import DaemonProcess, daemon_config, free_port, sim_provider_config

NOFILE = 1024
IDLE_CONNECTIONS = 1500
LAUNCHER = Path(__file__).resolve().parents[1] / "support" / "limited_daemon.py"


def config(port: int) -> str:
    return daemon_config(
        sim_provider_config("sim", "http://127.0.0.1:9/v1"),
        http=f'listen = "127.0.0.1:{port}"\nauth = "none"\n'
        "max_connections = 100000\nidle_timeout_s = 120",
    )


def healthz(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """GET /healthz on a keep-alive connection: status and JSON body."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head[9:12]), msgspec.json.decode(body)


def wait_for(sock: socket.socket, status: int, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        answer, body = healthz(sock)
        if answer == status:
            return body
        assert time.monotonic() < deadline, f"/healthz still {answer}: {body}"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_running_out_of_descriptors_never_wedges_the_listener(loop: str) -> None:
    port = free_port()
    launcher = (sys.executable, str(LAUNCHER), str(NOFILE), loop)
    idle: list[socket.socket] = []
    with DaemonProcess(config(port), launcher=launcher) as daemon:
        assert daemon.process is not None
        maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
        assert ("uvloop" in maps) == (loop == "uvloop")  # the loop asked for
        probe = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            assert healthz(probe)[0] == 200
            for _ in range(IDLE_CONNECTIONS):  # the kernel completes them: the backlog holds
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            sick = wait_for(probe, 503, timeout_s=20)
            problems = sick["problems"]
            assert isinstance(problems, list)
            [problem] = problems
            assert problem.startswith("http: accept failing: EMFILE (too many open files) since")
            assert daemon.process.poll() is None
            for sock in idle:  # the idle clients leave: descriptors come back
                sock.close()
            idle.clear()
            wait_for(probe, 200, timeout_s=30)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as newcomer:
                assert healthz(newcomer)[0] == 200  # a new client is served
        finally:
            probe.close()
            for sock in idle:
                sock.close()
        log = daemon.log()
    assert log.count("accept failed on the HTTP listener: EMFILE") == 1  # not one per retry
    assert "the HTTP listener accepts again" in log
