"""The put flusher of the fleet gates: what this host's fleet windows must tell Redis goes
out from here, in batches, one ``settle.lua`` call in flight at a time (so puts of one entry
never cross): leases that end (closed when due), tokens given back, admissions pushed after
an outage; and the latest provider headers per window (``observe.lua``, at most every
:data:`OBSERVE_EVERY_S`). It sleeps until woken (:meth:`PutFlusher.wake`: a settle, a grant,
a lease used up, an observation) or until a lease is due, and waits while the link is not
usable: puts that could not be sent are kept and sent again. :class:`~.gates.FleetGates`
owns the windows and wakes it.
"""

from __future__ import annotations

from typing import Any, Final

import anyio

from quotad.daemon.cluster.link import MALFORMED, Link, LinkDown
from quotad.daemon.cluster.window import INFINITY, FleetWindow, Put

FLUSH_COALESCE_S: Final = 0.002
"""A flusher woken by a put waits this long for others to join the same call."""
OBSERVE_EVERY_S: Final = 0.1


class PutFlusher:
    """Sends the puts and provider observations of a set of fleet windows."""

    def __init__(self, link: Link, windows: dict[str, FleetWindow]) -> None:
        self.link = link
        self.clock = link.clock
        self.windows = windows
        """The fleet gates' windows (the same dict: windows made later are flushed too)."""
        self._woken = anyio.Event()
        """Set when puts may be waiting; replaced by a new event each time the flusher wakes
        (so a caller holds :meth:`wake`, never the event)."""
        self._observed: dict[FleetWindow, tuple[int, int, float]] = {}

    def wake(self) -> None:
        """Puts may be waiting (or a lease was used up): flush soon."""
        self._woken.set()

    async def run(self) -> None:
        """Flush whenever woken or a lease is due, until cancelled."""
        while True:
            due = min((w.next_due() for w in self.windows.values()), default=INFINITY)
            delay = due - self.clock.monotonic()
            if not any(w.puts for w in self.windows.values()) and not self._observed:
                if delay == INFINITY:
                    await self._woken.wait()
                elif delay > 0:
                    with anyio.move_on_after(delay):
                        await self._woken.wait()
            self._woken = anyio.Event()
            await anyio.sleep(FLUSH_COALESCE_S)
            if not self.link.usable:
                await self._wait_usable()
                continue
            try:
                await self.flush()
            except LinkDown:
                continue

    async def _wait_usable(self) -> None:
        while not self.link.usable:
            with anyio.move_on_after(self.link.settings.heartbeat_s):
                await self._woken.wait()
            self._woken = anyio.Event()

    async def flush(self) -> None:
        """Close what is due and send every pending put (and provider observations)."""
        now = self.clock.monotonic()
        for window in self.windows.values():
            window.close_due(now)
        await self.send_puts({w: w.take_puts() for w in self.windows.values() if w.puts})
        if self._observed:
            observed, self._observed = self._observed, {}
            for window, (remaining, reset_us, _) in observed.items():
                await self._send_observation(window, remaining, reset_us)

    async def send_puts(self, puts: dict[FleetWindow, list[Put]]) -> None:
        """One ``settle.lua`` call with ``puts``; kept for later when it fails."""
        if not puts:
            return
        keys: list[str] = []
        args: list[Any] = [self.link.keys.channel, len(puts)]
        for window, window_puts in puts.items():
            keys += window_keys(self.link, window)
            args += [window_ttl_ms(window), len(window_puts)]
            for entry, amount, expiry_us in window_puts:
                args += [entry, amount, expiry_us]
        try:
            reply = await self.link.call("settle", keys, args)
            try:
                now_us, used = settle_reply(reply.value, len(puts))
                self.link.sample_time(now_us, reply)
            except MALFORMED as error:
                raise self.link.malformed("settle", error) from None
        except LinkDown:
            for window, window_puts in puts.items():
                window.unsent(window_puts)
            raise
        for (window, window_puts), window_used in zip(puts.items(), used, strict=True):
            window.acknowledged(window_puts)
            window.fleet_used = window_used

    def observe(self, window: FleetWindow, remaining: int, reset_s: float) -> None:
        """A provider's remaining/reset for ``window``: sent to the fleet by the flusher
        (the latest per window, at most every :data:`OBSERVE_EVERY_S`)."""
        now = self.clock.monotonic()
        previous = self._observed.get(window)
        self._observed[window] = (remaining, int(reset_s * 1e6), now)
        if previous is None or now - previous[2] >= OBSERVE_EVERY_S:
            self.wake()

    async def _send_observation(self, window: FleetWindow, remaining: int, reset_us: int) -> None:
        reply = await self.link.call(
            "observe",
            window_keys(self.link, window),
            [window.limit, remaining, reset_us, window_ttl_ms(window)],
        )
        try:
            self.link.sample_time(int(reply.value[0]), reply)
            window.fleet_used = int(reply.value[1])
            window.external = int(reply.value[2])
        except MALFORMED as error:
            raise self.link.malformed("observe", error) from None


def window_keys(link: Link, window: FleetWindow) -> list[str]:
    """A window's keys in a script call: its log, its state."""
    return [link.keys.window_log(window.name), link.keys.window_state(window.name)]


def settle_reply(value: Any, windows: int) -> tuple[int, list[int]]:
    """``(server time µs, each window's fleet use)`` from a ``settle.lua`` reply to puts for
    ``windows`` windows. The count is checked before any figure is converted: a reply of the
    wrong length (a hostile or foreign server's) is refused at the cost of one ``len``.
    One of :data:`~.link.MALFORMED` when the reply has not the shape it must."""
    used = value[1]
    if not isinstance(used, list):
        raise TypeError(f"settle reply: each window's use is a {type(used).__name__}, not a list")
    if len(used) != windows:
        raise ValueError(f"settle reply: {len(used)} windows' use for {windows} windows sent")
    return int(value[0]), [int(figure) for figure in used]


def window_ttl_ms(window: FleetWindow) -> int:
    """How long a window's keys outlive their last write: past every entry's expiry."""
    return (window.span_us + window.lease_us) // 1000 + 60_000
