"""Sliding windows and what they count: :class:`SlidingWindow` (one limit, an exact log of
admissions, paced under contention), :class:`Gate` (a scope's windows, in-flight cap and 429
pause), :class:`Demand` (what one request needs of its gates) and :class:`Reservation` (an
admitted demand, settled later with the real usage). Pure: time is passed in."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the Redis client is imported only when [cluster] is configured
    from quotad.daemon.cluster.window import FleetWindow
    from quotad.daemon.cluster.window_records import Taken

Unit = Literal["requests", "tokens"]
Scope = Literal["provider", "model", "app"]
INFINITY = math.inf


class Admission:
    """One admission in a window's log; ``amount`` changes when its reservation settles.
    A *pending* admission's request has not left the gates yet (a waiter admitted while its
    task is still to run): it stays counted however long that takes."""

    __slots__ = ("amount", "fleet", "live", "pending", "time")

    def __init__(self, time: float, amount: int, pending: bool = False) -> None:
        self.time = time
        self.amount = amount
        self.live = True
        self.pending = pending
        self.fleet: Taken | None = None
        """What it took of the fleet's window (``[cluster]``), settled with it."""


class SlidingWindow:
    """At most ``limit`` units admitted in any ``window_s``; exact (a log, not buckets).

    Each admission stays counted for ``window_s + guard_s``, counted from when its request is
    handed to the provider call (:meth:`retime`; until then from its admission): the guard
    absorbs the jitter between that hand-off and arrival at the provider. A provider's
    rate-limit headers may add *external* usage (other users of the same account) until a
    given time; they can only tighten the window, never loosen it beyond ``limit``.

    With ``[cluster]`` the window is also one fleet-wide limit (DESIGN §10): :attr:`fleet`
    is this host's side of it, and an admission must fit both here and in what this host
    holds of the fleet's limit (:meth:`FleetWindow.available
    <quotad.daemon.cluster.window.FleetWindow.available>`); the fleet's worker borrows more
    for waiters short of it and wakes the queue, so :meth:`free_at` cannot say when that is.

    A *paced* window (``burst < 1``: provider and model gates by default) also spreads its
    admissions (GCRA): one unit per ``window_s / limit`` on average, with bursts of up to
    ``burst * limit`` units beyond that pace. Providers enforce a per-minute limit over
    shorter slices too (OpenAI: 60 rpm as about 1 a second), so an unpaced burst of the whole
    limit can draw 429s the window says cannot happen; and admissions made together expire
    together, so the window refills in bursts that nobody contends for, while paced, capacity
    frees a little at a time and each piece goes to the waiter the queue ranks first (so
    shares hold). An unpaced window (``burst=1``: app gates by default, whose limit is ours
    alone) lets a client that is alone take its whole limit at once. Either way the log
    alone guarantees the limit: pacing only ever admits less.
    """

    __slots__ = (
        "_log",
        "burst",
        "external",
        "external_until",
        "fleet",
        "interval",
        "limit",
        "refunds",
        "span",
        "theoretical_arrival",
        "tolerance",
        "unit",
        "used",
        "window_s",
    )

    def __init__(
        self,
        unit: Unit,
        limit: int,
        window_s: float,
        guard_s: float,
        burst: float = 1.0,
        *,
        refunds: bool = True,
    ) -> None:
        self.unit: Unit = unit
        self.refunds = refunds
        """Whether a settle gives back reserved units the request did not use (see
        :data:`~quotad.daemon.gates.configured.REFUNDED_BY_SCOPE`)."""
        self.limit = limit
        self.window_s = window_s
        self.span = window_s + guard_s
        self.interval = window_s / limit
        self.burst = burst
        self.tolerance = INFINITY if burst >= 1.0 else burst * window_s
        self.theoretical_arrival = -INFINITY
        self._log: deque[Admission] = deque()
        self.used = 0
        self.external = 0
        self.external_until = -INFINITY
        self.fleet: FleetWindow | None = None

    def set_limit(self, limit: int, guard_s: float, burst: float) -> None:
        """Apply a reloaded limit, keeping the log."""
        self.limit = limit
        self.span = self.window_s + guard_s
        self.interval = self.window_s / limit
        self.burst = burst
        self.tolerance = INFINITY if burst >= 1.0 else burst * self.window_s

    @property
    def paced(self) -> bool:
        """Whether admissions are spread over the window (see the class docstring)."""
        return self.tolerance != INFINITY

    def expire(self, now: float) -> None:
        """Forget admissions older than the span (a pending one is counted again from now:
        its request has not even left)."""
        log = self._log
        span = self.span
        while log and log[0].time + span <= now:  # the very expression free_at() answers
            admission = log.popleft()
            if admission.pending:
                admission.time = now
                log.append(admission)
                continue
            admission.live = False
            self.used -= admission.amount

    def usage(self, now: float) -> int:
        """Units counted now, own and external."""
        self.expire(now)
        if now < self.external_until:
            return self.used + self.external
        return self.used

    def fits(self, amount: int, now: float) -> bool:
        """Whether ``amount`` more units may be admitted now (here, and with ``[cluster]``
        within what this host holds of the fleet's limit)."""
        return self.fits_here(amount, now) and (
            self.fleet is None or self.fleet.available(now) >= amount
        )

    def fits_here(self, amount: int, now: float) -> bool:
        """Whether ``amount`` more units fit this host's own log and pace."""
        return (
            self.usage(now) + amount <= self.limit
            and now >= self.theoretical_arrival - self.tolerance
        )

    def admit(self, amount: int, now: float, pending: bool = False) -> Admission:
        """Record an admission of ``amount`` units now (``pending``: until it is retimed),
        and take them from what this host holds of the fleet's limit (:meth:`fits` said
        they are there)."""
        admission = Admission(now, amount, pending)
        self._log.append(admission)
        self.used += amount
        self.theoretical_arrival = max(self.theoretical_arrival, now) + amount * self.interval
        if self.fleet is not None:
            admission.fleet = self.fleet.take(amount, now)
        return admission

    def retime(self, admission: Admission, now: float) -> Admission:
        """The request admitted as ``admission`` is handed to the provider call ``now``:
        count its units from now, and no longer pending (the admission it is counted as, to
        settle later). What happened between admission and hand-off (a woken waiter's task
        waiting to run) is thus never taken out of the guard."""
        admission.pending = False
        if now <= admission.time:
            return admission
        if admission.fleet is not None and self.fleet is not None:
            self.fleet.retime(admission.fleet, now)  # the fleet counts it from now too
        log = self._log
        if log and log[-1] is admission:  # still the newest: moving it keeps the log in order
            admission.time = now
            return admission
        moved = Admission(now, admission.amount)
        moved.fleet, admission.fleet = admission.fleet, None
        if admission.live:
            admission.amount = 0  # its units are counted as ``moved`` from now on
        else:  # it already left the log (a hand-off later than the whole span)
            self.used += moved.amount
        log.append(moved)
        return moved

    def resize(self, admission: Admission, amount: int) -> None:
        """Change an admission's amount (settling a reservation): the log counts the new
        amount while the admission is in it, and the pace gives back (or charges) the rest,
        holding the window no longer than the log does: one window past the admission."""
        change = amount - admission.amount
        if admission.live:
            self.used += change
        arrival = self.theoretical_arrival + change * self.interval
        if change > 0:  # used more than reserved (a permit's settle says so)
            arrival = min(arrival, max(self.theoretical_arrival, admission.time + self.window_s))
        self.theoretical_arrival = arrival
        admission.amount = amount
        if admission.fleet is not None and self.fleet is not None:
            self.fleet.resize(admission.fleet, amount, admission.time)

    def counts_anything(self, now: float) -> bool:
        """Whether anything is counted here now (an admission, the pace, external usage)."""
        self.expire(now)
        return bool(self._log) or self.theoretical_arrival > now or self.external_until > now

    def admissions(self, now: float) -> list[Admission]:
        """The admissions counted now, oldest first (the log's own objects, copied out)."""
        self.expire(now)
        return list(self._log)

    def resume(
        self,
        counted: Iterable[tuple[float, int]],
        paced_until: float,
        external: int,
        external_until: float,
        now: float,
    ) -> int:
        """Count again what a previous run of the daemon counted here (``counted``: from
        when, units; times on this run's clock, none after ``now``): those still in the
        span, the newest ``limit`` of them at most, the pace and the provider's external
        usage. The units put back. Each entry counts a unit at least, so the newest ``limit``
        hold the window full as long as all of them would (a window of 10 requests given
        1,024 entries kept them all: 2,000 such windows took 2.9 s and 500 MB at start)."""
        span = self.span
        live = sorted((when, units) for when, units in counted if when + span > now and units > 0)
        kept = [Admission(when, units) for when, units in live[-self.limit :]]
        restored = sum(admission.amount for admission in kept)
        if kept:
            self._log = deque(sorted([*self._log, *kept], key=lambda admission: admission.time))
            self.used += restored
        self.theoretical_arrival = max(
            self.theoretical_arrival, min(paced_until, now + self.window_s)
        )
        if external_until > now and external > 0:
            self.external = max(self.external, min(self.limit, external))
            self.external_until = max(self.external_until, min(external_until, now + span))
        return restored

    def free_at(self, amount: int, now: float) -> float:
        """The earliest time ``amount`` units fit, if nothing else is admitted meanwhile."""
        if amount > self.limit:
            return INFINITY
        paced = self.theoretical_arrival - self.tolerance
        here = max(paced, self._log_free_at(amount, now))
        if here <= now and self.fleet is not None and self.fleet.available(now) < amount:
            # Redis away (share): when this host's share has room; else infinity: the
            # fleet's worker borrows and wakes the queue when it has (or Redis is back)
            return self.fleet.free_at(amount, now)
        return here

    def _log_free_at(self, amount: int, now: float) -> float:
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
        return INFINITY

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

    def describe_pace(self) -> str:
        """``1 request per 0.1 s`` or ``3333 tokens per s`` (a paced window's rate)."""
        if self.unit == "requests":
            return f"1 request per {self.interval:.3g} s"
        return f"{self.limit / self.window_s:.4g} tokens per s"

    def explain(self, gate: Gate, amount: int, now: float) -> str:
        """Why ``amount`` units do not fit now, for a person: the limit, what is used, and
        when room comes (``app gate app:x allows 3 requests per 60 s; 3 used in the last
        60 s; next free in 14.2 s``)."""
        free_in = max(0.0, self.free_at(amount, now) - now)
        when = "never (larger than the limit)" if free_in == INFINITY else f"in {free_in:.1f} s"
        used = self.usage(now)
        fleet = self.fleet
        if fleet is not None and self.fits_here(amount, now) and fleet.available(now) < amount:
            state = (
                "borrowing from Redis"
                if fleet.mode == "fleet"
                else f"Redis away, this host's {fleet.mode} of it"
            )
            return (
                f"{gate.scope} gate {gate.name} allows {self.describe()} across the fleet; "
                f"this host holds {fleet.available(now)} of it ({state}; the fleet used "
                f"{fleet.fleet_used} when last seen)"
            )
        if used + amount <= self.limit:  # the log has room: the pace holds it
            return (
                f"{gate.scope} gate {gate.name} is paced: it spreads {self.describe()} as "
                f"{self.describe_pace()}; {used} used in the last {self.window_s:g} s; "
                f"next free {when}"
            )
        provider = (
            f" (the provider says {max(0, self.limit - self.external)} left)"
            if now < self.external_until and self.external
            else ""
        )
        return (
            f"{gate.scope} gate {gate.name} allows {self.describe()}; {used} used in the "
            f"last {self.window_s:g} s{provider}; next free {when}"
        )


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
        self.paused_until = -INFINITY

    def window(self, unit: Unit) -> SlidingWindow | None:
        """The shortest window of ``unit``, if any."""
        found = [w for w in self.windows if w.unit == unit]
        return min(found, key=lambda w: w.window_s) if found else None


