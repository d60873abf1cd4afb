"""This host's side of one fleet-wide window: what it holds of the limit, and what it may
admit now. Pure: time is passed in, the server's clock comes from a :class:`ServerTime`,
and what must reach Redis comes out as puts (:data:`Put`) for ``settle.lua``.

**Leases.** The host borrows a slice of the window (``borrow.lua``) as an entry in the
fleet's log that expires ``lease_s + span`` after the grant: as if all of it were admitted at
the end of the lease, so every admission the host makes from it during the lease is counted
for its whole span. Admissions are then local (:meth:`FleetWindow.take`). A lease ends at
its deadline, when it is used up, or when it sits idle; its entry is then rewritten to what
was really used, expiring a span after the last admission from it (into a *bucket* of this
host's closed admissions, on a grid of span/256, rounded up): nothing is counted longer
than it must be, so borrowing ahead wastes no capacity. A lease's deadline is measured from
when the borrow was *sent* (the grant happened later), so it never outlives the lease the
server granted.

**Settling.** A reservation settled for fewer tokens gives them back: to its lease while that
is open (the host may admit them again within the lease: they are still counted), else to
its bucket in Redis.

**Redis unreachable**: ``share`` admits, beyond what open leases still hold, what
:class:`~quotad.daemon.cluster.share.ShareStock` allows from this host's own entries as Redis
last confirmed them (:attr:`FleetWindow.confirmed`; puts and borrows in flight are tracked
for it) and its share; ``closed`` only what open leases still hold. A host that never
reached Redis admits nothing on fleet windows. Admissions made meanwhile are pushed into the
fleet's log when Redis is back.

The records kept (:class:`~.window_records.Lease`, ``Bucket``, ``OwnAdmission``, ``Taken``)
live in :mod:`.window_records`.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

from quotad.daemon.cluster.server_time import ServerTime
from quotad.daemon.cluster.share import ShareStock
from quotad.daemon.cluster.window_records import Bucket, Lease, OwnAdmission, Part, Taken

Mode = Literal["fleet", "share", "closed"]
Put = tuple[str, int, int]
"""``(entry, amount, expiry µs)``: an entry of this host as it now is (amount 0: gone)."""

GRID_STEPS: Final = 256
RATE_TAU_S: Final = 1.0
SLICE_SHARE: Final = 0.5
"""At most this share of a limit, divided among the hosts seen, is borrowed at once."""
INFINITY: Final = math.inf


class FleetWindow:
    """One window of a gate, shared by the fleet, from this host's side."""

    def __init__(
        self,
        name: str,
        limit: int,
        span_s: float,
        lease_s: float,
        *,
        host: str,
        time: ServerTime,
        margin: float = 0.1,
    ) -> None:
        self.name = name
        self.limit = limit
        self.span_s = span_s
        self.span_us = math.ceil(span_s * 1e6)
        self.grid_us = max(1000, self.span_us // GRID_STEPS)
        self.lease_s = lease_s
        self.lease_us = int(lease_s * 1e6)
        self.idle_s = lease_s / 4
        self.host = host
        self.time = time
        self.margin = margin
        self.mode: Mode = "closed"
        self.hosts = 0
        self.leases: list[Lease] = []
        self._held = 0
        """What open leases still hold, deadlines aside: Σ max(0, granted - used)."""
        self._first_deadline = INFINITY
        """The earliest deadline of a lease that still holds something: before it,
        :attr:`_held` is :meth:`held` (no walk of the leases per admission)."""
        self.buckets: dict[str, Bucket] = {}
        self.degraded: deque[OwnAdmission] = deque()
        """Admissions made while Redis was unreachable, not yet pushed, oldest first."""
        self.own_live = 0
        """The units of :attr:`degraded` still inside their span."""
        self.puts: dict[str, Put] = {}
        """Puts not sent yet, the latest per entry."""
        self.sending: dict[str, Put] = {}
        """Puts sent and not yet acknowledged (Redis may or may not have applied them)."""
        self.confirmed: dict[str, tuple[int, int]] = {}
        """This host's entries as Redis last confirmed them: entry -> (amount, expiry µs)."""
        self.borrowing = 0
        """Units asked for by a borrow in flight (Redis may grant them and the reply be lost)."""
        self.stock = ShareStock()
        """``share``: what this host knew of its entries in the log when Redis went away."""
        self.fleet_used = 0
        self.external = 0
        self._rate = 0.0
        self._rate_at = -INFINITY
        self.on_low: Callable[[FleetWindow], None] | None = None
        """Called after an admission leaves less than half a lease's worth held."""
        self.on_used_up: Callable[[], None] | None = None
        """Called when an admission uses a lease up (it can be closed now: a used-up lease
        left open would be walked past by every admission until the next flush)."""

    def set_limit(self, limit: int, span_s: float) -> None:
        """A reloaded limit or guard: applies to what is borrowed and admitted from now on
        (entries already in the fleet's log keep the expiry they were given)."""
        self.limit = limit
        self.span_s = span_s
        self.span_us = math.ceil(span_s * 1e6)
        self.grid_us = max(1000, self.span_us // GRID_STEPS)

    # ------------------------------------------------------------------ capacity

    def held(self, now: float) -> int:
        """Units this host may still admit from its open leases."""
        if now < self._first_deadline:
            return self._held
        return sum(
            lease.granted - lease.used
            for lease in self.leases
            if lease.deadline > now and lease.granted > lease.used
        )

    def _recount(self) -> None:
        """:attr:`_held` and :attr:`_first_deadline` from the leases (a lease closed)."""
        self._held = 0
        self._first_deadline = INFINITY
        for lease in self.leases:
            if lease.granted > lease.used:
                self._held += lease.granted - lease.used
                self._first_deadline = min(self._first_deadline, lease.deadline)

    @property
    def blind_until(self) -> float:
        """``share``: until when entries made before Redis went away may still count."""
        return self.stock.blind_until

    def share_free(self, now: float) -> int:
        """``share`` mode: what this host may admit now beyond its leases."""
        if self.mode != "share" or self.hosts <= 0:
            return 0
        self._expire_own(now)
        allowance = self.stock.allowance(self.limit, self.margin, self.hosts, now)
        return max(0, allowance - self.own_live)

    def _expire_own(self, now: float) -> None:
        degraded = self.degraded
        while degraded and degraded[0].time + self.span_s <= now:
            own = degraded.popleft()
            if own.live:
                own.live = False
                self.own_live -= own.amount

    def available(self, now: float) -> int:
        """Units this host may admit now without asking Redis."""
        return self.held(now) + self.share_free(now)

    def free_at(self, amount: int, now: float) -> float:
        """``share`` mode: the earliest time ``amount`` units fit this host's share, if it
        admits nothing meanwhile (its own admissions leave the span, its own entries of
        before leave the log, the time entries of before may count ends); infinity in the
        other modes, where a borrow's answer or Redis coming back says when (and what
        leases hold only ever shrinks)."""
        if self.mode != "share" or self.hosts <= 0:
            return INFINITY
        self._expire_own(now)
        leaving = [(own.time + self.span_s, own.amount) for own in self.degraded if own.live]
        leaving += [(at, 0) for at in self.stock.changes_after(now)]
        leaving.sort()
        own_live = self.own_live
        for moment, amount_leaving in leaving:
            own_live -= amount_leaving
            allowance = self.stock.allowance(self.limit, self.margin, self.hosts, moment)
            if allowance - own_live >= amount:
                return moment
        return INFINITY

    # ------------------------------------------------------------------ admissions

    def take(self, amount: int, now: float) -> Taken | None:
        """Admit ``amount`` units now from what this host holds, or None (nothing taken)."""
        taken = Taken()
        if amount <= 0:
            return taken
        rest = amount
        plan: list[tuple[Lease, int]] = []
        for lease in self.leases:
            if lease.deadline <= now or lease.granted <= lease.used:
                continue
            part = min(lease.granted - lease.used, rest)
            plan.append((lease, part))
            rest -= part
            if rest == 0:
                break
        if rest > 0 and self.share_free(now) < rest:
            return None
        used_up = False
        for lease, part in plan:
            lease.used += part
            lease.last_at = now
            self._held -= part
            taken.parts.append(Part(lease, part))
            used_up = used_up or lease.used >= lease.granted
        if used_up:
            self._recount()
            if self.on_used_up is not None:
                self.on_used_up()
        if rest > 0:
            own = OwnAdmission(now, rest)
            self.degraded.append(own)
            self.own_live += rest
            taken.parts.append(Part(own, rest))
        self._count(amount, now)
        if self.on_low is not None and self.mode == "fleet":
            ahead = self._rate * self.lease_s  # the rate just counted, at now
            if ahead >= 2 and self.held(now) < ahead / 2:
                self.on_low(self)
        return taken

    def resize(self, taken: Taken, amount: int, now: float) -> None:
        """Settle an admission to ``amount`` units: give back what it did not use (or count
        what it used beyond)."""
        change = max(0, amount) - taken.amount
        if change < 0:
            for part in reversed(taken.parts):
                back = min(part.amount, -change)
                part.amount -= back
                self._adjust(part.source, -back)
                change += back
                if change == 0:
                    break
        elif change > 0:
            if not taken.parts:  # nothing was taken (0 units): count the charge on its own
                own = OwnAdmission(now, 0, live=False)
                if self.time.known:
                    own.bucket = self._bucket(self.time.to_server_us(now) + self.span_us)
                else:
                    self.degraded.append(own)
                    own.live = True
                taken.parts.append(Part(own, 0))
            taken.parts[-1].amount += change
            self._adjust(taken.parts[-1].source, change)

    def retime(self, taken: Taken, now: float) -> None:
        """The request admitted as ``taken`` leaves for the provider only ``now`` (a woken
        waiter's task ran late): count its units until ``now`` + span. A part in a lease
        still open before its deadline is covered already (the lease counts for its span
        from its deadline; the bucket it closes into, from its last admission: now);
        any other part moves into a bucket (or, Redis never reached, an admission of its
        own) that leaves a span after ``now``."""
        for part in taken.parts:
            source = part.source
            if part.amount <= 0:
                continue
            if isinstance(source, Lease) and not source.closed and now <= source.deadline:
                source.last_at = max(source.last_at, now)
                continue
            if isinstance(source, OwnAdmission) and source.live and source.bucket is None:
                # admitted while Redis is away, not pushed yet: still this host's own, counted
                # in its share from now (behind it in the log, others may leave later than
                # they could: on the safe side)
                source.time = max(source.time, now)
                continue
            self._adjust(source, -part.amount)
            moved = OwnAdmission(now, 0, live=False)
            if self.mode == "fleet" and self.time.known:
                moved.bucket = self._bucket(self.time.to_server_us(now) + self.span_us)
            else:  # away: this host's own until it is pushed (counted in its share)
                moved.live = True
                self.degraded.append(moved)
            part.source = moved
            self._adjust(moved, part.amount)

    def _adjust(self, source: Lease | OwnAdmission, change: int) -> None:
        if isinstance(source, Lease):
            if source.bucket is not None:
                self._bucket_add(source.bucket, change)
            elif not source.closed:
                source.used += change
                if source.used > source.granted:  # counted beyond the slice: tell the fleet
                    source.granted = source.used
                    self.puts[source.entry] = (source.entry, source.used, source.expiry_us)
                self._recount()
        elif source.bucket is not None:
            self._bucket_add(source.bucket, change)
            if source.live:  # pushed in a re-sync window, still in the share
                source.amount += change
                self.own_live += change
        else:
            source.amount += change
            if source.live:
                self.own_live += change

    def _bucket_add(self, bucket: Bucket, change: int) -> None:
        bucket.amount = max(0, bucket.amount + change)
        self.puts[bucket.entry] = (bucket.entry, bucket.amount, bucket.expiry_us)

    def _bucket(self, expiry_us: int) -> Bucket:
        index = -(-expiry_us // self.grid_us)
        entry = f"c:{self.host}:{index}"
        bucket = self.buckets.get(entry)
        if bucket is None:
            expiry = index * self.grid_us
            bucket = self.buckets[entry] = Bucket(entry, expiry, self.time.to_local(expiry))
        return bucket

    def _count(self, amount: int, now: float) -> None:
        self._rate = self.rate(now) + amount / RATE_TAU_S
        self._rate_at = now

    def rate(self, now: float) -> float:
        """Units admitted per second here lately (exponentially weighted, over ~1 s)."""
        if self._rate_at == -INFINITY:
            return 0.0
        return self._rate * math.exp(-max(0.0, now - self._rate_at) / RATE_TAU_S)

    # ------------------------------------------------------------------ borrowing

    def want(self, need: int, now: float) -> int:
        """How much to ask for when ``need`` units are missing: what this host admits in a
        lease at its recent rate, within its share of :data:`SLICE_SHARE` of the limit."""
        ahead = math.ceil(self.rate(now) * self.lease_s)
        cap = math.floor(self.limit * SLICE_SHARE / max(1, self.hosts))
        return max(need, min(need + ahead, cap))

    def grant(self, entry: str, amount: int, sent: float, granted_us: int) -> None:
        """A borrow sent at local time ``sent`` was granted ``amount`` at server time
        ``granted_us``."""
        if amount <= 0:
            return
        expiry_us = granted_us + self.lease_us + self.span_us
        lease = Lease(entry, amount, sent, granted_us, expiry_us, sent + self.lease_s)
        self.leases.append(lease)
        self._held += amount
        self._first_deadline = min(self._first_deadline, lease.deadline)
        self.confirmed[entry] = (amount, expiry_us)

    def close_due(self, now: float) -> bool:
        """End leases past their deadline, used up, or idle; True when there are puts."""
        self.prune(now)
        for lease in list(self.leases):
            idle_since = max(lease.last_at, lease.sent_at)
            if (
                lease.deadline <= now
                or lease.used >= lease.granted
                or now - idle_since >= self.idle_s
            ):
                self._close(lease)
        return bool(self.puts)

    def _close(self, lease: Lease) -> None:
        lease.closed = True
        self.leases.remove(lease)
        self._recount()
        self.puts[lease.entry] = (lease.entry, 0, 0)
        if lease.used > 0:
            spent_s = min(max(0.0, lease.last_at - lease.sent_at), self.lease_s)
            bucket = self._bucket(lease.granted_us + int(spent_s * 1e6) + self.span_us + 1)
            lease.bucket = bucket
            self._bucket_add(bucket, lease.used)

    def next_due(self) -> float:
        """When :meth:`close_due` next has something to do."""
        when = INFINITY
        for lease in self.leases:
            when = min(when, lease.deadline, max(lease.last_at, lease.sent_at) + self.idle_s)
        return when

    def take_puts(self) -> list[Put]:
        """The puts to send now: in flight until :meth:`acknowledged` or :meth:`unsent`."""
        puts = list(self.puts.values())
        self.puts.clear()
        for put in puts:
            self.sending[put[0]] = put
        return puts

    def acknowledged(self, puts: list[Put]) -> None:
        """Redis applied ``puts``: this host's entries are now as they say."""
        for put in puts:
            entry, amount, expiry_us = put
            if self.sending.get(entry) is put:
                del self.sending[entry]
            if amount > 0:
                self.confirmed[entry] = (amount, expiry_us)
            else:
                self.confirmed.pop(entry, None)

    def unsent(self, puts: list[Put]) -> None:
        """Puts that may not have been applied: keep them to send again (newer ones of the
        same entry win; sending one twice is harmless, puts being absolute)."""
        for put in puts:
            if self.sending.get(put[0]) is put:
                del self.sending[put[0]]
            self.puts.setdefault(put[0], put)

    # ------------------------------------------------------------------ fleet state

    def set_mode(self, mode: Mode, hosts: int, now: float) -> None:
        """Borrow from the fleet (``fleet``), or fall back (``share`` / ``closed``) at local
        time ``now``. Entering ``share`` takes stock of this host's own entries in the log
        (see the module docstring); while it stays in ``share`` the hosts it divides by
        never go down (a Redis back empty knows only the hosts that came back yet). Back
        to ``fleet``, what was admitted meanwhile and not pushed yet (while the link
        re-synced, after its push) becomes puts."""
        if mode == "share":
            if self.mode != "share":
                self._enter_share(now)
            elif hosts < self.hosts:
                hosts = self.hosts
        elif mode == "fleet" and self.degraded and self.time.known:
            self._own_into_buckets(now)
        self.mode = mode
        self.hosts = hosts

    def set_hosts(self, hosts: int) -> None:
        """The hosts seen changed (a heartbeat, the mode unchanged): borrow within the new
        share of the limit; in ``share`` divide by no fewer hosts than before (as
        :meth:`set_mode`); ``closed`` divides nothing."""
        if self.mode == "fleet":
            self.hosts = hosts
        elif self.mode == "share":
            self.hosts = max(self.hosts, hosts)

    def _enter_share(self, now: float) -> None:
        """Redis went away at or before ``now`` (or this window started without it): take
        stock of this host's own entries in the log (an entry made by ``now`` expires at
        most a lease, a span and a grid step later: a bucket's expiry is rounded up)."""
        self.stock = ShareStock.taken(
            now,
            self.time,
            self.lease_us + self.span_us + self.grid_us,
            ((entry, amount, expiry_us) for entry, (amount, expiry_us) in self.confirmed.items()),
            itertools.chain(self.sending.values(), self.puts.values()),
            self.borrowing,
        )

    def apply_snapshot(self, used: int, external: int) -> None:
        """The fleet's usage of the window, and the part of it a provider's headers report
        beyond ours, as the last snapshot saw them (for status)."""
        self.fleet_used = used
        self.external = external

    def restore(self, everything: bool, now: float) -> list[Put]:
        """Puts that bring the fleet's log up to date after an outage: admissions made
        meanwhile (into buckets), and with ``everything`` (Redis restarted empty: it
        confirms none of this host's entries any more) every live entry of this host too.
        Pending puts are included. Still in ``share`` (a re-sync window), the admissions
        pushed still count in this host's share until they leave their span."""
        if everything:
            self.confirmed.clear()
        self._own_into_buckets(now, keep_counted=self.mode == "share")
        self.prune(now)
        if everything:
            for lease in self.leases:
                self.puts[lease.entry] = (lease.entry, lease.granted, lease.expiry_us)
            for bucket in self.buckets.values():
                self.puts[bucket.entry] = (bucket.entry, bucket.amount, bucket.expiry_us)
        return self.take_puts()

    def _own_into_buckets(self, now: float, *, keep_counted: bool = False) -> None:
        """Admissions made while Redis was away, still in their span, as puts into buckets
        leaving a span after each (from now on the fleet's log counts them); with
        ``keep_counted`` they stay in the share too (until they leave their span)."""
        self._expire_own(now)
        if keep_counted:
            for own in self.degraded:
                if own.live and own.bucket is None and own.amount > 0:
                    own.bucket = self._bucket(self.time.to_server_us(own.time) + self.span_us)
                    self._bucket_add(own.bucket, own.amount)
            return
        while self.degraded:
            own = self.degraded.popleft()
            if own.live:
                own.live = False
                self.own_live -= own.amount
            if own.amount <= 0 or own.bucket is not None:
                continue
            bucket = self._bucket(self.time.to_server_us(own.time) + self.span_us)
            own.bucket = bucket
            self._bucket_add(bucket, own.amount)

    def prune(self, now: float) -> None:
        """Forget buckets and confirmed entries that have surely left the window."""
        for entry in [e for e, b in self.buckets.items() if b.expires < now]:
            del self.buckets[entry]
        to_local = self.time.to_local
        for entry in [e for e, (_, x) in self.confirmed.items() if to_local(x) < now]:
            del self.confirmed[entry]
