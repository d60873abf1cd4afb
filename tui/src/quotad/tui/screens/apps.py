"""Apps: per app requests, waits, spend, fair-share weight, priority, share of traffic, and
what the guardrails found in its requests and replies."""

from __future__ import annotations

from typing import Final

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from quotad.protocol.messages import AppStatus
from quotad.tui.format import bar, milliseconds, percent, usd
from quotad.tui.monitor import AppActivity, Monitor
from quotad.tui.screens.base import MonitorScreen, titled
from quotad.tui.widgets.table import Column, LiveTable, Row

SHARE_WIDTH: Final = 8
COLUMNS: Final = (
    Column("app", 13),
    Column("priority", 8),
    Column("weight", 6),
    Column("requests", 8),
    Column("flight", 6),
    Column("queued", 6),
    Column("errors", 6),
    Column("wait", 6),
    Column("latency", 7),
    Column("spend", 8),
    Column("guarded", 7),
    Column("traffic", SHARE_WIDTH + 5),
)
NOTE: Final = (
    "weight: fair-share weight. guarded: entities the guardrails found / requests they refused "
    "(since the daemon started). errors, latency, traffic (and the rest when the "
    "daemon does not report the app): requests seen since quotad top started."
)


def app_cells(
    name: str, reported: AppStatus | None, seen: AppActivity | None, seen_total: int
) -> list[Text]:
    """The cells of one app's row."""
    seen = seen or AppActivity()
    if reported is not None:
        requests = reported.requests
        wait = reported.wait_s_total / requests if requests else None
        spend = reported.spend_today_usd
        priority, weight = reported.priority, f"{reported.share:g}"
        in_flight, queued = str(reported.in_flight), str(reported.queued)
        found, blocked = sum(reported.entities.values()), reported.blocked
        guarded = f"{found}/{blocked}" if found or blocked else "0"
    else:
        requests = seen.requests
        wait = seen.wait_s / seen.requests if seen.requests else None
        spend = seen.cost_usd
        priority, weight, in_flight, queued = seen.priority, "-", "-", "-"
        blocked, guarded = 0, "-"
    traffic = seen.requests / seen_total if seen_total else 0.0
    share = bar(traffic, SHARE_WIDTH, style="cyan")
    share.append(f" {percent(traffic):>4}")
    return [
        Text(name, style="bold"),
        Text(priority),
        Text(weight, justify="right"),
        Text(str(requests), justify="right"),
        Text(in_flight, justify="right"),
        Text(queued, justify="right", style="yellow" if queued not in ("-", "0") else ""),
        Text(str(seen.errors), justify="right", style="red" if seen.errors else ""),
        Text(milliseconds(wait), justify="right"),
        Text(
            milliseconds(seen.latency_s / seen.requests if seen.requests else None),
            justify="right",
        ),
        Text(usd(spend), justify="right"),
        Text(
            guarded,
            justify="right",
            style="red" if blocked else "magenta" if guarded not in ("-", "0") else "",
        ),
        share,
    ]


class AppsScreen(MonitorScreen):
    """One row per app the daemon reports or a request was seen from."""

    MODE = "apps"
    TITLE = "Apps"

    def compose_body(self) -> ComposeResult:
        yield titled(LiveTable(COLUMNS, id="apps"), "apps")
        yield Static(NOTE, id="apps-note", classes="note")

    def on_mount(self) -> None:
        self.query_one(LiveTable).focus()
        super().on_mount()

    def show_body(self, monitor: Monitor) -> None:
        rows = monitor.app_rows()
        seen_total = sum(activity.requests for activity in monitor.apps.values())
        table_rows: list[Row] = [
            (name, app_cells(name, reported, seen, seen_total)) for name, reported, seen in rows
        ]
        self.query_one(LiveTable).show_rows(table_rows)
