"""A peer on Redis's port that does not speak RESP as Redis does (an integer or a status where
the handshake wants a map, replies nested past Python's recursion) is Redis away: the host
starts degraded, and a link that was up degrades, with an event saying why. redis-py raised
AttributeError, TypeError or RecursionError from such answers, which ended the daemon."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest

from quotad.daemon.cluster.gates import FleetGates
from quotad.daemon.cluster.link import Link, LinkDown
from tests.support.valkey import settings_for

pytestmark = pytest.mark.anyio

ANSWERS = {
    "integer": b":1\r\n",
    "status": b"+OK\r\n",
    "array": b"*3\r\n:1\r\n*0\r\n*0\r\n",
    "deep": b"*1\r\n" * 5000 + b":1\r\n",
}


@contextmanager
def wrong_resp_peer(answer: bytes) -> Iterator[int]:
    """A TCP server on a loopback port answering ``answer`` to every read; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(0.1)
            while not stopping.is_set():
                try:
                    if not connection.recv(65536):
                        return
                    connection.sendall(answer)
                except TimeoutError:
                    continue
                except OSError:
                    return

    def accept() -> None:
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        acceptor.join(5)
        listener.close()


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, kind: str, message: str, level: int) -> None:
        self.seen.append((kind, message, level))


@pytest.mark.parametrize("answer", ANSWERS.values(), ids=ANSWERS.keys())
async def test_a_peer_that_is_not_redis_is_redis_away(answer: bytes) -> None:
    events = Events()
    with wrong_resp_peer(answer) as port:
        settings = settings_for(f"redis://127.0.0.1:{port}/0", "p", "h1", timeout_s=0.2)
        link = Link(settings, events=events)
        try:
            assert not await link.open()  # raised before
            gates = FleetGates(link)
            with pytest.raises(LinkDown):
                await link._call("heartbeat", [], [])
            assert link.health == "degraded"
            async with anyio.create_task_group() as tasks:  # the daemon's tasks keep running
                await tasks.start(link.run)
                await tasks.start(gates.run)
                await anyio.sleep(1.0)
                tasks.cancel_scope.cancel()
        finally:
            await link.close()
    assert events.seen[0][0] == "cluster_unreachable"
    assert events.seen[0][2] == logging.ERROR
    assert "Redis answered what this host cannot read" in link.reason
