"""The targets table of the Overview, and the operator actions taken from it."""

from __future__ import annotations

from typing import ClassVar, Final, Literal

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message

from quotad.protocol.figures import health_text
from quotad.protocol.messages import TargetStatus
from quotad.tui.format import milliseconds
from quotad.tui.monitor import Monitor, TargetTrend, latest
from quotad.tui.widgets.table import Column, LiveTable

TargetAction = Literal["disable", "enable", "reset"]
BREAKER_STYLES: Final = {"closed": "green", "half_open": "yellow", "open": "bold red"}
HEALTH_STYLES: Final = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "bold red",
    "unknown": "grey50",
}
COLUMNS: Final = (
    Column("target", 37),
    Column("state", 8),
    Column("breaker", 9),
    Column("health", 14),
    Column("uptime", 6),
    Column("flight", 6),
    Column("requests", 8),
    Column("fails", 5),
    Column("latency", 7),
)
"""The traffic trends below the table show each target's requests per second."""


class TargetTable(LiveTable):
    """One row per target; ``d``/``e``/``r`` on a row ask to disable, enable or reset it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "request('disable')", "Disable"),
        Binding("e", "request('enable')", "Enable"),
        Binding("r", "request('reset')", "Reset"),
    ]

    class ActionRequested(Message):
        """The user asked for an operator action on a target (not yet confirmed)."""

        def __init__(self, target: str, action: TargetAction) -> None:
            super().__init__()
            self.target = target
            self.action: TargetAction = action

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(COLUMNS, id=id)

    def action_request(self, action: TargetAction) -> None:
        """Ask (by message) for ``action`` on the target under the cursor."""
        if (target := self.cursor_key) is not None:
            self.post_message(self.ActionRequested(target, action))

    def show(self, monitor: Monitor) -> None:
        """One row per target of the latest snapshot."""
        status = monitor.status
        targets = status.targets if status is not None else []
        self.show_rows(
            [
                (target.name, _cells(target, monitor.targets.get(target.name), monitor.now))
                for target in targets
            ]
        )


def _cells(target: TargetStatus, trend: TargetTrend | None, now: float) -> list[Text]:
    if not target.enabled:
        state = Text("disabled", style="bold red")
    elif target.paused_until is not None and target.paused_until > now:
        state = Text("paused", style="yellow")
    else:
        state = Text("enabled", style="green")
    uptime = "-" if target.uptime_pct is None else f"{target.uptime_pct:.3g}%"
    latency = target.latency_ewma_s
    if latency is None and trend is not None:
        latency = latest(trend.latency_s)
    name = Text(target.name)
    if target.unpriced:
        name.append(" (unpriced)", style="grey50")
    return [
        name,
        state,
        Text(target.breaker.replace("_", "-"), style=BREAKER_STYLES.get(target.breaker, "")),
        Text(health_text(target), style=HEALTH_STYLES.get(target.health, "")),
        Text(uptime, justify="right"),
        Text(str(target.in_flight), justify="right"),
        Text(str(target.requests), justify="right"),
        Text(str(target.failures), justify="right", style="red" if target.failures else ""),
        Text(milliseconds(latency), justify="right"),
    ]
