"""The daemon's budgets held across the fleet (DESIGN §10, issue 15.5-6): the one place the
pipeline's budget step meets the fleet, built only when ``[cluster]`` is set.

The local :class:`~quotad.daemon.store.budgets.Budgets` still checks and reserves each
request on the event loop, in one step; a fleet adds one condition to that step: this host
must *hold* enough of each fleet budget (:class:`~.budgets.FleetBudget`: its own spent plus
reserved plus this request's maximum within what Redis lets it have). When it does, the
request is reserved locally with no round trip; when it does not, :meth:`SharedBudgets.reserve`
borrows for it (one script, all of the request's budgets at once, :class:`~.budgets.
FleetBudgets`), then checks and reserves again. So:

- the fleet's spend plus every host's reservations never pass a limit (each host reserves
  only within what it holds, and Redis lets the hosts hold no more than the limit);
- the fleet has not enough left → ``budget_exceeded`` naming the fleet's figures;
- Redis unreachable (down, cut off, restarting, not yet joined) → the host still serves
  requests that fit in what it already holds, and refuses the others with ``rate_limited``
  and a ``retry_after_s`` (*fail closed*: a budget is never spent twice);
- a fleet budget whose fleet-wide spent crosses ``alert_at`` is a ``budget_alert`` event on
  every host (once per period), beside the local alerts of this host's own spend;
- each finished request's ledger row adds to this host's spend per day, app, model and target
  and to what the guardrails found there (:class:`~.spend.FleetSpend`, loaded from the ledger
  at start) and asks for a sync, which pushes this host's absolute totals: replayed after an
  outage, or into a Redis restarted empty, they count once, so budgets are not reset (each
  host's ledger stays the truth).
- ``quotad status``, the TUI and ``/metrics`` show the fleet's figures of each budget as
  this host last heard them in its borrow and sync replies (no round trip on the status
  path), or this host's own, saying so, when it has not heard them freshly
  (:meth:`SharedBudgets.budget_status`).

Budgets are keyed in Redis by scope (``global``, or ``app:<name>``), period and period label:
the label is the local day or month in ``daemon.timezone``, which must be the same on every
host of a fleet.
"""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from typing import Final

import anyio
import anyio.abc

from quotad.daemon.cluster.budgets import FleetBudget, FleetBudgets, FleetBudgetShort
from quotad.daemon.cluster.link import EventSink, Link, LinkDown
from quotad.daemon.cluster.spend import KEPT_DAYS, NANO, fleet_report
from quotad.daemon.declared_names import DeclaredNames
from quotad.daemon.errors import RequestError
from quotad.daemon.guardrails.screening import decode_entities
from quotad.daemon.store.budgets import Budget, BudgetHold, Budgets, Calendar
from quotad.daemon.store.ledger import Ledger, LedgerRow
from quotad.daemon.store.spend import BLOCKED
from quotad.protocol.figures import usd
from quotad.protocol.messages import ANSWERED, BudgetStatus, SpendReply

log = logging.getLogger("quotad.cluster")

MAX_BORROWS: Final = 4
"""Borrows one request may make before it is refused (each is followed by the check, which
other requests of this host may have filled again meanwhile)."""
FRESH_HEARTBEATS: Final = 3
"""The fleet's figures of a budget are shown (status, TUI) while heard from Redis within this
many heartbeats (and a call's timeout): a connected host syncs its budgets every heartbeat."""


def fleet_scope(budget: Budget) -> str:
    """The scope of ``budget`` in the fleet's keys: ``global``, or ``app:<name>`` (told apart
    by the budget's name, ``global daily`` or ``app <name> daily``: an app may be called
    ``global``)."""
    return "global" if budget.name.startswith("global ") else f"app:{budget.scope}"


