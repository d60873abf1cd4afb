"""How much of a peer the Unix-socket server reads at once, and how long it waits for it: at
most ``FRAMES_PER_TURN`` frames in one turn of the event loop, however many one write holds
(and the answers given at once in that turn go out in one write); and a frame must arrive
whole within ``frame_timeout_s`` of its first byte.

A real broker on a real Unix socket, in process (as in ``test_socket_hardening``), talked to
with raw frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from typing import Any, cast

import anyio
import anyio.lowlevel
import msgspec
import pytest

from quotad.daemon.providers.base import ChatDelta, ChatStream
from quotad.daemon.server.connection import FRAMES_PER_TURN, GATHERED_BYTES
from quotad.protocol.messages import Chat, ChatChunk, ChatEnd, Error, Status, StatusReply
from tests.support.backends import ASYNCIO_BACKENDS
from tests.support.providers import PiecesStream
from tests.unit.test_socket_hardening import ENCODER, Peer, chat, serve

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


async def test_a_frame_trickled_byte_by_byte_is_not_waited_for_past_its_time(
    anyio_backend: Any,
) -> None:
    """A peer that declared a 1 MiB frame, sent all of it but a few bytes, then a byte now and
    then, held that MiB of the daemon's memory for as long as it went on (8 MiB a connection
    at the default max_frame: 40 connections, 320 MiB). Now a frame not whole within
    frame_timeout_s of its first byte is answered ``timeout`` and its connection closed;
    frames that do arrive in time, in pieces, are read as ever."""
    async with serve() as served:
        served.server.limits = dataclasses.replace(served.server.limits, frame_timeout_s=1.0)
        async with Peer.connect(served.path) as peer:
            whole = ENCODER.encode(chat(1))
            for piece in (whole[:2], whole[2:9], whole[9:]):  # in time: read as ever
                await peer.send(piece)
                await anyio.sleep(0.1)  # 0.3 s in all: a margin for a loaded machine
            assert (await peer.next()).id == 1
            size = 1024 * 1024
            await peer.send(size.to_bytes(4, "big") + bytes(size - 64))
            with anyio.move_on_after(10), contextlib.suppress(anyio.BrokenResourceError):
                for _ in range(200):  # a byte every 0.04 s, never whole
                    await peer.send(b"\x00")
                    await anyio.sleep(0.04)
            [error] = await peer.until_closed()
        assert isinstance(error, Error)
        assert (error.id, error.code) == (0, "timeout")
        assert re.match(r"a frame begun \d+ s ago is not whole yet \(\d+ bytes", error.message)
        assert "a frame must arrive within 1 s" in error.message
        assert not served.server.connections


class CountedWrites:
    """A transport (uvloop's cannot be patched) whose writes are counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_the_answers_given_at_once_in_one_turn_go_out_in_one_write(
    anyio_backend: Any,
) -> None:
    """Each answer was one write of its own, a system call each once the socket had room
    (as it has, now that the loop takes turns: 80,000 Status frames in one write cost 30%
    more CPU). Now those of one turn go out together."""
    count = 20 * FRAMES_PER_TURN
    async with serve() as served, Peer.connect(served.path) as peer:
        [connection] = served.server.connections
        transport = connection._transport
        assert transport is not None
        counted = connection._transport = cast(asyncio.Transport, CountedWrites(transport))
        await peer.send(b"".join(ENCODER.encode(Status(id=n)) for n in range(1, count + 1)))
        ids = [(await peer.next()).id for _ in range(count)]
        assert ids == list(range(1, count + 1))  # in order, each whole
        assert cast(CountedWrites, counted).writes <= 2 * count // FRAMES_PER_TURN


async def test_the_chunks_a_stream_relays_from_one_read_go_out_in_few_writes(
    anyio_backend: Any,
) -> None:
    """The chunks a stream relays without the loop taking a turn (those of one read of its
    provider) went out a write each: relaying a provider's stream of 9,000 events spent a
    fifth of the daemon's CPU in those system calls. Now they are gathered until the turn
    ends, up to GATHERED_BYTES."""
    pieces = [ChatDelta(delta=f"piece {n} ") for n in range(2000)]

    async def open_stream(model: str, request: Chat, max_tokens: int) -> ChatStream:
        return PiecesStream(pieces)

    async with serve() as served, Peer.connect(served.path) as peer:
        served.provider.open_stream = open_stream  # type: ignore[method-assign]
        [connection] = served.server.connections
        transport = connection._transport
        assert transport is not None
        counted = connection._transport = cast(asyncio.Transport, CountedWrites(transport))
        await peer.send(msgspec.structs.replace(chat(1), stream=True))
        replies = [await peer.next() for _ in range(len(pieces) + 1)]
        chunks, end = replies[:-1], replies[-1]
        assert all(isinstance(chunk, ChatChunk) for chunk in chunks)
        assert "".join(cast(ChatChunk, chunk).delta for chunk in chunks) == "".join(
            piece.delta for piece in pieces
        )
        assert isinstance(end, ChatEnd)
        sent = sum(len(ENCODER.encode(reply)) for reply in replies)
        assert cast(CountedWrites, counted).writes <= 4 + 2 * sent // GATHERED_BYTES
