"""Sliding-window rate gates, reservations, and the priority + fair-share wait queue (DESIGN §8).

Vocabulary::

    SlidingWindow   one limit: at most `limit` requests (or tokens) admitted in any window_s.
                    A log of admissions; each stays counted window_s + guard_s seconds from
                    its hand-off to the provider call. Paced or not (`pace`, per gate).
    Gate            a scope's windows (a provider account, one provider/model, one app), plus
                    an in-flight cap and a pause (after a provider 429).
    Demand          what one request needs: one admission on every gate that applies,
                    1 request and N tokens on each of their windows.
    Reservation     an admitted demand; settled later with the real token usage.
    WaitQueue       waiters ordered by priority (aged), then start-time fair queuing across
                    apps by share, FIFO within an app. Pure: it is told the time.
    PermitLeases    permits (Acquire/Settle) held until settled or their lease ends.
    Gates           the async face: admit() waits in the queue, a timer wakes it when
                    capacity frees or a lease ends (no polling); sent() (the hand-off),
                    settle(), observe() (provider headers), pause().

Everything here reads time from an injected :class:`~quotad.daemon.clock.Clock`, so the
windows, queue and reservations are tested on a virtual clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates.configured import configured_windows
from quotad.daemon.gates.fleet import ask_for_waiters, attach_windows
from quotad.daemon.gates.leases import HeldPermit, PermitLeases
from quotad.daemon.gates.queue import PRIORITY_LEVELS, PRIORITY_NAMES, Waiter, WaitQueue
from quotad.daemon.gates.saved import (
    MAX_AHEAD_S,
    SAVE_COST_FACTOR,
    SAVE_EVERY_S,
    Capture,
    SavedGates,
    capture,
    save_changed,
    to_saved,
    write_saved,
)
from quotad.daemon.gates.window import (
    INFINITY,
    Admission,
    Demand,
    Gate,
    Reservation,
    Scope,
    SlidingWindow,
    Unit,
)
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS, RateLimitInfo
from quotad.protocol.messages import GateStatus, QueueStatus, WindowStatus

if TYPE_CHECKING:  # the Redis client is imported only when [cluster] is configured
    from quotad.daemon.cluster.gates import FleetGates

__all__ = [
    "MAX_RESUMED_PAUSES",
    "PRIORITY_LEVELS",
    "Admission",
    "AppPolicy",
    "Demand",
    "Gate",
    "Gates",
    "HeldPermit",
    "Reservation",
    "SlidingWindow",
    "WaitQueue",
    "Waiter",
]

log = logging.getLogger("quotad.gates")


@dataclass(frozen=True, slots=True)
class AppPolicy:
    """How an app's requests are treated: default priority, fair-share weight, own gate."""

    priority: str = "normal"
    share: float = 1.0
    gate: Gate | None = None


DEFAULT_APP = AppPolicy()


@dataclass(slots=True)
class Resumed:
    """What :meth:`Gates.resume` put back."""

    saved_at: float
    elapsed_s: float
    stopped: bool
    """Whether the previous run saved them as it stopped (else it ended otherwise: a crash,
    a kill; what it admitted after its last save is not counted)."""
    windows: int = 0
    units: int = 0
    pauses: int = 0


