"""What every monitor screen has: the screen tabs, the connection bar, its body, the footer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, TypeVar

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer

from quotad.tui.monitor import Monitor
from quotad.tui.widgets.connection import ConnectionBar, ScreenTabs


class MonitorScreen(Screen[None]):
    """A screen that renders the shared :class:`Monitor`; subclasses compose and show a body.

    The app calls :meth:`show` after each snapshot while the screen is active; the screen
    shows itself again when it becomes active, so switching screens shows current data.
    """

    MODE: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""

    def __init__(self, monitor: Monitor, screens: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.monitor = monitor
        self._screens = screens
        self._ready = False

    def compose(self) -> ComposeResult:
        yield ScreenTabs(self._screens, self.MODE)
        yield ConnectionBar()
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """The widgets between the connection bar and the footer."""
        raise NotImplementedError

    def show_body(self, monitor: Monitor) -> None:
        """Render ``monitor`` into the body."""
        raise NotImplementedError

    def on_mount(self) -> None:
        self._ready = True
        self.show()

    def on_screen_resume(self) -> None:
        self.show()

    def show(self) -> None:
        """Render the monitor's current state (once the screen is mounted)."""
        if self._ready:
            self.query_one(ConnectionBar).show(self.monitor)
            self.show_body(self.monitor)


WidgetT = TypeVar("WidgetT", bound=Widget)


def titled(widget: WidgetT, title: str) -> WidgetT:
    """``widget`` with ``title`` on its border (a panel of a screen's body)."""
    widget.border_title = title
    return widget
