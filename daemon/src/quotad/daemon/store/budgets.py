"""Spend budgets that hold under concurrency: ``[budgets]`` (global) and ``[apps.A]`` (per app),
each daily and/or monthly, in local calendar days and months.

A request reserves its *maximum* cost at admission (:meth:`Budgets.reserve`): its estimated
prompt tokens and ``max_tokens`` at the most expensive price among its candidate targets. It
is admitted only if, on every budget that applies to it, spent + reserved + this maximum stays
within the limit; the check and the reservation happen in one step on the event loop, so
concurrent requests cannot overshoot together. When the request ends,
:meth:`Budgets.settle` returns the reservation and adds the real cost. Spent totals live in
memory, loaded from the ledger at start.

A request whose maximum cost is 0 (unpriced or local models, cache-only requests) is never
refused, and with no budget configured nothing is ever refused. Crossing ``alert_at`` of a
budget (once per period) is reported to the caller of :meth:`settle`, which turns it into an
event and a log line; so is a real cost above its reservation that takes a budget past its
limit (a provider billing more tokens than it was sent as the bound: ``budget_overrun``).
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Final, Literal
from zoneinfo import ZoneInfo

from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.protocol.figures import usd
from quotad.protocol.messages import BudgetStatus

Period = Literal["day", "month"]

LIMIT_SLACK_USD: Final = 1e-12
"""Float noise tolerated when comparing a sum of costs with a limit."""


class Calendar:
    """Local calendar days and months in one time zone (``daemon.timezone``; the system's
    when empty). Day and month boundaries are cached, so labelling a time is cheap."""

    def __init__(self, timezone: str = "") -> None:
        self._zone: tzinfo | None = ZoneInfo(timezone) if timezone else None
        self._day: tuple[float, float, str] = (0.0, 0.0, "")
        self._month: tuple[float, float, str] = (0.0, 0.0, "")

    def _local(self, moment: float) -> datetime:
        return datetime.fromtimestamp(moment, self._zone)

    def _midnight(self, day: datetime) -> float:
        """The Unix time of the local midnight starting ``day`` (a local datetime)."""
        start = datetime(day.year, day.month, day.day, tzinfo=self._zone)
        return start.timestamp()

    def day_bounds(self, moment: float) -> tuple[float, float, str]:
        """(start, end, "YYYY-MM-DD") of the local day holding ``moment``."""
        start, end, _ = self._day
        if start <= moment < end:
            return self._day
        local = self._local(moment)
        start = self._midnight(local)
        end = self._midnight(local + timedelta(days=1))
        if end <= start:  # a day that a DST jump made odd: never loop
            end = start + 86400.0
        self._day = (start, end, local.strftime("%Y-%m-%d"))
        return self._day

    def month_bounds(self, moment: float) -> tuple[float, float, str]:
        """(start, end, "YYYY-MM") of the local month holding ``moment``."""
        start, end, _ = self._month
        if start <= moment < end:
            return self._month
        local = self._local(moment)
        first = local.replace(day=1)
        days = calendar.monthrange(local.year, local.month)[1]
        start = self._midnight(first)
        end = self._midnight(first + timedelta(days=days))
        self._month = (start, end, local.strftime("%Y-%m"))
        return self._month

    def day(self, moment: float) -> str:
        """ "YYYY-MM-DD" of the local day holding ``moment``."""
        return self.day_bounds(moment)[2]

    def days_back(self, moment: float, days: int) -> float:
        """The start of the local day ``days`` days before the one holding ``moment``."""
        local = self._local(moment) - timedelta(days=days)
        return self._midnight(local)


@dataclass(slots=True, eq=False)
class Budget:
    """One limit: global or one app's, daily or monthly; what its period has spent and what
    requests in flight hold reserved."""

    name: str
    scope: str
    period: Period
    limit_usd: float
    alert_at: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    held: int = 0
    period_label: str = ""
    alerted: bool = False
    left: tuple[str, float, bool] | None = None
    """The period this budget last left for a later one (its label, spent and alert), to
    count again if the clock is set back into it (:meth:`Budgets._roll`)."""

    def status(
        self, *, spent_usd: float, reserved_usd: float, alert: bool, as_of: float | None = None
    ) -> BudgetStatus:
        """This budget as ``status`` and ``spend`` replies show it, with the figures of whoever
        reports it: this host's own, or (``as_of``: when they were heard) the fleet's."""
        return BudgetStatus(
            name=self.name,
            scope=self.scope,
            period=self.period,
            limit_usd=self.limit_usd,
            spent_usd=spent_usd,
            reserved_usd=reserved_usd,
            alert=alert,
            fleet=as_of is not None,
            as_of=as_of or 0.0,
        )

    def own_status(self) -> BudgetStatus:
        """This budget with this host's own figures (and its own alert)."""
        return self.status(
            spent_usd=self.spent_usd, reserved_usd=self.reserved_usd, alert=self.alerted
        )


