"""What a ``Subscribe`` gets: a :class:`~quotad.protocol.messages.Snapshot` every
``interval_s`` until it is cancelled (the status, and the requests finished since the last one),
at the pace its reader reads them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from quotad.daemon.live_tail import LiveTail
from quotad.protocol.messages import Message, Snapshot, StatusReply, Subscribe

SNAPSHOT_REQUESTS: Final = 200
"""At most this many finished requests per Snapshot (the newest)."""


async def send_snapshots(
    request: Subscribe,
    tail: LiveTail,
    status: Callable[[], StatusReply],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """A :class:`Snapshot` every ``interval_s`` until cancelled. A slow reader only slows its
    own snapshots (each ``send`` waits for the transport to drain); nothing queues up."""
    seen = tail.finished_total
    last = time.monotonic()
    sequence = 0
    while True:
        now = time.monotonic()
        finished_before = seen
        records, seen = tail.recent_since(seen)
        sequence += 1
        await send(
            Snapshot(
                id=request.id,
                seq=sequence,
                time=time.time(),
                status=status(),
                requests=records[-SNAPSHOT_REQUESTS:] if request.requests else [],
                requests_per_s=(seen - finished_before) / max(now - last, 1e-6)
                if sequence > 1
                else 0.0,
            )
        )
        last = now
        await anyio.sleep(request.interval_s)
