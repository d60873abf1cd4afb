"""Spend: budgets and their use, today and this month by app and by model, the month-end
forecast and what the cache saved. Reports come from ``Spend`` requests, fetched while the
screen is shown; a daemon without a ledger says so and the screen shows what status has."""

from __future__ import annotations

import time
from typing import Final

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Grid
from textual.message import Message

from quotad.protocol.figures import budget_whose
from quotad.protocol.messages import BudgetStatus, SpendReply
from quotad.tui.format import bar, percent, usd
from quotad.tui.monitor import Monitor
from quotad.tui.screens.base import MonitorScreen, titled
from quotad.tui.widgets.table import Column, LiveTable, Row
from quotad.tui.widgets.text import LiveText

REFRESH_S: Final = 5.0
BUDGET_WIDTH: Final = 30
ROW_BAR_WIDTH: Final = 6
COLUMNS: Final = (
    Column("key", 18),
    Column("reqs", 6),
    Column("cost", 9),
    Column("share", ROW_BAR_WIDTH),
    Column("saved", 8),
)
TABLES: Final = (
    ("day-app", "today by app", "day"),
    ("day-model", "today by model", "day"),
    ("month-app", "this month by app", "month"),
    ("month-model", "this month by model", "month"),
)


def budget_lines(
    budgets: list[BudgetStatus], *, known: bool = True, fleet: bool = False, now: float = 0.0
) -> Text:
    """One bar per budget: spent plus reserved (in a fleet's figures: held) against its limit.
    ``known``: False while no data came from a daemon (then no budgets means nothing).
    ``fleet``: the daemon is in a fleet, so each budget says whose figures it shows (as of
    ``now``, wall time)."""
    if not budgets and not known:
        return Text("no data: not connected to quotad yet", style="yellow")
    if not budgets:
        return Text("no budgets configured", style="grey50")
    text = Text()
    for budget in budgets:
        used = budget.spent_usd + budget.reserved_usd
        fraction = used / budget.limit_usd if budget.limit_usd > 0 else 0.0
        text.append(f"{budget.name or budget.scope:<16} {budget.period:<5} ")
        text.append_text(bar(fraction, BUDGET_WIDTH))
        text.append(f" {usd(budget.spent_usd)} spent")
        if budget.reserved_usd:
            held = "held" if budget.fleet else "reserved"
            text.append(f" + {usd(budget.reserved_usd)} {held}")
        text.append(f" of {usd(budget.limit_usd)} ({percent(fraction)})")
        if fleet:
            text.append(f"  {budget_whose(budget, now)}", style="" if budget.fleet else "yellow")
        if budget.alert:
            text.append("  ALERT", style="bold red")
        text.append("\n")
    text.rstrip()
    return text


def global_budget(budgets: list[BudgetStatus], period: str) -> BudgetStatus | None:
    """The global budget of ``period`` (day or month), if one is configured."""
    return next((b for b in budgets if b.scope == "global" and b.period == period), None)


def report_rows(report: SpendReply | None, scale_usd: float) -> list[Row]:
    """One row per key of ``report``, its bar the key's cost against ``scale_usd``."""
    if report is None:
        return []
    return [
        (
            row.key,
            [
                Text(row.key + (" *" if row.unpriced else ""), style="bold"),
                Text(str(row.requests), justify="right"),
                Text(usd(row.cost_usd), justify="right"),
                bar(row.cost_usd / scale_usd if scale_usd > 0 else 0.0, ROW_BAR_WIDTH),
                Text(usd(row.saved_usd), justify="right"),
            ],
        )
        for row in sorted(report.rows, key=lambda row: (-row.cost_usd, row.key))
    ]


class SpendScreen(MonitorScreen):
    """Budgets, spend reports, forecast and cache savings."""

    MODE = "spend"
    TITLE = "Spend"

    class ReportWanted(Message):
        """The spend screen is shown and wants fresh reports."""

    def compose_body(self) -> ComposeResult:
        yield titled(LiveText(id="budgets"), "budgets (spent + reserved of limit)")
        with Grid(id="spend-tables"):
            for table_id, title, _ in TABLES:
                yield titled(LiveTable(COLUMNS, id=table_id), title)
        yield LiveText(id="spend-summary")

    def on_mount(self) -> None:
        self.set_interval(REFRESH_S, self._want_report)
        super().on_mount()

    def on_screen_resume(self) -> None:
        self._want_report()
        super().on_screen_resume()

    def _want_report(self) -> None:
        if self.is_current:
            self.post_message(self.ReportWanted())

    def show_body(self, monitor: Monitor) -> None:
        status = monitor.status
        view = monitor.spend
        budgets = status.budgets if status is not None else []
        if not budgets:
            budgets = (view.month_by_app or view.day_by_app or SpendReply()).budgets
        known = status is not None or view.month_by_app is not None or view.day_by_app is not None
        fleet = status is not None and status.cluster is not None
        self.query_one("#budgets", LiveText).show_text(
            budget_lines(budgets, known=known, fleet=fleet, now=time.time())
        )
        reports = {
            "day-app": view.day_by_app,
            "day-model": view.day_by_model,
            "month-app": view.month_by_app,
            "month-model": view.month_by_model,
        }
        for table_id, title, period in TABLES:
            report = reports[table_id]
            budget = global_budget(budgets, period)
            total = report.total.cost_usd if report is not None else 0.0
            scale = budget.limit_usd if budget is not None else total
            table = self.query_one(f"#{table_id}", LiveTable)
            against = f"{usd(scale)} {period} budget" if budget is not None else "total"
            table.border_title = f"{title}: {usd(total)}"
            table.border_subtitle = f"share of {against}"
            table.show_rows(report_rows(report, scale))
        self.query_one("#spend-summary", LiveText).show_text(self._summary(monitor))

    def _summary(self, monitor: Monitor) -> Text:
        view = monitor.spend
        text = Text()
        if view.unavailable:
            text.append(f"spend reports unavailable: {view.unavailable}\n", style="yellow")
        month = view.month_by_app or view.month_by_model
        status = monitor.status
        budgets = status.budgets if status is not None else []
        monthly = global_budget(budgets or (month.budgets if month else []), "month")
        if month is not None and month.forecast_month_usd is not None:
            text.append("month-end forecast ", style="bold")
            text.append(usd(month.forecast_month_usd))
            if monthly is not None:
                fraction = month.forecast_month_usd / monthly.limit_usd
                text.append(f" of {usd(monthly.limit_usd)} monthly budget ({percent(fraction)})")
                if fraction > 1:
                    text.append("  over budget", style="bold red")
            text.append("   ")
        day = view.day_by_app or view.day_by_model
        text.append("cache saved", style="bold")
        if day is not None:
            text.append(f"  today {usd(day.total.saved_usd)} ({day.total.cache_hits} hits)")
        if month is not None:
            saved, hits = usd(month.total.saved_usd), month.total.cache_hits
            text.append(f"  this month {saved} ({hits} hits)")
        if status is not None:
            text.append(f"  cache total {usd(status.cache.saved_usd)}")
        return text
