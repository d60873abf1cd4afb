"""The fleet side of budgets: each host *holds* part of every fleet budget, and reserves its
requests' maximum costs locally within what it holds (no round trip per request).

In Redis a budget of one period has, per host, what that host has spent (its own total, from
its own ledger: the truth for its rows) and what it holds; the fleet may never have
``Σ (spent + held) > limit``. Only ``budget_borrow.lua`` raises a host's ``spent + held``, and
only within the limit, for all of a request's budgets at once; ``budget_sync.lua`` pushes the
host's new spent (after requests settle) and gives back what it no longer needs, never
raising ``spent + held``. Locally a request is admitted while this host's
``spent + reserved + its maximum cost ≤ spent + held`` as Redis has them
(:meth:`FleetBudget.fits`): so the fleet's real spend plus every host's reservations in
flight never pass the limit.

Totals are absolute and each host writes only its own, one write at a time: a write sent
twice, or replayed after an outage, counts once (idempotence needs no request ids, so no key
per request). After Redis restarted empty each host puts back its spent and what it held
(*restore*), with ghosts of the other hosts it last knew of, which count until those hosts
put back their own.

Every amount is counted up to :data:`~.spend.MAX_NANO` (a billion USD), limits too
(:func:`~.spend.to_nano`): a figure past it, infinite or NaN counts as that much, and fills the
budget. A field of another host that holds no such amount (a hash damaged or edited by hand)
counts as that much too, in the scripts themselves: the hosts are refused while it is there,
and the refusal names the key and the field (:class:`FleetBudgetShort`).

**Redis unreachable**: a host keeps reserving within what it already holds, and refuses
beyond it (fail closed); what it holds stays counted by the fleet until it syncs again, so it
is never spent twice. A host that never comes back keeps its hold counted until the period
ends (restarting it with the same host name gives it back).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc

from quotad.daemon.cluster.link import MALFORMED, Link, LinkDown, Reply
from quotad.daemon.cluster.spend import MAX_USD, NANO, FleetSpend, to_nano

log = logging.getLogger("quotad.cluster")

MAX_DAMAGED_CHARS: Final = 200
"""The most of a damaged field (``field=value``) a budget keeps to name it, as the scripts cut
it (``_budget.lua``)."""

AHEAD_S: Final = 2.0
"""A host holds beyond its requests in flight what it reserved over about this long."""
CONTENDED_S: Final = 2.0
"""After a host is refused, every host keeps no spare hold for this long."""
PERIOD_TTL_S: Final = {"day": 3 * 86400, "month": 40 * 86400}
SYNC_COALESCE_S: Final = 0.02


class FleetBudgetShort(Exception):
    """The fleet cannot give this host more of a budget: spending it would pass the limit."""

    def __init__(self, budget: FleetBudget, room_usd: float, others_usd: float) -> None:
        self.budget = budget
        self.room_usd = room_usd
        self.others_usd = others_usd
        super().__init__(
            f"fleet budget {budget.scope} {budget.period} {budget.label}: other hosts have "
            f"spent or hold {others_usd:.6g} USD of {budget.limit_usd:.6g} USD; this host can "
            f"hold {max(0.0, room_usd):.6g} USD more{budget.damaged_note()}"
        )


@dataclass(slots=True, eq=False)
class FleetBudget:
    """One budget of one period, from this host's side."""

    scope: str
    period: str
    label: str
    limit_usd: float
    spent_acked: int = 0
    """This host's spent in Redis (nano-USD), as last acknowledged."""
    held_acked: int = 0
    pending: int | None = None
    """``spent + held`` a sync in flight may leave (the lower it is, the sooner it counts)."""
    fleet_spent: int = 0
    fleet_held: int = 0
    heard_at: float = -math.inf
    """When (our monotonic clock) ``fleet_spent`` and ``fleet_held`` were last heard from
    Redis: the reply of a borrow or a sync."""
    contended_until: float = -math.inf
    others: dict[str, int] = field(default_factory=dict)
    """Each other host's ``spent + held`` (nano-USD) as last seen."""
    reserved_rate: float = 0.0
    rate_at: float = -math.inf
    damaged: str = ""
    """A field of another host in this budget's hash that holds no amount (``field=value``,
    as the last borrow or sync saw it; counted as a billion USD), or ""."""
    key: str = ""
    """The budget's key in Redis (to name it)."""

    def damaged_note(self) -> str:
        """What a refusal says of :attr:`damaged` ("" when there is none)."""
        if not self.damaged:
            return ""
        field, _, value = self.damaged.partition("=")
        return (
            f"; Redis key {self.key} field {field!r} holds {value!r}, which is no amount (no "
            "quotad writes one: a hash damaged or edited by hand) and counts as the whole "
            "limit until its host pushes its totals again, or it is deleted "
            f"(`redis-cli HDEL {shlex.quote(self.key)} {shlex.quote(field)}`)"
        )

    @property
    def key_parts(self) -> tuple[str, str, str]:
        """(scope, period, label)."""
        return self.scope, self.period, self.label

    def capacity(self) -> int:
        """What this host may have spent plus reserved (nano-USD), as Redis counts it."""
        combined = self.spent_acked + self.held_acked
        return combined if self.pending is None else min(combined, self.pending)

    def fits(self, spent_usd: float, reserved_usd: float, cost_usd: float) -> bool:
        """Whether this host may reserve ``cost_usd`` more now, beside what it has spent and
        reserved this period, within what it holds."""
        return to_nano(spent_usd) + to_nano(reserved_usd) + to_nano(cost_usd) <= self.capacity()

    def note_reserved(self, cost_usd: float, now: float) -> None:
        """A request reserved ``cost_usd``: the rate a spare hold is sized from."""
        decay = math.exp(-max(0.0, now - self.rate_at) / AHEAD_S) if self.rate_at > -math.inf else 0
        self.reserved_rate = self.reserved_rate * decay + cost_usd / AHEAD_S
        self.rate_at = now

    def spare(self, now: float, hosts: int) -> int:
        """What to hold beyond requests in flight: about :data:`AHEAD_S` of recent
        reservations, within half of this host's share of what the fleet has left, and none
        while some host is refused."""
        if now < self.contended_until or self.rate_at == -math.inf:
            return 0
        decay = math.exp(-max(0.0, now - self.rate_at) / AHEAD_S)
        ahead = to_nano(self.reserved_rate * decay * AHEAD_S)
        left = to_nano(self.limit_usd) - self.fleet_spent - self.fleet_held
        return max(0, min(ahead, left // (2 * max(1, hosts))))


LocalState = Callable[[FleetBudget], tuple[float, float]]
"""``(spent, reserved)`` in USD of the local budget a fleet budget mirrors, this period."""


class FleetBudgets:
    """This host's fleet budgets, their writes to Redis (one at a time) and spend totals."""

    def __init__(self, link: Link, local_state: LocalState) -> None:
        self.link = link
        self.clock = link.clock
        self.local_state = local_state
        self.budgets: dict[tuple[str, str, str], FleetBudget] = {}
        self.spend = FleetSpend(link.host)
        self._lock = anyio.Lock()
        self._dirty = anyio.Event()
        self.refresh: Callable[[], None] | None = None
        """Called before each sync: registers (:meth:`budget`) every configured budget for
        the current day and month, so that a host's spent is pushed before it needs to
        borrow (other hosts must count it from the start)."""
        link.add_resyncer(self._resync)

    def budget(self, scope: str, period: str, label: str, limit_usd: float) -> FleetBudget:
        """The fleet budget of ``scope`` (``global`` or an app) for ``period`` ``label``; a
        new label (a new day or month) drops the older ones of that scope and period."""
        key = (scope, period, label)
        budget = self.budgets.get(key)
        if budget is None:
            for old in [k for k in self.budgets if k[:2] == (scope, period)]:
                del self.budgets[old]
            budget = self.budgets[key] = FleetBudget(scope, period, label, limit_usd)
            budget.key = self.link.keys.budget(*key)
        elif budget.limit_usd == limit_usd:
            return budget
        budget.limit_usd = limit_usd
        if limit_usd > MAX_USD:
            log.warning(
                "fleet budget %s %s %s: its limit, %g USD, is past the most the fleet counts: "
                "it holds at %g USD across the fleet",
                scope,
                period,
                label,
                limit_usd,
                MAX_USD,
            )
        return budget

    def changed(self) -> None:
        """Spent or reserved changed (a request settled): sync soon."""
        self._dirty.set()

    # ------------------------------------------------------------------ borrowing

    async def borrow(self, budgets: list[FleetBudget], cost_usd: float) -> None:
        """Hold enough of every one of ``budgets`` for a request of at most ``cost_usd``
        beside what this host has spent and reserved, all or none. Returns when they fit;
        :class:`FleetBudgetShort` when the fleet has not enough left; :class:`LinkDown`
        when Redis cannot be asked (then the host has only what it holds)."""
        async with self._lock:
            now = self.clock.monotonic()
            states = [self.local_state(budget) for budget in budgets]
            if all(b.fits(s, r, cost_usd) for b, (s, r) in zip(budgets, states, strict=True)):
                return
            if not self.link.usable:
                raise LinkDown(self.link.reason)
            hosts = self.link.hosts_seen()
            keys = [self.link.keys.epoch]
            args: list[Any] = [self.link.epoch or "", self.link.host, int(CONTENDED_S * 1e6)]
            args.append(len(budgets))
            for budget, (spent, reserved) in zip(budgets, states, strict=True):
                keys.append(self.link.keys.budget(*budget.key_parts))
                min_hold = to_nano(reserved) + to_nano(cost_usd)
                args += [
                    to_nano(budget.limit_usd),
                    to_nano(spent),
                    min_hold,
                    min_hold + budget.spare(now, hosts),
                    PERIOD_TTL_S.get(budget.period, 40 * 86400),
                ]
            reply = await self.link.call("budget_borrow", keys, args)
            try:
                self._apply_borrow(reply, budgets, states, now)
            except MALFORMED as error:
                raise self.link.malformed("budget_borrow", error) from None

    def _apply_borrow(
        self,
        reply: Reply,
        budgets: list[FleetBudget],
        states: list[tuple[float, float]],
        now: float,
    ) -> None:
        status = _text(reply.value[0])
        self.link.sample_time(int(reply.value[1]), reply)
        if status == "epoch":
            self.link.epoch_mismatch()
            raise LinkDown("Redis lost the fleet's state; re-syncing")
        if status == "resync":
            raise LinkDown(
                "the fleet is re-syncing (a host back from an outage, or Redis restarted empty)"
            )
        if status == "short":
            budget = budgets[int(reply.value[2]) - 1]
            budget.contended_until = now + CONTENDED_S
            self._note_damaged(budget, reply.value[5])
            raise FleetBudgetShort(budget, int(reply.value[3]) / NANO, int(reply.value[4]) / NANO)
        for budget, (spent, _), figures in zip(budgets, states, reply.value[2], strict=True):
            budget.spent_acked = to_nano(spent)
            self._apply(budget, figures, reply)

    def _apply(self, budget: FleetBudget, figures: Any, reply: Reply) -> None:
        budget.held_acked = int(figures[0])
        budget.fleet_spent = int(figures[1])
        budget.fleet_held = int(figures[2])
        budget.heard_at = reply.received
        contended = int(figures[3])
        if contended:
            budget.contended_until = max(budget.contended_until, self.link.time.to_local(contended))
        flat = figures[4]
        budget.others = {
            _text(flat[i])[:128]: int(flat[i + 1]) for i in range(0, min(len(flat), 2000), 2)
        }
        self._note_damaged(budget, figures[5])

    @staticmethod
    def _note_damaged(budget: FleetBudget, field: Any) -> None:
        """What a script says of a field that holds no amount (logged when it is new), cut as
        the script cuts it (:data:`MAX_DAMAGED_CHARS`): a reply that is not the script's may
        hold any length, and it is told in every refusal and log line."""
        damaged = _text(field)[:MAX_DAMAGED_CHARS]
        if damaged and damaged != budget.damaged:
            budget.damaged = damaged
            log.warning(
                "fleet budget %s %s %s%s",
                budget.scope,
                budget.period,
                budget.label,
                budget.damaged_note(),
            )
        budget.damaged = damaged

    # ------------------------------------------------------------------ syncing

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sync when something changed (coalesced), and at least every heartbeat."""
        task_status.started()
        while True:
            with anyio.move_on_after(self.link.settings.heartbeat_s):
                await self._dirty.wait()
            await anyio.sleep(SYNC_COALESCE_S)
            self._dirty = anyio.Event()
            if self.link.usable and (self.budgets or self.spend.dirty):
                with contextlib.suppress(LinkDown):
                    await self.sync()

    async def sync(self, *, restore: bool = False) -> None:
        """Push this host's spent, the hold it still needs, and its spend per day. With
        ``restore`` (after Redis restarted empty) put back what it held, with ghosts of the
        other hosts it knew of, and all its spend days."""
        async with self._lock:
            if self.refresh is not None:
                self.refresh()
            now = self.clock.monotonic()
            hosts = self.link.hosts_seen()
            budgets = list(self.budgets.values())
            states = [self.local_state(budget) for budget in budgets]
            keys: list[str] = []
            args: list[Any] = [self.link.host, int(restore), len(budgets)]
            targets = []
            for budget, (spent, reserved) in zip(budgets, states, strict=True):
                keys.append(self.link.keys.budget(*budget.key_parts))
                spent_nano = to_nano(spent)
                if restore:
                    held = max(budget.capacity() - spent_nano, to_nano(reserved))
                    ghosts = list(budget.others.items())
                else:
                    held = to_nano(reserved) + budget.spare(now, hosts)
                    ghosts = []
                    budget.pending = min(budget.capacity(), spent_nano + held)
                targets.append(spent_nano)
                args += [spent_nano, held, PERIOD_TTL_S.get(budget.period, 40 * 86400)]
                args.append(len(ghosts))
                for host, combined in ghosts:
                    args += [host, combined]
            days = self.spend.fields(everything=restore)
            for day, fields in days.items():
                keys.append(self.link.keys.spend_day(day))
                args += [self.spend.ttl_s, len(fields)]
                for name, value in fields:
                    args += [name, value]
            try:
                reply = await self.link.call("budget_sync", keys, args)
            except LinkDown:
                for budget in budgets:
                    budget.pending = None
                self.spend.unsent(days)
                raise
            try:
                self.link.sample_time(int(reply.value[0]), reply)
                for budget, spent, figures in zip(budgets, targets, reply.value[1], strict=True):
                    budget.pending = None
                    budget.spent_acked = spent
                    self._apply(budget, figures, reply)
            except MALFORMED as error:
                for budget in budgets:
                    budget.pending = None
                raise self.link.malformed("budget_sync", error) from None

    async def _resync(self, everything: bool) -> None:
        await self.sync(restore=everything)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
