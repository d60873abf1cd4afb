"""What a ``Subscribe`` gets: a :class:`~quotad.protocol.messages.Snapshot` every
``interval_s`` until it is cancelled (the status, and the requests finished since the last one),
at the pace its reader reads them.

What all of them cost together is bounded (:class:`SnapshotPace`): a status is built at most
once per :data:`STATUS_REUSE_S` for every subscription that wants one then, and the
subscriptions open on the socket are sent at most :data:`MAX_SNAPSHOTS_PER_S` snapshots a second
between them (each gets what it asked for until their number would pass that; then each
waits longer, alike). Before, one client holding 3,200 subscriptions at 20 a second (100
connections of 32) kept the event loop busy: a ``Status`` took 49 ms instead of 0.2 ms for
everyone. Every snapshot, a subscription's first too, waits its turn (:meth:`SnapshotPace.turn`):
the first ones used to go out at once, 32,736 new subscriptions sending 1,510 a second."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from quotad.daemon.live_tail import LiveTail
from quotad.protocol.messages import SNAPSHOT_REQUESTS, Message, Snapshot, StatusReply, Subscribe

MAX_SNAPSHOTS_PER_S: Final = 200.0
"""Snapshots a second for all the subscriptions of the socket together (a ``quotad top`` asks
for one a second; this leaves 200 of those their own pace)."""
SNAPSHOT_BURST: Final = 20
"""Snapshots that may go out at once before the pace holds them to :data:`MAX_SNAPSHOTS_PER_S`
(a few ``quotad top`` starting together get their first screen without waiting)."""
STATUS_REUSE_S: Final = 0.02
"""How long a status built for one snapshot serves the others that want one: less than the
shortest ``interval_s`` a Subscribe may ask for, so that each of its snapshots is new."""


class SnapshotPace:
    """The subscriptions open on one socket, the interval each is given, and the status they
    share."""

    def __init__(
        self, status: Callable[[], StatusReply], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.open = 0
        self._status = status
        self._clock = clock
        self._built: StatusReply | None = None
        self._built_at = -STATUS_REUSE_S
        self._turns_saved = float(SNAPSHOT_BURST)
        """Snapshots that may go now without waiting (a token bucket: refilled at
        :data:`MAX_SNAPSHOTS_PER_S`, holding :data:`SNAPSHOT_BURST` at most)."""
        self._saved_at = clock()
        self._turns = anyio.Lock()
        """Whose turn is next: first come, first served."""

    async def turn(self) -> None:
        """Wait until one more snapshot keeps all of them within :data:`MAX_SNAPSHOTS_PER_S`
        (after up to :data:`SNAPSHOT_BURST` at once), in the order they asked. A waiter
        cancelled gives up its place and takes no turn."""
        async with self._turns:
            while True:
                now = self._clock()
                saved = self._turns_saved + (now - self._saved_at) * MAX_SNAPSHOTS_PER_S
                self._turns_saved, self._saved_at = min(saved, SNAPSHOT_BURST), now
                if self._turns_saved >= 1:
                    self._turns_saved -= 1
                    return
                await anyio.sleep((1 - self._turns_saved) / MAX_SNAPSHOTS_PER_S)

    def interval(self, asked_s: float) -> float:
        """``asked_s``, or longer when the subscriptions open would together pass
        :data:`MAX_SNAPSHOTS_PER_S`."""
        return max(asked_s, self.open / MAX_SNAPSHOTS_PER_S)

    def status(self) -> StatusReply:
        """The status, built again once the last one is :data:`STATUS_REUSE_S` old (a
        snapshot only reads it: it is not changed once built)."""
        now = time.monotonic()
        if self._built is None or now - self._built_at >= STATUS_REUSE_S:
            self._built, self._built_at = self._status(), now
        return self._built


async def send_snapshots(
    request: Subscribe,
    tail: LiveTail,
    pace: SnapshotPace,
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """A :class:`Snapshot` every ``interval_s`` (or the longer one ``pace`` gives) until
    cancelled. A slow reader only slows its own snapshots (each ``send`` waits for the
    transport to drain); nothing queues up."""
    seen = tail.finished_total
    last = time.monotonic()
    sequence = 0
    pace.open += 1
    try:
        while True:
            await pace.turn()
            now = time.monotonic()
            finished_before = seen
            records, seen = tail.recent_since(seen)
            sequence += 1
            await send(
                Snapshot(
                    id=request.id,
                    seq=sequence,
                    time=time.time(),
                    status=pace.status(),
                    requests=records[-SNAPSHOT_REQUESTS:] if request.requests else [],
                    requests_per_s=(seen - finished_before) / max(now - last, 1e-6)
                    if sequence > 1
                    else 0.0,
                )
            )
            last = now
            await anyio.sleep(pace.interval(request.interval_s))
    finally:
        pace.open -= 1
