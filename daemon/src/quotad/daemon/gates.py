"""Sliding-window rate gates, reservations, and the priority + fair-share wait queue (DESIGN §8).

Vocabulary::

    SlidingWindow   one limit: at most `limit` requests (or tokens) admitted in any window_s.
                    A log of admissions; each stays counted window_s + guard_s seconds.
    Gate            a scope's windows (a provider account, one provider/model, one app), plus
                    an in-flight cap and a pause (after a provider 429).
    Demand          what one request needs: one admission on every gate that applies,
                    1 request and N tokens on each of their windows.
    Reservation     an admitted demand; settled later with the real token usage.
    WaitQueue       waiters ordered by priority (aged), then start-time fair queuing across
                    apps by share, FIFO within an app. Pure: it is told the time.
    Gates           the async face: admit() waits in the queue, a timer wakes it when
                    capacity frees (no polling); settle(), observe() (provider headers), pause().

Everything here reads time from an injected :class:`~quotad.daemon.clock.Clock`, so the
windows, queue and reservations are tested on a virtual clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config, RateLimits
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import NO_RATE_LIMITS, RateLimitInfo
from quotad.protocol.messages import GateStatus, QueueStatus, WindowStatus

log = logging.getLogger("quotad.gates")

Unit = Literal["requests", "tokens"]
Scope = Literal["provider", "model", "app"]
PRIORITY_LEVELS: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
PRIORITY_NAMES = ("low", "normal", "high", "critical")
_INFINITY = math.inf


class Admission:
    """One admission in a window's log; ``amount`` changes when its reservation settles."""

    __slots__ = ("amount", "live", "time")

    def __init__(self, time: float, amount: int) -> None:
        self.time = time
        self.amount = amount
        self.live = True


class SlidingWindow:
    """At most ``limit`` units admitted in any ``window_s``; exact (a log, not buckets).

    Each admission stays counted for ``window_s + guard_s``: the guard absorbs the jitter
    between admission here and arrival at the provider. A provider's rate-limit headers may
    add *external* usage (other users of the same account) until a given time; they can only
    tighten the window, never loosen it beyond ``limit``.
    """

    __slots__ = (
        "_log",
        "external",
        "external_until",
        "limit",
        "span",
        "unit",
        "used",
        "window_s",
    )

    def __init__(self, unit: Unit, limit: int, window_s: float, guard_s: float) -> None:
        self.unit: Unit = unit
        self.limit = limit
        self.window_s = window_s
        self.span = window_s + guard_s
        self._log: deque[Admission] = deque()
        self.used = 0
        self.external = 0
        self.external_until = -_INFINITY

    def expire(self, now: float) -> None:
        """Forget admissions older than the span."""
        log = self._log
        span = self.span
        while log and log[0].time + span <= now:  # the very expression free_at() answers
            admission = log.popleft()
            admission.live = False
            self.used -= admission.amount

    def usage(self, now: float) -> int:
        """Units counted now, own and external."""
        self.expire(now)
        if now < self.external_until:
            return self.used + self.external
        return self.used

    def fits(self, amount: int, now: float) -> bool:
        """Whether ``amount`` more units may be admitted now."""
        return self.usage(now) + amount <= self.limit

    def admit(self, amount: int, now: float) -> Admission:
        """Record an admission of ``amount`` units now."""
        admission = Admission(now, amount)
        self._log.append(admission)
        self.used += amount
        return admission

    def resize(self, admission: Admission, amount: int) -> None:
        """Change an admission's amount (settling a reservation); no-op once it has expired."""
        if admission.live:
            self.used += amount - admission.amount
        admission.amount = amount

    def free_at(self, amount: int, now: float) -> float:
        """The earliest time ``amount`` units fit, if nothing else is admitted meanwhile."""
        if amount > self.limit:
            return _INFINITY
        excess = self.usage(now) + amount - self.limit
        if excess <= 0:
            return now
        external_pending = now < self.external_until and self.external > 0
        for admission in self._log:
            expires = admission.time + self.span
            if external_pending and self.external_until <= expires:
                excess -= self.external
                external_pending = False
                if excess <= 0:
                    return self.external_until
            excess -= admission.amount
            if excess <= 0:
                return expires
        if external_pending and excess - self.external <= 0:
            return self.external_until
        return _INFINITY

    def add_external(self, remaining: int, reset_s: float, now: float) -> None:
        """A provider says ``remaining`` units are left until ``reset_s`` from now: count the
        difference from our own view as external usage when it is tighter than ours."""
        own_remaining = (
            self.limit - self.usage(now) + (self.external if now < self.external_until else 0)
        )
        external = max(0, own_remaining - max(0, remaining))
        if external > 0:
            self.external = min(self.limit, external)
            self.external_until = now + max(0.0, reset_s)
        elif now >= self.external_until:
            self.external = 0

    def describe(self) -> str:
        """``20 requests per 2 s``."""
        return f"{self.limit} {self.unit} per {self.window_s:g} s"