Blocker = SlidingWindow | Gate  # a window short of capacity, or a gate paused or full


@dataclass(slots=True)
class Demand:
    """What one request needs: an admission on each gate, ``tokens`` on token windows.

    ``least_tokens`` is set when ``tokens`` is only an upper bound of what the provider counts
    (an embedding request's inputs at their UTF-8 bytes): the fewest it counts, its estimate
    from the characters (OpenAI; the sim). A bound past a token window's whole limit then takes
    the whole window (the request waits until the window is empty and goes alone), unless even
    ``least_tokens`` is past it; and a window that keeps what was reserved keeps this much at
    least, beside the real usage (:meth:`Reservation.settle`), not the bound."""

    gates: tuple[Gate, ...]
    tokens: int
    least_tokens: int | None = None

    def amount(self, window: SlidingWindow) -> int:
        """Units this demand takes on ``window``."""
        if window.unit == "requests":
            return 1
        tokens = self.tokens
        if tokens <= window.limit or self.least_tokens is None:
            return tokens
        return window.limit if self.least_tokens <= window.limit else tokens

    def never_fits(self) -> str | None:
        """Why this demand can never be admitted (it exceeds a limit outright), or None."""
        for gate in self.gates:
            for window in gate.windows:
                amount = self.amount(window)
                if amount > window.limit:
                    least = self.least_tokens if window.unit == "tokens" else None
                    needs = amount if least is None else f"at least {least}"
                    return (
                        f"the request needs {needs} {window.unit} but gate "
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

    def explain(self, now: float) -> list[str]:
        """Why this demand cannot be admitted now, one sentence per gate or window short."""
        reasons = []
        for gate in self.gates:
            if gate.paused_until > now:
                reasons.append(
                    f"{gate.scope} gate {gate.name} is paused by its provider (a 429, or "
                    f"rate-limit headers saying none is left) for {gate.paused_until - now:.1f} "
                    "s more"
                )
            if gate.max_in_flight is not None and gate.in_flight >= gate.max_in_flight:
                reasons.append(
                    f"{gate.scope} gate {gate.name} has {gate.in_flight} of its "
                    f"{gate.max_in_flight} requests in flight"
                )
            for window in gate.windows:
                amount = self.amount(window)
                if not window.fits(amount, now):
                    reasons.append(window.explain(gate, amount, now))
        return reasons

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

    __slots__ = (
        "_admissions",
        "_gates",
        "admitted_at",
        "kept_tokens",
        "pending",
        "sent_at",
        "settled",
        "tokens",
    )

    def __init__(self, demand: Demand, now: float, *, pending: bool = False) -> None:
        """Admit ``demand`` now; ``pending``: its request leaves later (:meth:`sent`), and
        stays counted until then however long that takes."""
        self.tokens = demand.tokens
        self.kept_tokens = demand.tokens if demand.least_tokens is None else demand.least_tokens
        """What a window that keeps what was reserved keeps at least: what the provider
        counted when the request arrived (see :class:`Demand`)."""
        self.admitted_at = now
        self.pending = pending
        self.sent_at: float | None = None
        self._gates = demand.gates
        self._admissions: list[tuple[SlidingWindow, Admission]] = []
        for gate in demand.gates:
            gate.in_flight += 1
            for window in gate.windows:
                admission = window.admit(demand.amount(window), now, pending)
                self._admissions.append((window, admission))
        self.settled = False

    def sent(self, now: float) -> None:
        """The request leaves the gates now (for the provider call, or to a permit's
        holder): its admissions count from now (:meth:`SlidingWindow.retime`)."""
        if now == self.sent_at:
            return
        self.sent_at = now
        self.pending = False
        admissions = self._admissions
        for index, (window, admission) in enumerate(admissions):
            if now <= admission.time and not admission.pending:
                continue
            moved = window.retime(admission, now)
            if moved is not admission:
                admissions[index] = (window, moved)

    def settle(self, tokens_used: int | None) -> None:
        """Return unused reserved tokens (or charge what went over) and free the in-flight
        slot. ``None`` keeps the reservation as it was. Idempotent."""
        if self.settled:
            return
        self.settled = True
        for gate in self._gates:
            gate.in_flight -= 1
        if self.pending:
            self._no_longer_pending()
        if tokens_used is None:
            return
        used = max(0, tokens_used)
        kept = max(used, self.kept_tokens)
        for window, admission in self._admissions:
            if window.unit != "tokens":
                continue
            amount = used if window.refunds else kept  # one that keeps charges more, not less
            if amount != admission.amount:
                window.resize(admission, amount)

    def cancel(self) -> None:
        """Undo the admission entirely (the request never reached the provider): settle it as
        it was, then give back every unit it took."""
        if self.settled:
            return
        self.settle(None)
        for window, admission in self._admissions:
            window.resize(admission, 0)

    def _no_longer_pending(self) -> None:
        """Its request will not leave after all (settled or cancelled first): its admissions
        expire as any other."""
        self.pending = False
        for _, admission in self._admissions:
            admission.pending = False
