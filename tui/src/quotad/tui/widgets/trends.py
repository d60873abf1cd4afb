"""The traffic sparklines of the Overview: requests per second and provider latency, for the
daemon and for each target, one point per snapshot."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from rich.text import Text

from quotad.tui.format import milliseconds, spark
from quotad.tui.monitor import Monitor, latest, peak
from quotad.tui.widgets.text import LiveText

LABEL_WIDTH: Final = 37
TREND_WIDTH: Final = 24


def _rate_cell(values: Collection[float | None]) -> Text:
    text = spark(values, TREND_WIDTH, style="green")
    text.append(f" {latest(values) or 0.0:6.1f}/s")
    return text


def _latency_cell(values: Collection[float | None]) -> Text:
    text = spark(values, TREND_WIDTH, style="magenta")
    text.append(f" {milliseconds(latest(values)):>7}")
    return text


class TrafficTrends(LiveText):
    """Requests per second and mean provider latency (successful, uncached requests), for the
    whole daemon and per target."""

    def show(self, monitor: Monitor) -> None:
        """Render the trends of ``monitor``."""
        text = Text()
        text.append(f"{'':<{LABEL_WIDTH}}  {'requests per second':<{TREND_WIDTH + 9}}")
        text.append(f"  provider latency (peak {milliseconds(peak(monitor.latency_s))})\n")
        text.append(f"{'all targets':<{LABEL_WIDTH}}  ", style="bold")
        text.append_text(_rate_cell(monitor.requests_per_s))
        text.append("  ")
        text.append_text(_latency_cell(monitor.latency_s))
        for name, trend in monitor.targets.items():
            text.append(f"\n{name[:LABEL_WIDTH]:<{LABEL_WIDTH}}  ")
            text.append_text(_rate_cell(trend.requests_per_s))
            text.append("  ")
            text.append_text(_latency_cell(trend.latency_s))
        self.show_text(text)
