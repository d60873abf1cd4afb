"""Gauges of the Overview: every limit window of every target's gates, and the wait queues."""

from __future__ import annotations

from typing import Final

from rich.text import Text

from quotad.protocol.figures import window_in_force
from quotad.protocol.messages import PRIORITIES, GateStatus
from quotad.tui.format import bar, seconds
from quotad.tui.monitor import Monitor
from quotad.tui.widgets.text import LiveText

GAUGE_WIDTH: Final = 18
QUEUE_WIDTH: Final = 16


def _gate_lines(gate: GateStatus, now: float, indent: str) -> Text:
    text = Text()
    paused = gate.paused_until is not None and gate.paused_until > now
    name = gate.name.removeprefix(f"{gate.scope}:")  # "provider:openai" as "provider openai"
    text.append(f"{indent}{gate.scope} {name}", style="bold")
    if paused and gate.paused_until is not None:
        text.append(f"  paused {seconds(gate.paused_until - now)}", style="bold yellow")
    text.append("\n")
    if not gate.windows:
        text.append(f"{indent}  no windows\n", style="grey50")
    for window in gate.windows:
        used, limit = window_in_force(window)
        fraction = used / limit if limit > 0 else 1.0
        label = f"{window.unit}/{window.window_s:g}s"
        text.append(f"{indent}  {label:>13} ")
        text.append_text(bar(fraction, GAUGE_WIDTH))
        text.append(f" {f'{used}/{limit}':>13}")
        if limit != window.limit:  # the provider's count is tighter: its limit is in force
            text.append(f" ({window.limit} configured)", style="yellow")
        text.append("\n")
    return text


class LimitGauges(LiveText):
    """For each target, a gauge per limit window of each gate that applies to it (its
    provider's, its own): used/limit in force, the configured limit beside it when the
    provider's count is tighter; then the gates of no target (apps'); "no limits configured"
    for a target none applies to."""

    def show(self, monitor: Monitor) -> None:
        """Render the gates of the latest snapshot."""
        status = monitor.status
        if status is None:
            self.show_text(Text("no data yet", style="grey50"))
            return
        text = Text()
        for target in status.targets:
            gates = monitor.gates_of(target)
            text.append(target.name, style="bold cyan")
            if not gates:
                text.append("  no limits configured\n", style="grey50")
                continue
            text.append("\n")
            for gate in gates:
                text.append_text(_gate_lines(gate, monitor.now, "  "))
        others = monitor.other_gates()
        if others:
            text.append("other gates\n", style="bold cyan")
            for gate in others:
                text.append_text(_gate_lines(gate, monitor.now, "  "))
        if not status.targets and not others:
            text.append("no targets configured", style="grey50")
        text.rstrip()
        self.show_text(text)


class QueueGauges(LiveText):
    """Requests waiting for gate admission, by priority (highest first)."""

    def show(self, monitor: Monitor) -> None:
        """Render the queues of the latest snapshot."""
        status = monitor.status
        if status is None:
            self.show_text(Text("no data yet", style="grey50"))
            return
        queues = status.queues
        counts = {priority: getattr(queues, priority) for priority in PRIORITIES}
        top = max(max(counts.values()), 1)
        text = Text()
        for priority in reversed(PRIORITIES):
            count = counts[priority]
            text.append(f"{priority:>8} ")
            text.append_text(bar(count / top, QUEUE_WIDTH, style="yellow"))
            text.append(f" {count:>5}\n")
        text.append(f"   total {sum(counts.values()):>5} waiting", style="bold")
        self.show_text(text)