@dataclass(slots=True)
class BudgetHold:
    """What one request holds on its budgets until it settles."""

    budgets: tuple[Budget, ...]
    amount_usd: float


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget crossed ``alert_at`` of its limit (``budget_alert``), or its limit itself
    (``budget_overrun``: a request cost more than it reserved)."""

    budget: Budget
    message: str
    kind: Literal["budget_alert", "budget_overrun"] = "budget_alert"


def _budgets(
    scope: str, name: str, daily: float | None, monthly: float | None, alert_at: float
) -> tuple[Budget, ...]:
    """The daily and monthly budgets of one scope, those configured."""
    found = []
    if daily is not None:
        found.append(Budget(f"{name} daily", scope, "day", daily, alert_at))
    if monthly is not None:
        found.append(Budget(f"{name} monthly", scope, "month", monthly, alert_at))
    return tuple(found)


class Budgets:
    """Every configured budget, with its running totals and reservations."""

    def __init__(self, config: Config, calendar: Calendar) -> None:
        self.calendar = calendar
        alert_at = config.budgets.alert_at
        self.global_budgets = _budgets(
            "global", "global", config.budgets.daily_usd, config.budgets.monthly_usd, alert_at
        )
        self.app_budgets: dict[str, tuple[Budget, ...]] = {}
        for app, policy in config.apps.items():
            own = _budgets(app, f"app {app}", policy.daily_usd, policy.monthly_usd, alert_at)
            if own:
                self.app_budgets[app] = self.global_budgets + own
        self.on_added: Callable[[list[Budget]], None] | None = None
        """Told of the budgets a reload adds (the requests in flight then hold on them too)."""

    def reconfigure(self, config: Config) -> list[Budget]:
        """Apply reloaded budgets (SIGHUP). A budget that stays (same name: its scope and
        period, ``global daily`` apart from an app's ``app global daily``) is the
        same object with its new limit, so its running total and the holds of requests in
        flight carry over; a removed budget no longer applies. Returns the new budgets: their
        totals so far must be added from the ledger (:meth:`add_spent`)."""
        previous = {budget.name: budget for budget in self._all()}
        fresh = Budgets(config, self.calendar)

        def carried(budgets: tuple[Budget, ...]) -> tuple[Budget, ...]:
            result = []
            for budget in budgets:
                old = previous.get(budget.name)
                if old is not None:
                    old.limit_usd = budget.limit_usd
                    old.alert_at = budget.alert_at
                    budget = old
                result.append(budget)
            return tuple(result)

        self.global_budgets = carried(fresh.global_budgets)
        self.app_budgets = {app: carried(budgets) for app, budgets in fresh.app_budgets.items()}
        added = [b for b in self._all() if b.name not in previous]
        if added and self.on_added is not None:
            self.on_added(added)
        return added

    def added_by(self, config: Config) -> Callable[[str], tuple[Budget, ...]] | None:
        """The budgets a reload of ``config`` would add (by name, as :meth:`reconfigure`
        tells them from those that stay) that a request of an app would hold on, as a
        function of the app (the global ones of every app, or its own); None when it adds
        none. A budget added reads its totals so far from the ledger, one that stays keeps
        its running total."""
        current = {budget.name for budget in self._all()}
        fresh = Budgets(config, self.calendar)
        if all(budget.name in current for budget in fresh._all()):
            return None
        return lambda app: tuple(b for b in fresh.of_app(app) if b.name not in current)

    def of_app(self, app: str) -> tuple[Budget, ...]:
        """The budgets a request of ``app`` holds on."""
        return self.app_budgets.get(app, self.global_budgets)

    def add_spent(
        self, budgets: Iterable[Budget], spent: Iterable[tuple[str, float, float]], now: float
    ) -> None:
        """Add the ledger's totals (``(app, today, this month)``) to ``budgets`` (every one at
        start, those a reload made later). Added, not set: after a reload, a request settled
        since it but committed before the query is counted twice, never missed, so the budget
        errs on the safe side."""
        fresh = {id(budget) for budget in budgets}
        for app, today, month in spent:
            for budget in self.of_app(app):
                if id(budget) in fresh:
                    self._roll(budget, now)
                    budget.spent_usd += today if budget.period == "day" else month

    @property
    def configured(self) -> bool:
        """Whether any budget exists at all."""
        return bool(self.global_budgets or self.app_budgets)

    def _all(self) -> Iterable[Budget]:
        yield from self.global_budgets
        for budgets in self.app_budgets.values():
            yield from budgets[len(self.global_budgets) :]

    def _roll(self, budget: Budget, now: float) -> None:
        """Put ``budget`` in the period holding ``now``. A later period starts at $0. A clock
        set back into the period just left goes back to it with what it had spent, and
        keeps what was spent since: that was spent in a period that has not begun yet, so it
        counts now (a clock set forward by mistake, then put right, had started the day
        afresh and let it spend its limit twice). Set back further, or over midnight with
        nothing left behind, the budget stays in its later period, which has not ended: the
        day before is never started afresh at $0 (labels sort as time does)."""
        label = (
            self.calendar.day_bounds(now)[2]
            if budget.period == "day"
            else self.calendar.month_bounds(now)[2]
        )
        if label > budget.period_label:
            budget.left = (budget.period_label, budget.spent_usd, budget.alerted)
            budget.period_label = label
            budget.spent_usd = 0.0
            budget.alerted = False
        elif label < budget.period_label and budget.left is not None and budget.left[0] == label:
            _, spent_usd, alerted = budget.left
            budget.left = None
            budget.period_label = label
            budget.spent_usd += spent_usd
            budget.alerted = budget.alerted or alerted

    def load(self, spent: Iterable[tuple[str, float, float]], now: float) -> list[BudgetAlert]:
        """Set the running totals from the ledger: ``(app, spent today, spent this month)``
        per app. Returns the budgets already past their alert threshold."""
        for budget in self._all():
            self._roll(budget, now)
            budget.spent_usd = 0.0
        self.add_spent(self._all(), spent, now)
        return [alert for budget in self._all() if (alert := self._check_alert(budget))]

    def apply_to(self, app: str) -> bool:
        """Whether any budget applies to ``app`` (else :meth:`reserve` holds nothing, and the
        bound of a request's cost need not be counted)."""
        return bool(self.of_app(app))

    def reserve(self, app: str, max_cost_usd: float, now: float) -> BudgetHold | None:
        """Reserve ``max_cost_usd`` on every budget of ``app``, or raise ``budget_exceeded``
        naming the first budget it would exceed. None when there is nothing to hold."""
        budgets = self.check(app, max_cost_usd, now)
        return self.hold(budgets, max_cost_usd) if budgets else None

    def check(self, app: str, max_cost_usd: float, now: float) -> tuple[Budget, ...]:
        """The budgets a request of ``app`` costing up to ``max_cost_usd`` must hold on (none
        when its cost is 0 or no budget applies), each in its current period; raises
        ``budget_exceeded`` naming the first one it would exceed. Holds nothing: a caller that
        checks something more (the fleet's share, :mod:`quotad.daemon.cluster.shared_budgets`)
        calls :meth:`hold` in the same step of the event loop."""
        if max_cost_usd <= 0.0:
            return ()
        budgets = self.of_app(app)
        for budget in budgets:
            self._roll(budget, now)
            committed = budget.spent_usd + budget.reserved_usd
            if committed + max_cost_usd > budget.limit_usd + LIMIT_SLACK_USD:
                raise RequestError(
                    "budget_exceeded",
                    f"budget {budget.name!r} would be exceeded: spent {usd(budget.spent_usd)}"
                    f" + reserved {usd(budget.reserved_usd)} + this request up to "
                    f"{usd(max_cost_usd)} > limit {usd(budget.limit_usd)}",
                    details={
                        "budget": budget.name,
                        "scope": budget.scope,
                        "period": budget.period,
                        "spent_usd": budget.spent_usd,
                        "reserved_usd": budget.reserved_usd,
                        "request_max_usd": max_cost_usd,
                        "limit_usd": budget.limit_usd,
                    },
                )
        return budgets

    @staticmethod
    def hold(budgets: tuple[Budget, ...], max_cost_usd: float) -> BudgetHold:
        """Reserve ``max_cost_usd`` on ``budgets`` (what :meth:`check` returned, in the
        same step)."""
        for budget in budgets:
            budget.reserved_usd += max_cost_usd
            budget.held += 1
        return BudgetHold(budgets, max_cost_usd)

    def roll(self, now: float) -> Iterable[Budget]:
        """Every budget, each in the period holding ``now``."""
        for budget in self._all():
            self._roll(budget, now)
            yield budget

    def settle(
        self,
        reservation: BudgetHold | None,
        app: str,
        cost_usd: float,
        now: float,
        *,
        target: str = "",
    ) -> list[BudgetAlert]:
        """Return ``reservation`` and add the real ``cost_usd`` (of a call to ``target``) to
        ``app``'s budgets; returns the budgets that crossed their alert threshold by it, and
        those it took past their limit (only a cost above its reservation can)."""
        if reservation is not None:
            for budget in reservation.budgets:
                budget.held -= 1
                # exactly zero when nothing is held, whatever float subtraction left over
                budget.reserved_usd = (
                    budget.reserved_usd - reservation.amount_usd if budget.held else 0.0
                )
        if cost_usd <= 0.0:
            return []
        alerts: list[BudgetAlert] = []
        reserved_usd = reservation.amount_usd if reservation is not None else 0.0
        for budget in self.of_app(app):
            self._roll(budget, now)
            within = budget.spent_usd <= budget.limit_usd + LIMIT_SLACK_USD
            budget.spent_usd += cost_usd
            alert = self._check_alert(budget)
            if alert is not None:
                alerts.append(alert)
            if within and budget.spent_usd > budget.limit_usd + LIMIT_SLACK_USD:
                alerts.append(_overrun(budget, target, cost_usd, reserved_usd))
        return alerts

    def _check_alert(self, budget: Budget) -> BudgetAlert | None:
        if budget.alerted or budget.spent_usd < budget.alert_at * budget.limit_usd:
            return None
        if budget.limit_usd <= 0.0 and budget.spent_usd <= 0.0:
            return None
        budget.alerted = True
        share = budget.spent_usd / budget.limit_usd if budget.limit_usd else 1.0
        return BudgetAlert(
            budget,
            f"budget {budget.name!r} has spent {usd(budget.spent_usd)} of "
            f"{usd(budget.limit_usd)} ({share:.0%}, alert at {budget.alert_at:.0%}) "
            f"this {budget.period} ({budget.period_label})",
        )

    def status(self, now: float) -> list[BudgetStatus]:
        """Every budget's use now."""
        out = []
        for budget in self._all():
            self._roll(budget, now)
            out.append(budget.own_status())
        return out


def _overrun(budget: Budget, target: str, cost_usd: float, reserved_usd: float) -> BudgetAlert:
    """``budget`` passed its limit by a cost of ``cost_usd`` where ``reserved_usd`` was held."""
    by = f"a call to {target}" if target else "a request"
    why = (
        "the provider billed more tokens than the request's bound"
        if cost_usd > reserved_usd
        else "its reservation was not held on this budget"
    )
    return BudgetAlert(
        budget,
        f"budget {budget.name!r} passed its limit: spent {usd(budget.spent_usd)} of "
        f"{usd(budget.limit_usd)} this {budget.period} ({budget.period_label}), as {by} cost "
        f"{usd(cost_usd)} where it reserved {usd(reserved_usd)} ({why}); the budget refuses "
        "further requests this period",
        "budget_overrun",
    )
