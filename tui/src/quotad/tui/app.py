"""``quotad top`` (placeholder until its own issue): the daemon's status, refreshed each second.

Shows "waiting for quotad at PATH" while no daemon answers, and reconnects when one does.
"""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static

from quotad.client import AsyncClient, QuotadError


class TopApp(App[None]):
    """The live status view."""

    TITLE = "quotad top"
    BINDINGS = [("q", "quit", "Quit")]  # noqa: RUF012

    def __init__(self, socket: str | None = None) -> None:
        super().__init__()
        self.socket = socket

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(1.0, self.refresh_status)
        self.call_later(self.refresh_status)

    async def refresh_status(self) -> None:
        view = self.query_one("#status", Static)
        try:
            async with AsyncClient(socket=self.socket, app="quotad-top") as client:
                status = await client.status()
        except QuotadError as error:
            view.update(f"waiting for quotad: {error}")
            return
        lines = [
            f"quotad {status.daemon_version}  pid {status.pid}  up {status.uptime_s:.0f}s  "
            f"in flight {status.in_flight}  requests {status.requests_total}",
            "",
        ]
        lines += [
            f"{t.name:44} {t.breaker:9} in flight {t.in_flight:3}  requests {t.requests:6}  "
            f"failures {t.failures:5}"
            for t in status.targets
        ]
        view.update("\n".join(lines))


def run_tui(socket: str | None = None) -> None:
    """Run ``quotad top`` until the user quits."""
    TopApp(socket).run()
