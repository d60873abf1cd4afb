"""How much the Unix-socket server logs of the connections it refuses or closes: any local
process may open thousands a second and spoil each, so each code is logged the first time,
then every :data:`~quotad.daemon.net.log_rate.LOG_EVERY`-th, with the count.

A real broker on a real Unix socket, in process (as in ``test_socket_hardening``), spoiled
with raw frames from a thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from quotad.protocol.messages import Status
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.raw_socket import replies_until_closed, unix_connection
from tests.unit.test_socket_hardening import ENCODER, HELLO, serve

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]


def spoil(path: Path, connections: int, data: bytes) -> None:
    """Open ``connections`` connections one after the other, each sending ``data`` and
    reading until the daemon closes it."""
    for _ in range(connections):
        with unix_connection(path) as sock:
            sock.sendall(data)
            replies_until_closed(sock, reset_is_close=True)


async def test_connections_closed_are_logged_the_first_time_and_every_1000th_by_code(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each connection refused or closed wrote a log line: 20,000 connections with a bad
    frame wrote 20,000 lines (2.5 MB). Now the first of each code, then every 1,000th."""
    too_large = HELLO + (2**32 - 1).to_bytes(4, "big")
    not_hello = ENCODER.encode(Status(id=1))
    with caplog.at_level(logging.INFO, logger="quotad.server"):
        async with serve() as served:
            await anyio.to_thread.run_sync(spoil, served.path, 2_001, too_large)
            await anyio.to_thread.run_sync(spoil, served.path, 3, not_hello)
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "quotad.server" and record.message.startswith("closing connection")
    ]
    assert len(logged) == 3 + 1  # the 1st, 1,000th and 2,000th bad frame; the 1st bad request
    assert "frame of 4294967295 bytes is over the limit" in logged[0]
    assert "(1 closed bad_frame so far; the first and every 1000-th are logged)" in logged[0]
    assert "(2000 closed bad_frame so far;" in logged[2]
    assert "the first frame must be Hello, got Status (1 closed bad_request so far;" in logged[3]
