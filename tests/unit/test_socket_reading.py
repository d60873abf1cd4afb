"""How much of a peer the Unix-socket server reads at once: at most ``FRAMES_PER_TURN`` frames
in one turn of the event loop, however many one write holds.

A real broker on a real Unix socket, in process (as in ``test_socket_hardening``), talked to
with raw frames.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from quotad.daemon.server.connection import FRAMES_PER_TURN
from quotad.protocol.messages import Status, StatusReply
from tests.support.backends import ASYNCIO_BACKENDS
from tests.unit.test_socket_hardening import ENCODER, Peer, serve

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]


async def test_one_write_of_many_frames_gives_the_other_tasks_turns(anyio_backend: Any) -> None:
    """3,000 Status frames in one write were answered in one read callback, a thousand and
    more between two turns of any other task (10,000 held the daemon's loop 135 ms). Now
    reading pauses after FRAMES_PER_TURN of them until the loop's next turn."""
    count = 3000
    async with serve() as served, Peer.connect(served.path) as peer:
        answered = 0
        status = served.server.status

        def counted_status() -> StatusReply:
            nonlocal answered
            answered += 1
            return status()

        served.server.status = counted_status  # type: ignore[method-assign]
        most_in_one_turn = 0
        done = False

        async def other_task() -> None:
            nonlocal most_in_one_turn
            seen = answered
            while not done:
                await anyio.lowlevel.checkpoint()
                most_in_one_turn = max(most_in_one_turn, answered - seen)
                seen = answered

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(other_task)
            await peer.send(b"".join(ENCODER.encode(Status(id=n)) for n in range(1, count + 1)))
            ids = {(await peer.next()).id for _ in range(count)}
            done = True
        assert ids == set(range(1, count + 1))
        assert answered == count
        assert 0 < most_in_one_turn <= FRAMES_PER_TURN
