"""The two lines above every screen: which screens there are, and the state of the connection."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import Static

from quotad.tui.format import seconds
from quotad.tui.monitor import Monitor
from quotad.tui.widgets.text import LiveText


class ScreenTabs(Static):
    """``quotad top`` and the numbered screens, the current one highlighted; click to switch."""

    def __init__(self, screens: Sequence[tuple[str, str]], current: str) -> None:
        parts = ["[b]quotad top[/b] "]
        for number, (mode, title) in enumerate(screens, start=1):
            label = f" {number} {title} "
            if mode == current:
                parts.append(f"[reverse b]{label}[/]")
            else:
                parts.append(f"[@click=app.show_screen('{mode}')]{label}[/]")
        parts.append("   [dim]tab: next  ?: help  q: quit[/dim]")
        super().__init__("".join(parts))


class ConnectionBar(LiveText):
    """Connected (daemon version, pid, uptime, totals), connected but silent (stale), or
    waiting for the daemon, and why."""

    def show(self, monitor: Monitor) -> None:
        """Render the connection state of ``monitor``."""
        self.set_class(monitor.state != "connected", "-waiting")
        status = monitor.status
        if monitor.state == "connecting":
            self.show_text(Text(f"◌ connecting to quotad at {monitor.where}…"))
            return
        if monitor.state == "waiting":
            line = Text(f"◌ waiting for quotad at {monitor.where}", style="bold")
            if monitor.reason:
                line.append(f" — {monitor.reason}")
            if status is not None:
                line.append("  (showing the last data seen)", style="italic")
            self.show_text(line)
            return
        if status is None:
            self.show_text(
                Text(f"● connected to quotad {monitor.daemon_version}; waiting for data")
            )
            return
        silent_s = monitor.silent_s()
        if silent_s is not None:  # connected, but nothing comes: stopped, wedged, swamped
            self.set_class(True, "-waiting")
            line = Text(f"◌ stale: no snapshot for {seconds(silent_s)}", style="bold")
            line.append(f" from quotad at {monitor.where}; it may be stopped or overloaded")
            line.append("  (showing the last data seen)", style="italic")
            self.show_text(line)
            return
        rate = monitor.snapshot.requests_per_s if monitor.snapshot else 0.0
        line = Text("● ", style="green")
        line.append(f"quotad {status.daemon_version or monitor.daemon_version}", style="bold")
        line.append(f"  {rate:.1f} req/s", style="bold")
        line.append(f"  in flight {status.in_flight}  requests {status.requests_total}")
        line.append(f"  conns {status.connections}  up {seconds(status.uptime_s)}")
        line.append(f"  pid {status.pid}  {status.socket or monitor.where}")
        cluster = status.cluster
        if cluster is not None:  # [cluster]: the fleet's Redis, the gates' mode, hosts seen
            style = "green" if cluster.mode == "fleet" else "bold red"
            line.append(f"  fleet {cluster.host}: ", style="bold")
            line.append(
                f"redis {cluster.health}"
                + (f" ({cluster.mode}: {cluster.reason})" if cluster.mode != "fleet" else ""),
                style=style,
            )
            line.append(f"  hosts {cluster.hosts_seen}")
        self.show_text(line)
