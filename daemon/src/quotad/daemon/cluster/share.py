"""What one host may admit on a fleet window while Redis is away (``on_unreachable =
"share"``), from what it knew when Redis went away: a :class:`ShareStock`. Pure: times are
passed in.

**Why not the fleet's last snapshot.** Up to the moment Redis died, other hosts may have
borrowed any room that had freed in the fleet's log (its entries leave, and leases are
returned early, all the time), and what they borrowed stays counted by the provider for up
to a lease and a span. A snapshot, a heartbeat old, bounds none of that: a host that shared
"the room the snapshot left" could admit into room another host had just borrowed, and the
fleet went over its limit (a sim 429 in test_cluster_gates.py's Valkey-killed test).

**What holds instead.** A host knows its *own* entries as Redis last confirmed them (an
entry with a put or a borrow in flight may be in either version, so it frees nothing). Those
still in the log when Redis died were part of a log that never held more than the limit, and
each one that leaves after that frees room nobody else can take while Redis is away. So:

- until every entry made before the outage has surely left (a lease, a span and a grid step
  after the host noticed: :attr:`ShareStock.blind_until`), the host admits, beyond what its
  open leases still hold, only into its own entries that have left since
  (:meth:`ShareStock.freed`), and never more than its share;
- after that, its share: ``floor(limit * (1 - margin) / hosts seen)`` within any span.

Before, the hosts' entries and their admissions while away together stay within what the log
held when Redis died: at most the limit. After, only admissions made while away are left,
each host's within its share (the cap before makes the change of rule safe). A host alone
(one host seen) knows the whole log: it admits ``limit * (1 - margin)`` less what its own
entries may still hold (any version, and a borrow that was in flight).

This assumes, as ``share`` does, that every host lost Redis together, that the hosts seen are
the fleet, and that every host has the same ``cluster.lease_s`` and ``gates.guard_s``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from quotad.daemon.cluster.server_time import CLOCK_SLACK_S, ServerTime

Entry = tuple[str, int, int]
"""``(entry, amount, expiry µs)``: one version of one of this host's entries in the log."""


@dataclass(frozen=True, slots=True)
class ShareStock:
    """A host's own entries in one window of the fleet's log when Redis went away."""

    blind_until: float = -math.inf
    """Until when (local time) entries made before the outage may still count."""
    freed_at: list[float] = field(default_factory=list)
    """When each entry surely in the log at the outage has surely left, in order..."""
    freed_sums: list[int] = field(default_factory=lambda: [0])
    """...and the units left by then (running sums, one longer)."""
    own_at: list[float] = field(default_factory=list)
    """When each entry, in any version Redis may hold, has surely left, in order..."""
    own_sums: list[int] = field(default_factory=lambda: [0])
    """...and the units left by then."""

    @classmethod
    def taken(
        cls,
        now: float,
        time: ServerTime,
        last_expiry_us: int,
        confirmed: Iterable[Entry],
        in_flight: Iterable[Entry],
        borrowing: int,
    ) -> ShareStock:
        """The stock at local time ``now`` (Redis went away at or before it): ``confirmed``,
        this host's entries as Redis last confirmed them; ``in_flight``, versions of them
        not confirmed (puts not sent, or sent and not answered); ``borrowing``, units of a
        borrow in flight; ``last_expiry_us``: the latest an entry made by ``now`` may
        expire, counted from ``now``'s server time (a lease, a span, a grid step)."""
        if time.known:
            blind_until = time.to_local(time.to_server_us(now) + last_expiry_us)
        else:
            blind_until = now + last_expiry_us / 1e6 + CLOCK_SLACK_S
        confirmed = list(confirmed)
        in_flight = list(in_flight)
        uncertain = {entry for entry, _, _ in in_flight}
        freed = sorted(
            (time.to_local(expiry_us), amount)
            for entry, amount, expiry_us in confirmed
            if entry not in uncertain and amount > 0 and time.to_local_early(expiry_us) > now
        )
        versions: dict[str, tuple[int, int]] = {}
        for entry, amount, expiry_us in itertools.chain(confirmed, in_flight):
            most, latest = versions.get(entry, (0, 0))
            versions[entry] = (max(most, amount), max(latest, expiry_us))
        own = sorted((time.to_local(expiry_us), amount) for amount, expiry_us in versions.values())
        if borrowing:  # granted or not, it has left by then
            own.append((blind_until, borrowing))
        return cls(
            blind_until,
            [at for at, _ in freed],
            [0, *itertools.accumulate(amount for _, amount in freed)],
            [at for at, _ in own],
            [0, *itertools.accumulate(amount for _, amount in own)],
        )

    def freed(self, at: float) -> int:
        """Units of entries surely in the log at the outage that have surely left it by
        local time ``at`` (room nobody else can take meanwhile)."""
        return self.freed_sums[bisect.bisect_right(self.freed_at, at)]

    def own_in_log(self, at: float) -> int:
        """The most units of this host's entries that can still be in the log at ``at``."""
        sums = self.own_sums
        return sums[-1] - sums[bisect.bisect_right(self.own_at, at)]

    def allowance(self, limit: int, margin: float, hosts: int, at: float) -> int:
        """How many units the host may have admitted on its own (beyond its leases) within
        the span ending at local time ``at``, among ``hosts`` (see the module docstring)."""
        allowed = limit * (1.0 - margin)
        if hosts == 1:  # alone: its own entries are the whole log
            return math.floor(allowed - self.own_in_log(at))
        share = math.floor(allowed / hosts)
        if at >= self.blind_until:
            return share
        return min(share, self.freed(at))

    def changes_after(self, now: float) -> Iterator[float]:
        """The times after ``now`` at which :meth:`allowance` may grow."""
        yield from (at for at in self.freed_at if at > now)
        yield from (at for at in self.own_at if at > now)
        if self.blind_until > now:
            yield self.blind_until