class Gate:
    """The windows of one scope, its in-flight cap, and its pause."""

    __slots__ = ("in_flight", "max_in_flight", "name", "paused_until", "scope", "windows")

    def __init__(
        self,
        name: str,
        scope: Scope,
        windows: Iterable[SlidingWindow] = (),
        max_in_flight: int | None = None,
    ) -> None:
        self.name = name
        self.scope: Scope = scope
        self.windows = tuple(windows)
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.paused_until = -_INFINITY

    def window(self, unit: Unit) -> SlidingWindow | None:
        """The shortest window of ``unit``, if any."""
        found = [w for w in self.windows if w.unit == unit]
        return min(found, key=lambda w: w.window_s) if found else None


Blocker = SlidingWindow | Gate  # a window short of capacity, or a gate paused or full


@dataclass(slots=True)
class Demand:
    """What one request needs: an admission on each gate, ``tokens`` on token windows."""

    gates: tuple[Gate, ...]
    tokens: int

    def amount(self, window: SlidingWindow) -> int:
        """Units this demand takes on ``window``."""
        return 1 if window.unit == "requests" else self.tokens

    def never_fits(self) -> str | None:
        """Why this demand can never be admitted (it exceeds a limit outright), or None."""
        for gate in self.gates:
            for window in gate.windows:
                if self.amount(window) > window.limit:
                    return (
                        f"the request needs {self.amount(window)} {window.unit} but gate "
                        f"{gate.name} allows {window.describe()}"
                    )
        return None

    def blockers(
        self, now: float, claimed: dict[SlidingWindow, int] | None = None
    ) -> list[Blocker]:
        """Windows and gates that cannot take this demand now (after ``claimed`` units)."""
        found: list[Blocker] = []
        for gate in self.gates:
            if gate.paused_until > now or (
                gate.max_in_flight is not None and gate.in_flight >= gate.max_in_flight
            ):
                found.append(gate)
            for window in gate.windows:
                extra = claimed.get(window, 0) if claimed else 0
                if not window.fits(self.amount(window) + extra, now):
                    found.append(window)
        return found

    def available_at(self, now: float) -> float:
        """When this demand alone would fit, if nothing else were admitted meanwhile."""
        when = now
        for gate in self.gates:
            when = max(when, gate.paused_until)
            for window in gate.windows:
                when = max(when, window.free_at(self.amount(window), now))
        return when


class Reservation:
    """An admitted demand: its admissions, settled once with the real usage."""

    __slots__ = ("_admissions", "_gates", "demand", "settled", "tokens")

    def __init__(self, demand: Demand, now: float) -> None:
        self.demand = demand
        self.tokens = demand.tokens
        self._gates = demand.gates
        self._admissions: list[tuple[SlidingWindow, Admission]] = []
        for gate in demand.gates:
            gate.in_flight += 1
            for window in gate.windows:
                self._admissions.append((window, window.admit(demand.amount(window), now)))
        self.settled = False

    def settle(self, tokens_used: int | None) -> None:
        """Return unused reserved tokens (or charge what went over) and free the in-flight
        slot. ``None`` keeps the reservation as it was. Idempotent."""
        if self.settled:
            return
        self.settled = True
        for gate in self._gates:
            gate.in_flight -= 1
        if tokens_used is None or tokens_used == self.tokens:
            return
        for window, admission in self._admissions:
            if window.unit == "tokens":
                window.resize(admission, max(0, tokens_used))

    def cancel(self) -> None:
        """Undo the admission entirely (the request never reached the provider)."""
        if self.settled:
            return
        self.settled = True
        for gate in self._gates:
            gate.in_flight -= 1
        for window, admission in self._admissions:
            window.resize(admission, 0)