class Gates:
    """Every gate of the daemon, the wait queue, permits, and the timer that wakes waiters.

    Gates are named ``provider:NAME`` (an account: its limits and ``max_concurrency``),
    ``provider/model`` (a target: its per-model limits, if any, and its 429 pause) and
    ``app:NAME``. A request on a target takes one admission on its provider's gate, its
    target's gate and its app's gate, atomically, or waits in the queue.
    """

    def __init__(self, config: Config, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._gates: dict[str, Gate] = {}
        self._apps: dict[str, AppPolicy] = {}
        self._retired: dict[str, Gate] = {}
        """Gates a reload took out (a provider's, an app's, a target's limits) while they
        still count admissions: a later reload that puts one back takes its windows back, as
        if it had stayed. A provider taken out and put back within its window began empty:
        the sim saw 20 requests in a window of 10."""
        self._demand_gates: dict[tuple[str, str, str | None], tuple[Gate, ...]] = {}
        """Gates of a demand by (provider, target, app); an app the config does not name is
        keyed as None (its gates are the same), so client-chosen app names cannot grow it."""
        self._events: dict[Waiter, anyio.Event] = {}
        self.permits = PermitLeases()
        """Permits granted and not yet settled, and when their leases end."""
        self._next_wake = INFINITY
        self._timer_changed: anyio.Event | None = None
        self.queue = WaitQueue(config.gates.aging_s)
        self.fleet: FleetGates | None = None
        """The fleet's side of every window (``[cluster]``), from :meth:`use_fleet` on."""
        self.reconfigure(config)

    def use_fleet(self, fleet: FleetGates) -> None:
        """Share every gate with the fleet (DESIGN §10): each window admits only what this
        host holds of the fleet's limit; the fleet's worker borrows for waiters short of it
        and wakes the queue when capacity comes (a grant, a ``freed`` message, a change of
        health), another host's 429 pause pauses the target here too."""
        self.fleet = fleet
        fleet.on_capacity = self._dispatch
        fleet.schedule = self._schedule
        fleet.on_pause = self._fleet_paused
        self._attach_fleet_windows()
        self._dispatch()

    def _attach_fleet_windows(self) -> None:
        if self.fleet is not None:
            attach_windows(self.fleet, self._gates.values())

    def _fleet_paused(self, target: str, until: float) -> None:
        """Another host paused ``target`` until local ``until`` (-inf: lifted)."""
        gate = self._target_gate(target)
        gate.paused_until = until if until == -INFINITY else max(gate.paused_until, until)
        self._dispatch()

    # ------------------------------------------------------------------ configuration

    def reconfigure(self, config: Config) -> None:
        """Apply a (new) config, keeping every admission already counted: a window that
        stays (same gate, unit and length) keeps its log; changed limits apply at once."""
        settings = config.gates
        self.max_queue = settings.max_queue
        self.default_max_wait_s = settings.max_wait_s
        self.lease_s = settings.lease_s
        self.max_lease_s = settings.max_lease_s
        self.queue.aging_s = settings.aging_s
        wanted: dict[str, tuple[Scope, list[SlidingWindow], int | None]] = {}
        for name, provider in config.providers.items():
            wanted[f"provider:{name}"] = (
                "provider",
                configured_windows(provider, "provider", settings.guard_s, settings.burst),
                provider.max_concurrency,
            )
            for model, limits in provider.models.items():
                wanted[f"{name}/{model}"] = (
                    "model",
                    configured_windows(limits, "model", settings.guard_s, settings.burst),
                    None,
                )
        for name, app in config.apps.items():
            wanted[f"app:{name}"] = (
                "app",
                configured_windows(app, "app", settings.guard_s, settings.burst),
                None,
            )
        now = self.clock.monotonic()
        for name, (scope, windows, max_in_flight) in wanted.items():
            gate = self._gates.get(name)
            retired = self._retired.pop(name, None)
            if gate is None:
                if retired is not None and retired.scope != "model":  # put back as it was
                    gate, retired = retired, None
                else:
                    gate = Gate(name, scope)
                self._gates[name] = gate
            running = gate.windows if retired is None else gate.windows + retired.windows
            gate.windows = _merged_windows(running, windows, settings.guard_s, now)
            gate.max_in_flight = max_in_flight
        waited_on = {id(gate) for waiter in self.queue.waiters for gate in waiter.demand.gates}
        for name, gate in list(self._gates.items()):
            if name in wanted:
                continue
            if gate.scope != "model":
                self._retired[name] = self._gates.pop(name)
                continue
            if gate.windows:  # a target without its own limits keeps only its pause
                self._retired[name] = Gate(name, "model", gate.windows)
                gate.windows = ()
            if not gate.in_flight and gate.paused_until <= now and id(gate) not in waited_on:
                del self._gates[name]  # made again on its next request
        self._forget_retired(now)
        self._apps = {
            name: AppPolicy(app.priority, app.share, self._gates.get(f"app:{name}"))
            for name, app in config.apps.items()
        }
        self._demand_gates.clear()
        self._attach_fleet_windows()
        self._regate_waiters()
        self._answer_waiters_that_never_fit()
        self._dispatch()

    def _regate_waiters(self) -> None:
        """Hold the waiters queued at a reload to the gates of the new config: their app's as
        it is now (one added, replaced or gone), their provider's and target's as they are
        (a provider no longer configured keeps its gate for them: they still go to it). They
        kept the gates they came with: an app limit added to throttle an app left its queued
        requests free of it (65 arrivals past 5 per 3 s after such a reload), and a waiter
        held by an app limit taken away still waited for it."""
        for waiter in list(self.queue.waiters):
            held = waiter.demand.gates
            provider = next((gate for gate in held if gate.scope == "provider"), None)
            if provider is not None:
                provider = self._gates.get(provider.name, provider)
            target = next((gate for gate in held if gate.scope == "model"), None)
            app = self.app_policy(waiter.app).gate
            gates = tuple(gate for gate in (provider, target, app) if gate is not None)
            if gates != held:
                self.queue.regate(waiter, gates)

    def _forget_retired(self, now: float) -> None:
        """Forget the retired gates that count nothing any more, and the oldest past
        :data:`MAX_RETIRED_GATES`."""
        retired = self._retired
        for name, gate in list(retired.items()):
            if not gate.in_flight and not any(w.counts_anything(now) for w in gate.windows):
                del retired[name]
        while len(retired) > MAX_RETIRED_GATES:
            del retired[next(iter(retired))]

    def _answer_waiters_that_never_fit(self) -> None:
        """Take out of the queue, and answer at once, the waiters a lowered limit can never
        admit. Such a waiter waited out its whole max_wait_s, and held back every waiter
        behind it on that window meanwhile (nobody overtakes one short of capacity): a reload
        from 1,000 to 500 tokens a window kept one of 800 tokens and one of 100 behind it
        waiting 20 s, the window free."""
        now = self.clock.monotonic()
        for waiter in list(self.queue.waiters):
            if reason := waiter.demand.never_fits():
                waiter.never_fits = reason
                self.queue.remove(waiter, now)
                self._events[waiter].set()

    def app_policy(self, app: str) -> AppPolicy:
        """An app's policy (defaults for an app the config does not name)."""
        return self._apps.get(app, DEFAULT_APP)

    def _target_gate(self, target: str) -> Gate:
        gate = self._gates.get(target)
        if gate is None:
            gate = self._gates[target] = Gate(target, "model")
        return gate

    def demand(
        self, provider: str, target: str, app: str, tokens: int, least_tokens: int | None = None
    ) -> Demand:
        """What a request of ``tokens`` tokens by ``app`` needs on ``target`` (``least_tokens``:
        when ``tokens`` is an upper bound, see :class:`~quotad.daemon.gates.window.Demand`)."""
        policy = self._apps.get(app)
        key = (provider, target, app if policy is not None else None)
        gates = self._demand_gates.get(key)
        if gates is None:
            found = [self._gates.get(f"provider:{provider}"), self._target_gate(target)]
            found.append((policy or DEFAULT_APP).gate)
            gates = self._demand_gates[key] = tuple(g for g in found if g is not None)
        return Demand(gates, tokens, least_tokens)

    # ------------------------------------------------------------------ admission

    def admit_now(self, demand: Demand) -> Reservation | None:
        """Admit ``demand`` only if it can go at once, without overtaking a waiter."""
        now = self.clock.monotonic()
        if demand.never_fits() or self.queue.waiters or demand.blockers(now):
            return None
        return Reservation(demand, now)

    async def admit(
        self, demand: Demand, *, app: str, priority: str, max_wait_s: float | None
    ) -> tuple[Reservation, float]:
        """Admit ``demand`` on all its gates at once, waiting in the queue for at most
        ``max_wait_s``; the reservation and the seconds waited."""
        if reason := demand.never_fits():
            raise _never_admitted(reason)
        now = self.clock.monotonic()
        if not self.queue.waiters and not demand.blockers(now):
            return Reservation(demand, now), 0.0
        if len(self.queue) >= self.max_queue:
            self._make_room(app)
        wait_s = self.default_max_wait_s if max_wait_s is None else max_wait_s
        waiter = Waiter(demand, app, PRIORITY_LEVELS[priority], self.app_policy(app).share, now)
        event = self._events[waiter] = anyio.Event()
        self.queue.add(waiter)
        self._dispatch()
        try:
            if waiter.reservation is None and wait_s > 0:  # 0: no turn, no cancel scope
                with anyio.move_on_after(wait_s):
                    await event.wait()
        except BaseException:
            self._forget(waiter)
            raise
        if waiter.reservation is None:
            self._forget(waiter)
            if waiter.never_fits:
                raise _never_admitted(f"{waiter.never_fits} since the config was reloaded")
            if waiter.crowded_out:
                raise RequestError(
                    "overloaded",
                    f"crowded out of the full wait queue (gates.max_queue = {self.max_queue}): "
                    f"app {app!r} had the most requests waiting, and one of an app with fewer "
                    "took this one's place; retry later",
                    retry_after_s=1.0,
                )
            later = self.clock.monotonic()
            reasons = demand.explain(later) or [
                f"{len(self.queue)} requests wait in the queue and go first"
            ]
            raise RequestError(
                "rate_limited",
                f"no capacity within max_wait_s={wait_s:g} s: {'; and '.join(reasons)}",
                retry_after_s=_retry_after(demand.available_at(later) - later),
            )
        self._events.pop(waiter, None)
        resumed = self.clock.monotonic()
        waiter.reservation.sent(resumed)  # counted from now: its task ran later than dispatch
        return waiter.reservation, resumed - now

    def _make_room(self, app: str) -> None:
        """The queue is full: a request of ``app`` takes the place of the newest waiter of
        the app with the most (which is answered ``overloaded``), when that app has more than
        ``app`` would; otherwise it is refused."""
        crowded = self.queue.crowded_out_by(app)
        if crowded is None:
            raise RequestError(
                "overloaded",
                f"{len(self.queue)} requests are already waiting for gates "
                f"(gates.max_queue), {self.queue.queued_of(app)} of them app {app!r}'s; "
                "retry later",
                retry_after_s=1.0,
            )
        crowded.crowded_out = True
        self.queue.remove(crowded, self.clock.monotonic())
        self._events[crowded].set()

    def _forget(self, waiter: Waiter) -> None:
        """A waiter gave up (timed out or cancelled): leave the queue, undo a late admission."""
        self._events.pop(waiter, None)
        self.queue.remove(waiter, self.clock.monotonic())
        if waiter.reservation is not None:
            waiter.reservation.cancel()
        self._dispatch()

    def sent(self, reservation: Reservation | None) -> None:
        """The admitted request is handed to the provider call now: it counts in its windows
        from now (``window_s + guard_s`` from here), so the time between admission and
        hand-off (scheduling a woken waiter on a busy loop, say) never eats the guard that
        covers the way to the provider. Called by the broker right before the call."""
        if reservation is not None:
            reservation.sent(self.clock.monotonic())

    def settle(self, reservation: Reservation, tokens_used: int | None) -> None:
        """Settle a reservation with the tokens really used (None: as reserved)."""
        reservation.settle(tokens_used)
        if self.fleet is not None:
            self.fleet.settle_changed()
        self._dispatch()

    def cancel(self, reservation: Reservation) -> None:
        """Undo a reservation whose request never reached the provider."""
        reservation.cancel()
        if self.fleet is not None:
            self.fleet.settle_changed()
        self._dispatch()

    # ------------------------------------------------------------------ provider feedback

    def pause(self, target: str, seconds: float) -> None:
        """A provider answered 429 for ``target``: admit nothing there for ``seconds``."""
        gate = self._target_gate(target)
        gate.paused_until = max(gate.paused_until, self.clock.monotonic() + max(0.0, seconds))
        if self.fleet is not None and seconds > 0:
            self.fleet.share_pause(target, seconds)  # every host pauses it too
        self._dispatch()

    def unpause(self, target: str) -> None:
        """Forget a target's 429 pause (``quotad target reset``)."""
        gate = self._gates.get(target)
        if gate is not None:
            gate.paused_until = -INFINITY
            self._dispatch()
        if self.fleet is not None:
            self.fleet.share_pause(target, 0.0)  # lifted on every host

    def observe(self, provider: str, target: str, info: RateLimitInfo) -> None:
        """Tighten the gates' view with what a provider's rate-limit headers say."""
        if info is NO_RATE_LIMITS:
            return
        now = self.clock.monotonic()
        model_gate = self._target_gate(target)
        scope = model_gate if model_gate.windows else self._gates.get(f"provider:{provider}")
        for unit, limit, remaining, reset_s in (
            ("requests", info.limit_requests, info.remaining_requests, info.reset_requests_s),
            (
                "tokens",
                info.limit_tokens if info.limit_tokens is not None else info.limit_input_tokens,
                info.remaining_tokens
                if info.remaining_tokens is not None
                else info.remaining_input_tokens,
                info.reset_tokens_s
                if info.reset_tokens_s is not None
                else info.reset_input_tokens_s,
            ),
        ):
            if remaining is None or reset_s is None:
                continue
            window = _matching_window(scope, unit, limit)  # type: ignore[arg-type]
            if window is not None:
                window.add_external(remaining, reset_s, now)
                if window.fleet is not None and self.fleet is not None:
                    self.fleet.observe(window.fleet, remaining, reset_s)  # the fleet's view
            elif remaining <= 0:
                model_gate.paused_until = max(model_gate.paused_until, now + reset_s)
        self._dispatch()

    # ------------------------------------------------------------------ permits

    def grant_permit(
        self, reservation: Reservation, provider: str, target: str, lease_s: float | None
    ) -> HeldPermit:
        """Hold an admitted reservation under a permit id until settled or its lease ends."""
        expires_at = self.clock.monotonic() + (lease_s or self.lease_s)
        permit = self.permits.grant(reservation, provider, target, expires_at)
        self._schedule(expires_at)
        return permit

    def settle_abandoned(self, permit_ids: Iterable[str]) -> int:
        """Settle, as reserved, those of ``permit_ids`` still held: their holder's connection
        closed, and it may have called the provider. How many were."""
        settled = self.permits.settle_abandoned(permit_ids)
        if settled:
            log.info("settled %d permit(s) of a closed connection as reserved", settled)
            self._dispatch()
        return settled

    # ------------------------------------------------------------------ the timer

    def _dispatch(self) -> None:
        """Admit what can be admitted now, wake those waiters, re-arm the timer."""
        now = self.clock.monotonic()
        next_lease = self.permits.expire(now)
        admitted, wake = self.queue.dispatch(now)
        for waiter in admitted:
            event = self._events.pop(waiter, None)
            if event is not None:
                event.set()
        self._schedule(min(wake, next_lease), replace=True)
        if self.fleet is not None and self.queue.waiters:  # after the timer: a refused ask
            ask_for_waiters(self.fleet, self.queue.ordered(now), now)  # re-arms it

    def _schedule(self, when: float, *, replace: bool = False) -> None:
        if when < self._next_wake or (replace and when != self._next_wake):
            self._next_wake = when
            if self._timer_changed is not None:
                self._timer_changed.set()

    async def run(self) -> None:
        """Wake at the next moment capacity frees, a waiter ages or a lease ends (no polling)."""
        while True:
            self._timer_changed = anyio.Event()
            delay = self._next_wake - self.clock.monotonic()
            if delay == INFINITY:
                await self._timer_changed.wait()
            elif delay > 0:
                with anyio.move_on_after(delay + TIMER_SLACK_S):
                    await self._timer_changed.wait()
            self._next_wake = INFINITY
            self._dispatch()

    # ------------------------------------------------------------------ across a restart

    def capture(self) -> Capture:
        """What every gate counts now, to be saved (:mod:`quotad.daemon.gates.saved`)."""
        return capture(self._gates.values(), self.clock.monotonic(), self.clock.time())

    def resume(self, saved: SavedGates) -> Resumed:
        """Count again what a previous run saved (at start, before serving): the admissions
        of every window that is still configured (same gate, unit and length), its pace and
        external usage, and each target's 429 pause. Times count from the saving as much as
        the wall clock says has passed since, and no less than 0 (a clock set back). A window
        a file holds more than once (no daemon writes one) is put back from its first entry
        (each copy merged again cost a sort of the whole log: 400 of them, 13.5 s)."""
        now = self.clock.monotonic()
        elapsed = max(0.0, self.clock.time() - saved.saved_at)
        to_here = now - elapsed - saved.saved_at  # a saved wall time, on this run's clock
        latest = now - elapsed  # an admission counted from after its saving: from then
        ahead = latest + MAX_AHEAD_S
        resumed = Resumed(saved.saved_at, elapsed, saved.stopped)
        seen: set[tuple[str, str, float]] = set()  # windows put back: each counts once
        paused_targets = 0  # targets made again for their pause (each a gate: bounded)
        for entry in saved.gates:
            gate = self._gates.get(entry.name)
            if (
                gate is None
                and entry.paused_until is not None
                and paused_targets < MAX_RESUMED_PAUSES
                and self._is_target(entry.name)
            ):
                paused_targets += 1
                gate = self._target_gate(entry.name)
            if gate is None:
                continue
            if entry.paused_until is not None:
                until = min(entry.paused_until + to_here, ahead)
                if until > now:
                    gate.paused_until = max(gate.paused_until, until)
                    resumed.pauses += 1
            windows = {(window.unit, window.window_s): window for window in gate.windows}
            for kept in entry.windows:
                window = windows.get((kept.unit, kept.window_s))
                if window is None or (entry.name, kept.unit, kept.window_s) in seen:
                    continue
                seen.add((entry.name, kept.unit, kept.window_s))
                units = window.resume(
                    [(min(when + to_here, latest), units) for when, units in kept.admissions],
                    -INFINITY if kept.paced_until is None else kept.paced_until + to_here,
                    kept.external,
                    -INFINITY if kept.external_until is None else kept.external_until + to_here,
                    now,
                )
                resumed.windows += 1 if units else 0
                resumed.units += units
        self._dispatch()
        return resumed

    async def keep_saved(self, path: Path) -> None:
        """Save what changed at ``path`` every :data:`SAVE_EVERY_S` (a crash then loses at
        most that much), copied here and written by a thread; a save that took long waits a
        hundred times as long for the next, so saving takes at most 1 % of the daemon's time
        (a window of 160,000 admissions, 2,700 permits a second: about 27 ms, every 2.7 s). A
        save that fails (a full disk) is logged once, until one succeeds."""
        last: SavedGates | None = None
        failing = False
        interval = SAVE_EVERY_S
        while True:
            await anyio.sleep(interval)
            started = time.perf_counter()
            try:
                last = await anyio.to_thread.run_sync(save_changed, self.capture(), path, last)
            except OSError as error:
                if not failing:
                    log.warning("could not save the gates to %s: %s", path, error)
                failing, last = True, None
            else:
                if failing:
                    log.info("the gates are saved to %s again", path)
                failing = False
            interval = max(SAVE_EVERY_S, SAVE_COST_FACTOR * (time.perf_counter() - started))

    def save(self, path: Path) -> None:
        """Save every gate at ``path`` now, to disk (when stopping, after the drain)."""
        try:
            write_saved(path, to_saved(self.capture(), stopped=True), durable=True)
        except OSError as error:
            log.error(
                "could not save the gates to %s: %s; the next start has them empty", path, error
            )

    def _is_target(self, name: str) -> bool:
        """Whether ``name`` is a target (``provider/model``) of a configured provider."""
        provider, slash, _ = name.partition("/")
        return bool(slash) and f"provider:{provider}" in self._gates

    # ------------------------------------------------------------------ status

    def status(self) -> tuple[list[GateStatus], QueueStatus, dict[str, int]]:
        """Each gate's windows (used/limit now), waiters by priority, waiters by app."""
        now = self.clock.monotonic()
        to_wall = self.clock.time() - now
        gates = []
        for gate in self._gates.values():
            if not gate.windows and gate.paused_until <= now:
                continue
            gates.append(
                GateStatus(
                    name=gate.name,
                    scope=gate.scope,
                    windows=[
                        WindowStatus(
                            unit=w.unit,
                            limit=w.limit,
                            window_s=w.window_s,
                            used=w.usage(now),
                            provider_remaining=w.limit - w.external
                            if now < w.external_until
                            else None,
                            pace_s=w.interval if w.paced else None,
                        )
                        for w in gate.windows
                    ],
                    paused_until=gate.paused_until + to_wall if gate.paused_until > now else None,
                )
            )
        queues = QueueStatus()
        by_app: dict[str, int] = {}
        for waiter in self.queue.waiters:
            name = PRIORITY_NAMES[waiter.priority]
            setattr(queues, name, getattr(queues, name) + 1)
            by_app[waiter.app] = by_app.get(waiter.app, 0) + 1
        return gates, queues, by_app

    def paused_until(self, target: str) -> float | None:
        """Wall time until which ``target`` is paused after a 429, or None."""
        gate = self._gates.get(target)
        now = self.clock.monotonic()
        if gate is None or gate.paused_until <= now:
            return None
        return gate.paused_until + self.clock.time() - now


TIMER_SLACK_S = 0.0005
MAX_RETIRED_GATES: Final = 10_000
"""The most gates taken out by reloads kept for their counts (:attr:`Gates._retired`): those
of the oldest reloads are forgotten first."""
MAX_RESUMED_PAUSES: Final = 1024
"""Targets a saved state may make again for their 429 pause (as many as a router names on
first use); a file naming a million made a million gates (4.2 s at start, 770 MB)."""


def _never_admitted(reason: str) -> RequestError:
    """The answer to a request a limit never allows: no wait frees it, not worth a retry."""
    return RequestError(
        "rate_limited", f"{reason}: it can never be admitted", details={"retryable": False}
    )


def _retry_after(seconds: float) -> float:
    """A refusal's retry-after: when the demand fits; 1 s when nobody can say (the fleet's
    capacity comes when it is borrowed)."""
    return 1.0 if seconds == INFINITY else round(max(0.0, seconds), 3)


def _merged_windows(
    running: tuple[SlidingWindow, ...],
    configured: list[SlidingWindow],
    guard_s: float,
    now: float,
) -> tuple[SlidingWindow, ...]:
    """A reloaded gate's windows: each ``configured`` window, or the ``running`` one of the
    same unit and length with its log (its new limit set), each running window taken once. A
    gate may have two of the same unit and length (``rpm = 10`` and ``{ requests = 100,
    window_s = 60 }``): both were kept as the one running window, given the last limit (100)
    and counting each admission twice, so an unchanged reload let 50 a minute through, not 10.

    A new window (another length) counts what the gate's longest running window of its unit
    holds, as far back as its own span reaches (every admission of a gate is in each of its
    windows): it began empty, so ``rpm = 20`` made ``{ requests = 10, window_s = 30 }`` let
    10 more through in the 30 s that had just had 10. A new window longer than any running
    one counts what they hold, the most that is known."""
    kept: dict[tuple[Unit, float], list[SlidingWindow]] = {}
    for window in running:
        kept.setdefault((window.unit, window.window_s), []).append(window)
    merged = []
    for window in configured:
        same = kept.get((window.unit, window.window_s))
        if same:
            old = same.pop(0)
            old.set_limit(window.limit, guard_s, window.burst)
            window = old
        else:
            longest = max(
                (old for old in running if old.unit == window.unit),
                key=lambda old: old.span,
                default=None,
            )
            if longest is not None:
                counted = [
                    (now if admission.pending else admission.time, admission.amount)
                    for admission in longest.admissions(now)
                ]
                window.resume(counted, -INFINITY, 0, -INFINITY, now)
        merged.append(window)
    return tuple(merged)


def _matching_window(gate: Gate | None, unit: Unit, limit: int | None) -> SlidingWindow | None:
    """The window a provider header of ``unit`` (with its ``limit``) speaks of: the one with
    that limit, else the shortest of that unit."""
    if gate is None:
        return None
    for window in gate.windows:
        if window.unit == unit and window.limit == limit:
            return window
    return gate.window(unit)
