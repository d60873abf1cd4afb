"""Helpers for Textual pilot tests of ``quotad top``."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.notifications import SeverityLevel
from textual.pilot import Pilot

from quotad.tui.app import TopApp
from quotad.tui.feed import Feed
from quotad.tui.widgets.connection import ConnectionBar


async def wait_until(
    pilot: Pilot[None], condition: Callable[[], bool], timeout_s: float = 60.0
) -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout_s``. The bound only
    stops a test whose condition never comes; it is long, so that a busy machine (repaints of
    100 ms and more under load) only makes a test slower, never failed."""
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"not within {timeout_s} s: {condition.__doc__ or condition}")


def connection_line(app: TopApp) -> str:
    """The text of the connection bar on the active screen."""
    return str(app.screen.query_one(ConnectionBar).render())


class RecordingApp(TopApp):
    """The app, recording its notifications and repaints."""

    def __init__(self, feed: Feed, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(feed, clock)
        self.notices: list[tuple[SeverityLevel, str, str]] = []
        self.repaints = 0

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        self.notices.append((severity, title, message))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def repaint(self) -> None:
        self.repaints += 1
        super().repaint()