# --------------------------------------------------------------------------- the wait queue

_sequence = itertools.count()


@dataclass(slots=True, eq=False)
class Waiter:
    """A request waiting for admission."""

    demand: Demand
    app: str
    priority: int
    share: float
    enqueued_at: float
    deadline: float = _INFINITY
    start_tag: float = 0.0
    sequence: int = field(default_factory=lambda: next(_sequence))
    reservation: Reservation | None = None

    def effective_priority(self, now: float, aging_s: float) -> int:
        """The priority, raised one level per ``aging_s`` waited, up to critical."""
        aged = int((now - self.enqueued_at) / aging_s) if aging_s > 0 else 0
        return min(3, self.priority + aged)


class WaitQueue:
    """Waiters in admission order, and the dispatch rule (pure; time is passed in).

    Order: effective priority (base priority aged up one level per ``aging_s`` waited), then
    the start tag of start-time fair queuing (an app with share s advances its tag by 1/s per
    request, so under contention share 2 gets twice the admissions of share 1), then arrival.

    Dispatch walks waiters in order and admits each that fits. A waiter that does not fit
    holds back those behind it only where it is short: on its windows without capacity it
    blocks everyone after it (no overtaking, so large requests do not starve), and on shared
    windows where it would fit it claims its amount. A waiter short only on its *own app's*
    gate blocks only its own app (FIFO within an app) and claims nothing shared.
    """

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self.waiters: list[Waiter] = []
        self._virtual_time = 0.0
        self._app_finish: dict[str, float] = {}
        self._order: list[Waiter] | None = None  # valid until membership or an aging step changes
        self._order_until = _INFINITY

    def __len__(self) -> int:
        return len(self.waiters)

    def add(self, waiter: Waiter) -> None:
        """Enqueue, tagging the waiter for fair share."""
        start = max(self._virtual_time, self._app_finish.get(waiter.app, 0.0))
        waiter.start_tag = start
        self._app_finish[waiter.app] = start + 1.0 / waiter.share
        self.waiters.append(waiter)
        self._order = None

    def remove(self, waiter: Waiter) -> None:
        """Leave the queue (timed out, cancelled or admitted)."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self._order = None

    def ordered(self, now: float) -> list[Waiter]:
        """Waiters in admission order at ``now`` (sorted again only when it can have changed)."""
        if self._order is not None and now < self._order_until:
            return self._order
        aging_s = self.aging_s
        self._order = sorted(
            self.waiters,
            key=lambda w: (-w.effective_priority(now, aging_s), w.start_tag, w.sequence),
        )
        self._order_until = self._next_aging_step(now)
        return self._order

    def _next_aging_step(self, now: float) -> float:
        """The next time a waiter's effective priority goes up a level."""
        if self.aging_s <= 0:
            return _INFINITY
        step = _INFINITY
        for waiter in self.waiters:
            if waiter.effective_priority(now, self.aging_s) < 3:
                levels = math.floor((now - waiter.enqueued_at) / self.aging_s) + 1
                next_step = waiter.enqueued_at + levels * self.aging_s
                while next_step <= now:  # float rounding must not stop time
                    levels += 1
                    next_step = waiter.enqueued_at + levels * self.aging_s
                step = min(step, next_step)
        return step

    def dispatch(self, now: float) -> tuple[list[Waiter], float]:
        """Admit every waiter the rules allow at ``now``.

        Returns the admitted waiters (removed from the queue, each with its reservation) and
        the next time something may change (capacity frees or a waiter ages), or infinity.
        """
        if not self.waiters:
            return [], _INFINITY
        admitted: list[Waiter] = []
        blocked: set[int] = set()  # ids of windows and gates nobody behind may take
        claimed: dict[SlidingWindow, int] = {}
        wake = _INFINITY
        for waiter in self.ordered(now):
            demand = waiter.demand
            if any(id(gate) in blocked for gate in demand.gates) or any(
                id(window) in blocked for gate in demand.gates for window in gate.windows
            ):
                continue
            blockers = demand.blockers(now, claimed)
            if not blockers:
                waiter.reservation = Reservation(demand, now)
                self._virtual_time = max(self._virtual_time, waiter.start_tag)
                admitted.append(waiter)
                continue
            own_app_only = all(
                (isinstance(b, SlidingWindow) and _scope_of(demand, b) == "app")
                or (isinstance(b, Gate) and b.scope == "app")
                for b in blockers
            )
            for blocker in blockers:
                blocked.add(id(blocker))
                wake = min(wake, _frees_at(demand, blocker, now, claimed))
            if not own_app_only:
                for gate in demand.gates:
                    if gate.scope == "app":
                        continue
                    for window in gate.windows:
                        if window not in blockers:
                            claimed[window] = claimed.get(window, 0) + demand.amount(window)
        if admitted:
            taken = {id(waiter) for waiter in admitted}
            self.waiters = [w for w in self.waiters if id(w) not in taken]
            if self._order is not None:
                self._order = [w for w in self._order if id(w) not in taken]
        return admitted, min(wake, self._order_until)