class SharedBudgets:
    """This host's budgets, checked against what it holds of the fleet's."""

    def __init__(
        self, link: Link, budgets: Budgets, ledger: Ledger, events: EventSink | None = None
    ) -> None:
        self.link = link
        self.events = events
        """Where a fleet budget crossing ``alert_at`` is told (the daemon's event log)."""
        self._alerted: set[tuple[str, str, str]] = set()
        self.budgets = budgets
        self.ledger = ledger
        self.calendar: Calendar = ledger.calendar
        self.fleet = FleetBudgets(link, self._local_state)
        self.fleet.refresh = self.refresh
        self._mirrors: dict[tuple[str, str, str], Budget] = {}
        """The local budget each fleet budget mirrors, by the fleet budget's key parts."""
        self._mirror_of: dict[Budget, FleetBudget] = {}
        """The fleet budget of each local budget (by identity; :meth:`refresh` forgets those
        a reload dropped)."""
        self.borrows = 0
        self.refused_short = 0
        self.refused_unreachable = 0

    def declare(self, names: DeclaredNames) -> None:
        """The config's names (at start and at each reload), whose spend is kept apart past
        the bound on keys a day (:data:`~.spend.MAX_KEYS_PER_DAY`)."""
        self.fleet.spend.declared = names

    async def load(self) -> None:
        """At start, before serving: this host's spend of the days the fleet keeps, from its
        ledger, and every budget of this day and month registered (pushed at the first sync,
        so the other hosts count this host's spend from the start)."""
        today = date.fromisoformat(self.calendar.day(self.link.clock.time()))
        since = (today - timedelta(days=KEPT_DAYS - 1)).isoformat()
        found = await self.ledger.daily_guardrails(since)
        self.fleet.spend.load(await self.ledger.daily_totals(since), found)
        self.refresh()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sync with the fleet (when something changed, and every heartbeat) until
        cancelled."""
        await self.fleet.run(task_status=task_status)

    # ------------------------------------------------------------------ step 2

    async def reserve(self, app: str, max_cost_usd: float, now: float) -> BudgetHold | None:
        """The pipeline's step 2 with a fleet: reserve ``max_cost_usd`` on ``app``'s budgets
        when this host holds enough of each (borrowing more from the fleet when it does not).
        ``budget_exceeded`` when a budget (this host's own figures, or the fleet's) has no
        room for it; ``rate_limited`` when this host holds too little and Redis cannot be
        asked for more."""
        for _ in range(MAX_BORROWS):
            local = self.budgets.check(app, max_cost_usd, now)  # budget_exceeded: this host's
            if not local:
                return None
            mirrors = [self._mirror(budget) for budget in local]
            if all(
                fleet.fits(budget.spent_usd, budget.reserved_usd, max_cost_usd)
                for fleet, budget in zip(mirrors, local, strict=True)
            ):
                moment = self.link.clock.monotonic()
                for fleet in mirrors:
                    fleet.note_reserved(max_cost_usd, moment)
                return self.budgets.hold(local, max_cost_usd)
            self.borrows += 1
            try:
                await self.fleet.borrow(mirrors, max_cost_usd)
            except FleetBudgetShort as short:
                self.refused_short += 1
                raise self._exceeded(short, local, max_cost_usd) from None
            except LinkDown as down:
                self.refused_unreachable += 1
                raise self._unreachable(str(down), max_cost_usd) from None
            now = self.link.clock.time()
        self.refused_short += 1
        raise RequestError(
            "rate_limited",
            f"the fleet's budgets are contended: this host could not keep a hold of "
            f"{usd(max_cost_usd)} for this request after {MAX_BORROWS} borrows; try again",
            retry_after_s=self.link.settings.heartbeat_s,
            details={"fleet": True, "host": self.link.host, "request_max_usd": max_cost_usd},
        )

    def _mirror(self, budget: Budget) -> FleetBudget:
        """The fleet budget of ``budget``'s scope, period and current label (cached per local
        budget until its label or limit changes, or a sync's :meth:`refresh`)."""
        cached = self._mirror_of.get(budget)
        if (
            cached is not None
            and cached.label == budget.period_label
            and cached.limit_usd == budget.limit_usd
        ):
            return cached
        key = (fleet_scope(budget), budget.period, budget.period_label)
        self._mirrors[key] = budget
        fleet = self._mirror_of[budget] = self.fleet.budget(*key, budget.limit_usd)
        return fleet

    def _exceeded(
        self, short: FleetBudgetShort, local: tuple[Budget, ...], max_cost_usd: float
    ) -> RequestError:
        fleet = short.budget
        budget = self._mirrors.get(fleet.key_parts) or local[0]
        others = short.others_usd
        return RequestError(
            "budget_exceeded",
            f"fleet budget {budget.name!r} ({budget.period} {fleet.label}) would be exceeded: "
            f"the other hosts have spent or hold {usd(others)}, this host has spent "
            f"{usd(budget.spent_usd)} + reserved {usd(budget.reserved_usd)}, this request up "
            f"to {usd(max_cost_usd)} > limit {usd(budget.limit_usd)}{fleet.damaged_note()}",
            details={
                "budget": budget.name,
                "scope": budget.scope,
                "period": budget.period,
                "fleet": True,
                "host": self.link.host,
                "others_usd": others,
                "spent_usd": budget.spent_usd,
                "reserved_usd": budget.reserved_usd,
                "request_max_usd": max_cost_usd,
                "limit_usd": budget.limit_usd,
            },
        )

    def _unreachable(self, reason: str, max_cost_usd: float) -> RequestError:
        retry_after = max(
            self.link.settings.heartbeat_s, self.link.resync_until - self.link.clock.monotonic()
        )
        return RequestError(
            "rate_limited",
            f"this host holds too little of the fleet's budget for this request (up to "
            f"{usd(max_cost_usd)}) and cannot borrow more: {reason}; budgets fail closed "
            "until the fleet's Redis answers",
            retry_after_s=round(retry_after, 3),
            details={"fleet": True, "host": self.link.host, "request_max_usd": max_cost_usd},
        )

    # ------------------------------------------------------------------ step 7

    def finished(self, row: LedgerRow) -> None:
        """A request's ledger row: add it to this host's spend, and, when budgets exist, sync
        soon (their spent changed, a reservation was returned: a hold to give back). With no
        budget the spend waits for the next heartbeat's sync (``quotad spend --fleet`` pushes
        the asking host's first)."""
        billed = not row.cached
        self.fleet.spend.add(
            row.day,
            row.app,
            row.model,
            row.target,
            row.cost_usd,
            row.prompt_tokens if billed else 0,
            row.completion_tokens if billed else 0,
            error=row.status not in ANSWERED,
            cache_hit=row.cached,
            saved_usd=row.saved_usd,
            semantic_hit=row.semantic_similarity is not None,
            blocked=row.status == BLOCKED,
            entities=decode_entities(row.entities) if row.entities else None,
        )
        if self.budgets.configured:
            self.fleet.changed()

    # ------------------------------------------------------------------ syncing

    def refresh(self) -> None:
        """Before each sync: every configured budget registered for the current day and
        month (a new period drops the old one); budgets a reload removed are dropped."""
        now = self.link.clock.time()
        current: set[tuple[str, str, str]] = set()
        self._mirror_of.clear()
        for budget in self.budgets.roll(now):
            current.add(self._mirror(budget).key_parts)
        for key in [key for key in self.fleet.budgets if key not in current]:
            del self.fleet.budgets[key]
        for key in [key for key in self._mirrors if key not in current]:
            del self._mirrors[key]
        self._alerted &= current
        self._alert()

    def _alert(self) -> None:
        """A ``budget_alert`` event, once per period, for each fleet budget whose fleet-wide
        spent (as the last sync saw it) crossed ``alert_at`` of its limit."""
        for key, budget in self._mirrors.items():
            fleet = self.fleet.budgets.get(key)
            if fleet is None or key in self._alerted or budget.limit_usd <= 0:
                continue
            spent = fleet.fleet_spent / NANO
            if spent < budget.alert_at * budget.limit_usd:
                continue
            self._alerted.add(key)
            message = (
                f"fleet budget {budget.name!r} has spent {usd(spent)} of "
                f"{usd(budget.limit_usd)} ({spent / budget.limit_usd:.0%}, alert at "
                f"{budget.alert_at:.0%}) this {budget.period} ({fleet.label}) across the fleet"
            )
            if self.events is not None:
                self.events("budget_alert", message, logging.WARNING)
            else:
                log.warning("budget_alert: %s", message)

    def _local_state(self, fleet: FleetBudget) -> tuple[float, float]:
        """``(spent, reserved)`` of the local budget ``fleet`` mirrors in its period; once
        the local budget has moved on to a new period, what Redis has of the old one."""
        budget = self._mirrors.get(fleet.key_parts)
        if budget is None or budget.period_label != fleet.label:
            return fleet.spent_acked / NANO, 0.0
        return budget.spent_usd, budget.reserved_usd

    # ------------------------------------------------------------------ reports

    async def report(self, period: str, by: str, now: float) -> SpendReply:
        """``quotad spend --fleet``: this host's totals pushed first, then every host's spend
        (:func:`~.spend.fleet_report`) and the fleet's figures of this host's budgets.
        ``upstream_error`` when the fleet's Redis cannot be read."""
        try:
            if self.link.usable:
                await self.fleet.sync()
            reply = await fleet_report(self.link, self.calendar, period, by, now)
        except LinkDown as down:
            raise RequestError(
                "upstream_error",
                f"quotad spend --fleet: the fleet's Redis ({self.link.settings.redis_url}) "
                f"cannot be read: {down}; `quotad spend` without --fleet reports this host",
                details={"redis": str(down), "health": self.link.health},
            ) from None
        reply.budgets = self.budget_status()
        return reply

    def budget_status(self, now: float | None = None) -> list[BudgetStatus]:
        """Each budget in the period holding ``now`` (wall time; default the clock's), as
        ``quotad status``, the TUI and ``quotad spend --fleet`` show it. No I/O: status is a
        hot path. With the fleet's figures fresh (:meth:`heard_since`): the other hosts'
        spent and held as last heard from Redis plus this host's own now (``fleet=True``,
        ``as_of`` when heard); else this host's own figures (``fleet=False``)."""
        now = self.link.clock.time() if now is None else now
        monotonic = self.link.clock.monotonic()
        heard_since = self.heard_since(monotonic)
        mirrors = self._mirror_of
        out = []
        for budget in self.budgets.roll(now):
            fleet = mirrors.get(budget)
            if fleet is None or fleet.heard_at < heard_since or fleet.label != budget.period_label:
                out.append(budget.own_status())
                continue
            # Redis counts this host at spent_acked + held_acked until its next sync: its
            # part shows its spent now, and holds the rest of that (at least its reserved)
            counted = (fleet.spent_acked + fleet.held_acked) / NANO
            spent = (fleet.fleet_spent - fleet.spent_acked) / NANO + budget.spent_usd
            held = (fleet.fleet_held - fleet.held_acked) / NANO + max(
                budget.reserved_usd, counted - budget.spent_usd
            )
            out.append(
                budget.status(
                    spent_usd=spent,
                    reserved_usd=held,
                    alert=spent >= budget.alert_at * budget.limit_usd > 0,
                    as_of=now - (monotonic - fleet.heard_at),
                )
            )
        return out

    def heard_since(self, monotonic: float) -> float:
        """Since when (our monotonic clock) the fleet's figures of a budget must have been
        heard to be shown: Redis answers (the budgets sync every heartbeat then) and within
        :data:`FRESH_HEARTBEATS` heartbeats and a call's timeout; ``inf`` (none) while Redis
        is away or not reached yet."""
        if self.link.health not in ("connected", "resyncing"):
            return math.inf
        settings = self.link.settings
        return monotonic - (FRESH_HEARTBEATS * settings.heartbeat_s + settings.timeout_s)
