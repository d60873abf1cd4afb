"""Overview: every target (state, breaker, health, traffic), its limit gauges, the wait queues,
the daemon's events and its traffic trends."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll

from quotad.tui.monitor import Monitor
from quotad.tui.screens.base import MonitorScreen, titled
from quotad.tui.widgets.events import EventLog
from quotad.tui.widgets.gauges import LimitGauges, QueueGauges
from quotad.tui.widgets.targets import TargetTable
from quotad.tui.widgets.trends import TrafficTrends


class OverviewScreen(MonitorScreen):
    """Targets, limits, queues and trends at a glance; the place to operate targets."""

    MODE = "overview"
    TITLE = "Overview"

    def compose_body(self) -> ComposeResult:
        yield titled(TargetTable(id="targets"), "targets  (d disable · e enable · r reset)")
        with Horizontal(id="overview-middle"):
            yield titled(
                VerticalScroll(LimitGauges(), id="limits"), "limits (used / limit per window)"
            )
            with Vertical(id="overview-side"):
                yield titled(QueueGauges(id="queues"), "queued by priority")
                yield titled(VerticalScroll(EventLog(), id="events"), "events")
        yield titled(TrafficTrends(id="trends"), "traffic")

    def on_mount(self) -> None:
        self.query_one(TargetTable).focus()
        super().on_mount()

    def show_body(self, monitor: Monitor) -> None:
        self.query_one(TargetTable).show(monitor)
        self.query_one(LimitGauges).show(monitor)
        self.query_one(QueueGauges).show(monitor)
        self.query_one(EventLog).show(monitor)
        self.query_one(TrafficTrends).show(monitor)