def _scope_of(demand: Demand, window: SlidingWindow) -> Scope:
    for gate in demand.gates:
        if window in gate.windows:
            return gate.scope
    return "provider"


def _frees_at(
    demand: Demand, blocker: Blocker, now: float, claimed: dict[SlidingWindow, int]
) -> float:
    """When ``blocker`` may next have room for ``demand`` after what waiters ahead of it
    claimed (in-flight caps free on settle, which dispatches anyway)."""
    if isinstance(blocker, Gate):
        return blocker.paused_until if blocker.paused_until > now else _INFINITY
    return blocker.free_at(demand.amount(blocker) + claimed.get(blocker, 0), now)


# --------------------------------------------------------------------------- the async face


@dataclass(frozen=True, slots=True)
class AppPolicy:
    """How an app's requests are treated: default priority, fair-share weight, own gate."""

    priority: str = "normal"
    share: float = 1.0
    gate: Gate | None = None


DEFAULT_APP = AppPolicy()


@dataclass(slots=True)
class HeldPermit:
    """A granted Acquire, until it is settled or its lease runs out."""

    permit_id: str
    target: str
    provider: str
    reservation: Reservation
    expires_at: float


def _windows(limits: RateLimits, guard_s: float) -> list[SlidingWindow]:
    """The sliding windows a provider, model or app table configures."""
    windows = []
    for unit, value, window_s in (
        ("requests", limits.rpm, 60.0),
        ("tokens", limits.tpm, 60.0),
        ("requests", limits.rpd, 86400.0),
        ("tokens", limits.tpd, 86400.0),
    ):
        if value is not None:
            windows.append(SlidingWindow(unit, value, window_s, guard_s))  # type: ignore[arg-type]
    for extra in limits.limits:
        if extra.requests is not None:
            windows.append(SlidingWindow("requests", extra.requests, extra.window_s, guard_s))
        if extra.tokens is not None:
            windows.append(SlidingWindow("tokens", extra.tokens, extra.window_s, guard_s))
    return windows


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
        self._demand_gates: dict[tuple[str, str, str], tuple[Gate, ...]] = {}
        self._events: dict[Waiter, anyio.Event] = {}
        self._permits: dict[str, HeldPermit] = {}
        self._leases: list[tuple[float, str]] = []
        self._permit_ids = itertools.count(1)
        self._permit_prefix = "pm-" + os.urandom(3).hex() + "-"
        self._next_wake = _INFINITY
        self._timer_changed: anyio.Event | None = None
        self.queue = WaitQueue(config.gates.aging_s)
        self.reconfigure(config)

    # ------------------------------------------------------------------ configuration

    def reconfigure(self, config: Config) -> None:
        """Apply a (new) config, keeping every admission already counted: a window that
        stays (same gate, unit and length) keeps its log; changed limits apply at once."""
        settings = config.gates
        self.guard_s = settings.guard_s
        self.max_queue = settings.max_queue
        self.default_max_wait_s = settings.max_wait_s
        self.lease_s = settings.lease_s
        self.queue.aging_s = settings.aging_s
        wanted: dict[str, tuple[Scope, list[SlidingWindow], int | None]] = {}
        for name, provider in config.providers.items():
            wanted[f"provider:{name}"] = (
                "provider",
                _windows(provider, settings.guard_s),
                provider.max_concurrency,
            )
            for model, limits in provider.models.items():
                wanted[f"{name}/{model}"] = ("model", _windows(limits, settings.guard_s), None)
        for name, app in config.apps.items():
            wanted[f"app:{name}"] = ("app", _windows(app, settings.guard_s), None)
        for name, (scope, windows, max_in_flight) in wanted.items():
            gate = self._gates.get(name)
            if gate is None:
                self._gates[name] = Gate(name, scope, windows, max_in_flight)
                continue
            kept = {(w.unit, w.window_s): w for w in gate.windows}
            merged = []
            for window in windows:
                old = kept.get((window.unit, window.window_s))
                if old is not None:
                    old.limit = window.limit
                    old.span = window.span
                    window = old
                merged.append(window)
            gate.windows = tuple(merged)
            gate.max_in_flight = max_in_flight
        for name in [n for n, g in self._gates.items() if n not in wanted and g.scope != "model"]:
            del self._gates[name]
        for name, gate in list(self._gates.items()):
            if gate.scope == "model" and name not in wanted:
                gate.windows = ()  # a target without its own limits keeps only its pause
        self._apps = {
            name: AppPolicy(app.priority, app.share, self._gates.get(f"app:{name}"))
            for name, app in config.apps.items()
        }
        self._demand_gates.clear()
        self._dispatch()

    def app_policy(self, app: str) -> AppPolicy:
        """An app's policy (defaults for an app the config does not name)."""
        return self._apps.get(app, DEFAULT_APP)

    def _target_gate(self, target: str) -> Gate:
        gate = self._gates.get(target)
        if gate is None:
            gate = self._gates[target] = Gate(target, "model")
        return gate

    def demand(self, provider: str, target: str, app: str, tokens: int) -> Demand:
        """What a request of ``tokens`` tokens by ``app`` needs on ``target``."""
        key = (provider, target, app)
        gates = self._demand_gates.get(key)
        if gates is None:
            found = [self._gates.get(f"provider:{provider}"), self._target_gate(target)]
            found.append(self.app_policy(app).gate)
            gates = self._demand_gates[key] = tuple(g for g in found if g is not None)
        return Demand(gates, tokens)

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
            raise RequestError("rate_limited", f"{reason}: it can never be admitted")
        now = self.clock.monotonic()
        if not self.queue.waiters and not demand.blockers(now):
            return Reservation(demand, now), 0.0
        if len(self.queue) >= self.max_queue:
            raise RequestError(
                "overloaded",
                f"{len(self.queue)} requests are already waiting for gates; retry later",
                retry_after_s=1.0,
            )
        wait_s = self.default_max_wait_s if max_wait_s is None else max_wait_s
        waiter = Waiter(
            demand, app, PRIORITY_LEVELS[priority], self.app_policy(app).share, now, now + wait_s
        )
        event = self._events[waiter] = anyio.Event()
        self.queue.add(waiter)
        self._dispatch()
        try:
            if waiter.reservation is None:
                with anyio.move_on_after(wait_s):
                    await event.wait()
        except BaseException:
            self._forget(waiter)
            raise
        if waiter.reservation is None:
            self._forget(waiter)
            later = self.clock.monotonic()
            blocking = ", ".join(sorted({_blocker_name(b) for b in demand.blockers(later)}))
            raise RequestError(
                "rate_limited",
                f"no capacity within max_wait_s={wait_s:g} s on {blocking or 'a busy queue'}",
                retry_after_s=round(max(0.0, demand.available_at(later) - later), 3),
            )
        self._events.pop(waiter, None)
        return waiter.reservation, self.clock.monotonic() - now

    def _forget(self, waiter: Waiter) -> None:
        """A waiter gave up (timed out or cancelled): leave the queue, undo a late admission."""
        self._events.pop(waiter, None)
        self.queue.remove(waiter)
        if waiter.reservation is not None:
            waiter.reservation.cancel()
        self._dispatch()

    def settle(self, reservation: Reservation, tokens_used: int | None) -> None:
        """Settle a reservation with the tokens really used (None: as reserved)."""
        reservation.settle(tokens_used)
        self._dispatch()

    def cancel(self, reservation: Reservation) -> None:
        """Undo a reservation whose request never reached the provider."""
        reservation.cancel()
        self._dispatch()

    # ------------------------------------------------------------------ provider feedback

    def pause(self, target: str, seconds: float) -> None:
        """A provider answered 429 for ``target``: admit nothing there for ``seconds``."""
        gate = self._target_gate(target)
        gate.paused_until = max(gate.paused_until, self.clock.monotonic() + max(0.0, seconds))
        self._dispatch()

    def unpause(self, target: str) -> None:
        """Forget a target's 429 pause (``quotad target reset``)."""
        gate = self._gates.get(target)
        if gate is not None:
            gate.paused_until = -_INFINITY
            self._dispatch()

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
            elif remaining <= 0:
                model_gate.paused_until = max(model_gate.paused_until, now + reset_s)
        self._dispatch()

    # ------------------------------------------------------------------ permits

    def grant_permit(
        self, reservation: Reservation, provider: str, target: str, lease_s: float | None
    ) -> HeldPermit:
        """Hold an admitted reservation under a permit id until settled or its lease ends."""
        permit_id = f"{self._permit_prefix}{next(self._permit_ids)}"
        expires_at = self.clock.monotonic() + (lease_s or self.lease_s)
        permit = HeldPermit(permit_id, target, provider, reservation, expires_at)
        self._permits[permit_id] = permit
        heapq.heappush(self._leases, (expires_at, permit_id))
        self._schedule(expires_at)
        return permit

    def take_permit(self, permit_id: str) -> HeldPermit | None:
        """The permit to settle (once); None if unknown, already settled or expired."""
        return self._permits.pop(permit_id, None)

    def _expire_leases(self, now: float) -> float:
        """Settle permits whose lease ran out, as reserved; the next lease end."""
        leases = self._leases
        while leases and leases[0][0] <= now:
            _, permit_id = heapq.heappop(leases)
            permit = self._permits.pop(permit_id, None)
            if permit is not None:
                log.info(
                    "permit %s on %s expired unsettled; settled as reserved",
                    permit_id,
                    permit.target,
                )
                permit.reservation.settle(None)
        while leases and leases[0][1] not in self._permits:
            heapq.heappop(leases)
        return leases[0][0] if leases else _INFINITY

    # ------------------------------------------------------------------ the timer

    def _dispatch(self) -> None:
        """Admit what can be admitted now, wake those waiters, re-arm the timer."""
        now = self.clock.monotonic()
        next_lease = self._expire_leases(now) if self._leases else _INFINITY
        admitted, wake = self.queue.dispatch(now)
        for waiter in admitted:
            event = self._events.pop(waiter, None)
            if event is not None:
                event.set()
        self._schedule(min(wake, next_lease), replace=True)

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
            if delay == _INFINITY:
                await self._timer_changed.wait()
            elif delay > 0:
                with anyio.move_on_after(delay + TIMER_SLACK_S):
                    await self._timer_changed.wait()
            self._next_wake = _INFINITY
            self._dispatch()

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


def _matching_window(gate: Gate | None, unit: Unit, limit: int | None) -> SlidingWindow | None:
    """The window a provider header of ``unit`` (with its ``limit``) speaks of: the one with
    that limit, else the shortest of that unit."""
    if gate is None:
        return None
    candidates = [w for w in gate.windows if w.unit == unit]
    for window in candidates:
        if window.limit == limit:
            return window
    return min(candidates, key=lambda w: w.window_s) if candidates else None


def _blocker_name(blocker: Blocker) -> str:
    if isinstance(blocker, Gate):
        return f"{blocker.name} (paused or at its in-flight cap)"
    return f"{blocker.describe()}"
