"""The fleet side of the gates: every fleet-wide window this host uses (:class:`FleetWindow`),
and the traffic with Redis that keeps them supplied, all off the admission path:

- **borrowing** (``borrow.lua``): the local engine, finding a waiter short on fleet windows,
  calls :meth:`FleetGates.short` (synchronous, cheap); one worker sends what is short in one
  call, each ask all-or-nothing across its windows, and either adds leases (then
  ``on_capacity()``: the local engine dispatches again) or learns when the ask may fit
  (``schedule(local time)``: the local timer wakes then). A window running low is topped up
  ahead of need (a *prefetch*, which never marks the window as waited on).
- **returning and settling** (``settle.lua``): leases that end and tokens given back are
  sent in batches by one flusher (:class:`~.flusher.PutFlusher`, which also sends the
  provider headers, ``observe.lua``), one call in flight at a time, so puts of one entry
  never cross.
- **pauses** (``pause.lua``) and **provider headers** (:meth:`FleetGates.observe`), and the pub/sub
  messages that tell other hosts at once: ``freed`` (a window someone waits on changed: ask
  again) and ``pause``.
- **snapshots** (``snapshot.lua``) every heartbeat: the fleet's usage of each window (for
  status), and the pauses in force (in case a message was missed).
- **health**: when the link leaves ``connected``, every window falls back to
  ``on_unreachable`` (``share`` or ``closed``) with the hosts seen, from what Redis last
  confirmed of this host's own entries (puts and borrows in flight are tracked for that);
  when it is back, what was admitted meanwhile is pushed (the link's re-sync).

No polling: the worker and the flusher sleep until told (an ask, a put, a lease's end).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc

from quotad.daemon.cluster.flusher import PutFlusher, window_keys, window_ttl_ms
from quotad.daemon.cluster.keys import window_name
from quotad.daemon.cluster.link import MALFORMED, Health, Link, LinkDown, Reply
from quotad.daemon.cluster.window import INFINITY, FleetWindow, Put

log = logging.getLogger("quotad.cluster")

MAX_ASKS_PER_CALL: Final = 32
WAIT_MARK_S: Final = 1.0
"""How long a refused ask marks its windows as waited on (returns there publish)."""
MAX_TARGETS: Final = 4096
"""Targets whose pauses this host follows (those it asked for, paused, or was told of)."""


@dataclass(frozen=True, slots=True)
class Ask:
    """A demand short on fleet windows: ``(window, units it needs)`` each, the target whose
    pause applies, and whether a request waits on it (else: a prefetch)."""

    items: tuple[tuple[FleetWindow, int], ...]
    target: str | None = None
    waiter: bool = True


def _nothing() -> None:
    return None


def _no_schedule(when: float) -> None:
    return None


def _no_pause(target: str, until: float) -> None:
    return None


class FleetGates:
    """This host's fleet-wide windows and their traffic with Redis."""

    def __init__(
        self,
        link: Link,
        *,
        on_capacity: Callable[[], None] = _nothing,
        schedule: Callable[[float], None] = _no_schedule,
        on_pause: Callable[[str, float], None] = _no_pause,
    ) -> None:
        self.link = link
        self.clock = link.clock
        self.on_capacity = on_capacity
        """Capacity was added (a grant, a mode change, a ``freed`` message): dispatch."""
        self.schedule = schedule
        """``schedule(t)``: dispatch again at local time ``t`` (an ask may fit then)."""
        self.on_pause = on_pause
        """``on_pause(target, until)``: another host paused ``target`` until local ``until``
        (``-inf``: lifted)."""
        self.windows: dict[str, FleetWindow] = {}
        self.flusher = PutFlusher(link, self.windows)
        self._by_state_key: dict[str, FleetWindow] = {}
        self.targets: set[str] = set()
        self._pending: dict[tuple[Any, ...], Ask] = {}
        self._retry_at: dict[tuple[Any, ...], float] = {}
        self._asked = anyio.Event()
        self._pauses: dict[str, float] = {}
        self._paused = anyio.Event()
        self._entry_prefix = f"{link.host}:{os.urandom(3).hex()}:"
        self._entries = 0
        self.borrows = 0
        self.refused = 0
        link.on_health(self._health_changed)
        link.on_hosts(self._hosts_changed)
        link.channel.on_message(self._message)
        link.add_resyncer(self._resync)
        link.add_sealer(self._seal)

    # ------------------------------------------------------------------ windows

    def window(
        self, gate: str, unit: str, window_s: float, limit: int, span_s: float
    ) -> FleetWindow:
        """The fleet window of ``gate``'s ``unit`` per ``window_s`` (made on first use; a new
        ``limit`` or span applies at once)."""
        name = window_name(gate, unit, window_s)
        window = self.windows.get(name)
        if window is None:
            settings = self.link.settings
            window = FleetWindow(
                name,
                limit,
                span_s,
                settings.lease_s,
                host=self.link.host,
                time=self.link.time,
                margin=settings.margin,
            )
            window.on_low = self._low
            window.on_used_up = self.flusher.wake
            self._apply_mode(window)
            self.windows[name] = window
            self._by_state_key[self.link.keys.window_state(name)] = window
        else:
            window.set_limit(limit, span_s)
        return window

    def _health_changed(self, health: Health) -> None:
        for window in self.windows.values():
            self._apply_mode(window)
        if any(window.puts for window in self.windows.values()):
            self.flusher.wake()  # back in the fleet: what was admitted meanwhile goes out now
        self.on_capacity()

    def _hosts_changed(self, hosts: int) -> None:
        for window in self.windows.values():
            window.set_hosts(hosts)

    def _apply_mode(self, window: FleetWindow) -> None:
        link = self.link
        now = self.clock.monotonic()
        if link.usable:
            window.set_mode("fleet", link.hosts_seen(), now)
        elif link.health == "resyncing" and link.sealed:
            window.set_mode("closed", 0, now)  # what it admits now must be in the log
        elif link.ever_connected or link.health == "resyncing":
            window.set_mode(link.settings.on_unreachable, link.hosts_seen(), now)
        else:
            window.set_mode("closed", 0, now)

    # ------------------------------------------------------------------ borrowing

    def short(self, ask: Ask, token: Hashable = None) -> None:
        """A waiter lacks capacity on fleet windows: borrow for it (coalesced, off the
        admission path). Cheap and synchronous: the local dispatcher may call it on every
        pass. Asks of the same windows and amounts are one ask, unless ``token`` (the
        waiter) tells them apart, so that several waiters borrow together."""
        if not self.link.usable:
            return
        key = (
            tuple(id(w) for w, _ in ask.items),
            tuple(n for _, n in ask.items),
            ask.target,
            token,
        )
        if ask.target is not None and (
            len(self.targets) < MAX_TARGETS or ask.target in self.targets
        ):
            self.targets.add(ask.target)
        retry = self._retry_at.get(key, -INFINITY)
        if retry > self.clock.monotonic():
            if retry < INFINITY:
                self.schedule(retry)  # refused until then (or until a window of it frees)
            return
        self._pending.setdefault(key, ask)
        self._asked.set()

    def ask(
        self,
        items: tuple[tuple[FleetWindow, int], ...],
        target: str | None,
        token: Hashable = None,
    ) -> None:
        """:meth:`short` for a waiter needing ``items`` (window, units) on ``target``."""
        self.short(Ask(items, target), token)

    def share_pause(self, target: str, seconds: float) -> None:
        """Pause ``target`` on every host for ``seconds`` (0: lift it), sent by a worker:
        synchronous, for the local gates' ``pause``."""
        if len(self._pauses) < MAX_TARGETS or target in self._pauses:
            self._pauses[target] = seconds
            self._paused.set()

    async def _pause_forever(self) -> None:
        while True:
            await self._paused.wait()
            self._paused = anyio.Event()
            while self._pauses:
                target, seconds = self._pauses.popitem()
                await self.pause(target, seconds)  # None when Redis is away: local only

    def _low(self, window: FleetWindow) -> None:
        if self.link.usable:
            key = ((id(window),), (0,), None, None)
            self._pending.setdefault(key, Ask(((window, 1),), None, waiter=False))
            self._asked.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The borrow worker, the flusher and the snapshots, until cancelled."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._borrow_forever)
            tasks.start_soon(self.flusher.run)
            tasks.start_soon(self._snapshot_forever)
            tasks.start_soon(self._pause_forever)
            task_status.started()

    async def _borrow_forever(self) -> None:
        while True:
            await self._asked.wait()
            self._asked = anyio.Event()
            while self._pending:
                batch = list(self._pending.items())[:MAX_ASKS_PER_CALL]
                for key, _ in batch:
                    del self._pending[key]
                try:
                    await self.borrow(batch)
                except LinkDown:
                    self._pending.clear()
                    break

    async def borrow(self, batch: list[tuple[tuple[Any, ...], Ask]]) -> None:
        """One ``borrow.lua`` call for ``batch``; applies its answer."""
        now = self.clock.monotonic()
        promised: dict[FleetWindow, int] = {}
        windows: dict[FleetWindow, int] = {}
        targets: dict[str, int] = {}
        asks: list[tuple[tuple[Any, ...], Ask, list[tuple[FleetWindow, int, int, str]]]] = []
        ahead: set[FleetWindow] = set()
        """Windows already asked for a slice ahead in this call (once per window: every ask
        of a waiter in the same call asking for the whole slice would borrow it N times)."""
        for key, ask in batch:
            items = []
            for window, amount in ask.items:
                if ask.waiter:
                    have = max(0, window.available(now) - promised.get(window, 0))
                    need = amount - have
                    if need <= 0:
                        promised[window] = promised.get(window, 0) + amount
                        continue
                    want = need if window in ahead else window.want(need, now)
                    promised[window] = promised.get(window, 0) + amount - need
                elif window in ahead:
                    continue
                else:
                    need, want = 1, window.want(1, now)
                ahead.add(window)
                windows.setdefault(window, len(windows) + 1)
                self._entries += 1
                items.append((window, need, want, f"{self._entry_prefix}{self._entries}"))
            if items:
                if ask.target is not None:
                    targets.setdefault(ask.target, len(targets) + 1)
                asks.append((key, ask, items))
        if not asks:
            self.on_capacity()
            return
        link = self.link
        keys = [link.keys.epoch]
        args: list[Any] = [
            link.epoch or "",
            link.host,
            int(link.settings.lease_s * 1e6),
            int(WAIT_MARK_S * 1e6),
            len(windows),
            len(targets),
        ]
        for window in windows:
            keys += [link.keys.window_log(window.name), link.keys.window_state(window.name)]
            args += [window.span_us, window.limit, window_ttl_ms(window)]
        keys += [link.keys.pause(target) for target in targets]
        args.append(len(asks))
        for _, ask, items in asks:
            args += [
                int(ask.waiter),
                targets[ask.target] if ask.target is not None else 0,
                len(items),
            ]
            for window, need, want, entry in items:
                args += [windows[window], need, want, entry]
        self.borrows += 1
        asked = [(window, want) for _, _, items in asks for window, _, want, _ in items]
        for window, want in asked:
            window.borrowing += want  # if Redis goes away now, it may have granted them
        try:
            reply = await link.call("borrow", keys, args)
        finally:
            for window, want in asked:
                window.borrowing -= want
        try:
            self._apply_borrow(reply, asks)
        except MALFORMED as error:
            raise link.malformed("borrow", error) from None

    def _apply_borrow(
        self,
        reply: Reply,
        asks: list[tuple[tuple[Any, ...], Ask, list[tuple[FleetWindow, int, int, str]]]],
    ) -> None:
        value = reply.value
        status = _text(value[0])
        now_us = int(value[1])
        self.link.sample_time(now_us, reply)
        if status == "epoch":
            self.link.epoch_mismatch()
            return
        if status == "resync":
            self.schedule(self.link.time.to_local(int(value[2])))
            return
        if status != "ok":
            raise LinkDown(f"unexpected borrow reply {status!r}")
        results = value[4]
        granted = False
        for (key, ask, items), result in zip(asks, results, strict=True):
            if int(result[0]) == 1:
                for (window, _, _, entry), amount in zip(items, result[1], strict=True):
                    window.grant(entry, int(amount), reply.sent, now_us)
                granted = True
                self._retry_at.pop(key, None)
                continue
            self.refused += 1
            when = int(result[1])
            if ask.waiter:
                retry = INFINITY if when < 0 else self.link.time.to_local(when)
                self._retry_at[key] = retry
                if retry < INFINITY:
                    self.schedule(retry)
        if len(self._retry_at) > 4 * MAX_ASKS_PER_CALL:  # forget asks nobody repeats
            now = self.clock.monotonic()
            self._retry_at = {k: t for k, t in self._retry_at.items() if t > now}
        if granted:
            self.flusher.wake()  # new leases: the flusher must know when they end
            self.on_capacity()

    # ------------------------------------------------------------------ settling

    def settle_changed(self) -> None:
        """A reservation was settled or cancelled: puts may be waiting."""
        self.flusher.wake()

    def observe(self, window: FleetWindow, remaining: int, reset_s: float) -> None:
        """A provider's remaining/reset for ``window``: sent to the fleet by the flusher
        (:meth:`~.flusher.PutFlusher.observe`)."""
        self.flusher.observe(window, remaining, reset_s)

    # ------------------------------------------------------------------ pauses and headers

    async def pause(self, target: str, seconds: float) -> float | None:
        """Pause ``target`` on every host for ``seconds`` (0: lift the pause); the local
        time it is paused until, or None when Redis could not be told."""
        self.targets.add(target)
        try:
            reply = await self.link.call(
                "pause",
                [self.link.keys.pause(target)],
                [self.link.keys.channel, target, max(0, math.ceil(seconds * 1000))],
            )
        except LinkDown:
            return None
        try:
            self.link.sample_time(int(reply.value[0]), reply)
            until = int(reply.value[1])
        except MALFORMED as error:
            self.link.malformed("pause", error)
            return None
        return self.link.time.to_local(until) if until else -INFINITY

    def _message(self, message: str) -> None:
        kind, _, rest = message.partition(" ")
        if kind == "freed":
            window = self._by_state_key.get(rest)
            if window is not None:
                self._retry_at = {
                    key: t for key, t in self._retry_at.items() if id(window) not in key[0]
                }
                self.on_capacity()
        elif kind == "pause":
            until_text, _, target = rest.partition(" ")
            try:
                until = int(until_text)
            except ValueError:
                return
            if not target or (len(self.targets) >= MAX_TARGETS and target not in self.targets):
                return
            self.targets.add(target)  # learnt: snapshots now repair a missed pause of it too
            self.on_pause(target, self.link.time.to_local(until) if until else -INFINITY)
        elif kind == "subscribed":
            self._retry_at.clear()
            self.on_capacity()

    # ------------------------------------------------------------------ snapshots, re-sync

    async def _snapshot_forever(self) -> None:
        while True:
            await anyio.sleep(self.link.settings.heartbeat_s)
            if self.link.usable and self.windows:
                with contextlib.suppress(LinkDown):
                    await self.snapshot()

    async def snapshot(self) -> None:
        """Learn the fleet's usage profile of every window, and the pauses in force."""
        windows = list(self.windows.values())
        targets = sorted(self.targets)
        keys: list[str] = []
        for window in windows:
            keys += window_keys(self.link, window)
        keys += [self.link.keys.pause(target) for target in targets]
        args: list[Any] = [len(windows), len(targets)]
        reply = await self.link.call("snapshot", keys, args)
        try:
            self._apply_snapshot(reply, windows, targets)
        except MALFORMED as error:
            raise self.link.malformed("snapshot", error) from None

    def _apply_snapshot(self, reply: Reply, windows: list[FleetWindow], targets: list[str]) -> None:
        value = reply.value
        self.link.sample_time(int(value[0]), reply)
        for window, (used, external, _) in zip(windows, value[1], strict=True):
            window.apply_snapshot(int(used), int(external))
        now = self.clock.monotonic()
        for target, until in zip(targets, value[2], strict=True):
            local = self.link.time.to_local(int(until)) if int(until) else -INFINITY
            if local > now:
                self.on_pause(target, local)

    async def _resync(self, everything: bool) -> None:
        """Push what this host admitted while Redis was away (and, after Redis restarted
        empty, every live entry of its own)."""
        now = self.clock.monotonic()
        for window in self.windows.values():
            window.close_due(now)
        await self.flusher.send_puts(self._restored(everything, now))
        self._retry_at.clear()

    async def _seal(self) -> None:
        """Near the end of a re-sync window: admit only from leases, and push what was
        admitted on the share since :meth:`_resync`, so the log has it when borrowing
        starts again."""
        for window in self.windows.values():
            self._apply_mode(window)
        await self.flusher.send_puts(self._restored(False, self.clock.monotonic()))

    def _restored(self, everything: bool, now: float) -> dict[FleetWindow, list[Put]]:
        """Each window's puts that bring the fleet's log up to date (``FleetWindow.restore``)."""
        puts = {}
        for window in self.windows.values():
            window_puts = window.restore(everything, now)
            if window_puts:
                puts[window] = window_puts
        return puts

    # ------------------------------------------------------------------ status

    def held(self) -> Iterable[tuple[str, int, int, int]]:
        """``(window, held by this host, fleet usage last seen, external)`` per window."""
        now = self.clock.monotonic()
        for name, window in self.windows.items():
            yield name, window.held(now), window.fleet_used, window.external


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
