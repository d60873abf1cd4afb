"""The daemon's recent events (breaker opened, budget alert, reload…), newest first."""

from __future__ import annotations

from typing import Final

from rich.text import Text

from quotad.tui.format import seconds
from quotad.tui.monitor import Monitor
from quotad.tui.widgets.text import LiveText

SHOWN: Final = 20
KIND_STYLES: Final = {"breaker": "bold red", "budget": "bold yellow", "health": "yellow"}


class EventLog(LiveText):
    """The newest :data:`SHOWN` events of the latest status, with their age."""

    def show(self, monitor: Monitor) -> None:
        """Render the events of the latest snapshot."""
        status = monitor.status
        if status is None or not status.events:
            self.show_text(Text("no events", style="grey50"))
            return
        text = Text()
        newest = sorted(status.events, key=lambda event: event.time, reverse=True)[:SHOWN]
        for event in newest:
            age = seconds(max(monitor.now - event.time, 0.0))
            text.append(f"{age:>6} ", style="grey50")
            kind = event.kind.split("_", 1)[0]
            text.append(event.kind, style=KIND_STYLES.get(kind, "bold"))
            text.append(f" {event.message}\n")
        text.rstrip()
        self.show_text(text)
