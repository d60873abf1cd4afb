"""Overview: every target (state, breaker, health, traffic), its limit gauges, the wait queues,
the daemon's events and its traffic trends."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll

from quotad.tui.monitor import Monitor
from quotad.tui.screens.base import MonitorScreen
from quotad.tui.widgets.events import EventLog
from quotad.tui.widgets.gauges import LimitGauges, QueueGauges
from quotad.tui.widgets.targets import TargetTable
from quotad.tui.widgets.trends import TrafficTrends


class OverviewScreen(MonitorScreen):
    """Targets, limits, queues and trends at a glance; the place to operate targets."""

    MODE = "overview"
    TITLE = "Overview"

    def compose_body(self) -> ComposeResult:
        table = TargetTable(id="targets")
        table.border_title = "targets  (d disable · e enable · r reset)"
        yield table
        with Horizontal(id="overview-middle"):
            limits = VerticalScroll(LimitGauges(), id="limits")
            limits.border_title = "limits (used / limit per window)"
            yield limits
            with Vertical(id="overview-side"):
                queues = QueueGauges(id="queues")
                queues.border_title = "queued by priority"
                yield queues
                events = VerticalScroll(EventLog(), id="events")
                events.border_title = "events"
                yield events
        trends = TrafficTrends(id="trends")
        trends.border_title = "traffic"
        yield trends

    def on_mount(self) -> None:
        self.query_one(TargetTable).focus()
        super().on_mount()

    def show_body(self, monitor: Monitor) -> None:
        self.query_one(TargetTable).show(monitor)
        self.query_one(LimitGauges).show(monitor)
        self.query_one(QueueGauges).show(monitor)
        self.query_one(EventLog).show(monitor)
        self.query_one(TrafficTrends).show(monitor)
