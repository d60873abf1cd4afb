"""``quotad top``: the Textual app that shows the daemon live (DESIGN §1, §9).

:class:`TopApp` owns a :class:`~quotad.tui.monitor.Monitor` and a :class:`~quotad.tui.feed.Feed`.
One exclusive worker follows the feed: each event updates the monitor (bounded state) and asks
for at most one pending repaint, so a burst of snapshots or a slow terminal coalesces into the
latest picture instead of a queue. The five monitor screens are Textual modes (Tab and the
number keys switch); the active one is repainted from the monitor. Operator actions come up
from the targets table as messages, are confirmed in a modal, and run as ``Admin`` requests;
the daemon's refusal is shown as it gave it. While connected, the app looks every
:data:`STALE_CHECK_S` whether the daemon has gone silent (:meth:`Monitor.silent_s`), and
repaints so that the screen says so, and for how long.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Final

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen

from quotad.client import QuotadError
from quotad.tui.feed import DEFAULT_INTERVAL_S, DaemonFeed, Feed, FeedEvent
from quotad.tui.monitor import Monitor, SpendView
from quotad.tui.screens.apps import AppsScreen
from quotad.tui.screens.base import MonitorScreen
from quotad.tui.screens.cache import CacheScreen
from quotad.tui.screens.confirm import ConfirmScreen
from quotad.tui.screens.help import HelpScreen
from quotad.tui.screens.overview import OverviewScreen
from quotad.tui.screens.requests import RequestsScreen
from quotad.tui.screens.spend import SpendScreen
from quotad.tui.widgets.targets import TargetAction, TargetTable

MONITOR_SCREENS: Final[tuple[type[MonitorScreen], ...]] = (
    OverviewScreen,
    AppsScreen,
    SpendScreen,
    RequestsScreen,
    CacheScreen,
)
SCREEN_TABS: Final = tuple((screen.MODE, screen.TITLE) for screen in MONITOR_SCREENS)
ADMIN_ACTIONS: Final[dict[TargetAction, str]] = {
    "disable": "target_disable",
    "enable": "target_enable",
    "reset": "target_reset",
}
CONFIRM_QUESTIONS: Final[dict[TargetAction, str]] = {
    "disable": "Disable target {target}?",
    "enable": "Enable target {target}?",
    "reset": "Reset target {target}?",
}
CONFIRM_DETAILS: Final[dict[TargetAction, str]] = {
    "disable": "No request will be routed to it until it is enabled again.",
    "enable": "Requests will be routed to it again.",
    "reset": "Closes its circuit breaker and clears its failure counts.",
}
REPAINT_MIN_S: Final = 0.2
STALE_CHECK_S: Final = 1.0
NAVIGATION: Final = frozenset({"show_screen", "next_screen", "previous_screen", "help"})


class TopApp(App[None]):
    """The live monitor of one quotad daemon, fed by ``feed``."""

    TITLE = "quotad top"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(str(number), f"show_screen('{mode}')", title, show=False)
            for number, (mode, title) in enumerate(SCREEN_TABS, start=1)
        ),
        Binding("tab", "next_screen", "Next screen", show=False, priority=True),
        Binding("shift+tab", "previous_screen", "Previous screen", show=False, priority=True),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, feed: Feed, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.feed = feed
        self.monitor = Monitor(feed.where, feed.interval_s, clock)
        self._shown_silent = False
        self._repaint_pending = False
        self._repainted_at = -REPAINT_MIN_S
        for screen in MONITOR_SCREENS:
            self.add_mode(screen.MODE, self._screen_factory(screen))

    def _screen_factory(self, screen: type[MonitorScreen]) -> Callable[[], Screen[None]]:
        return lambda: screen(self.monitor, SCREEN_TABS)

    def on_mount(self) -> None:
        self.switch_mode(SCREEN_TABS[0][0])
        self.follow_feed()
        self.set_interval(STALE_CHECK_S, self.check_silence)

    # ----------------------------------------------------------------- the feed

    @work(exclusive=True, group="feed")
    async def follow_feed(self) -> None:
        """Follow the feed until the app exits."""
        await self.feed.follow(self.deliver)

    def deliver(self, event: FeedEvent) -> None:
        """Take one feed event and ask for a repaint: at most one pending at a time, and at
        most one every :data:`REPAINT_MIN_S` (what a reader can follow; it bounds the TUI's
        own CPU when snapshots come fast)."""
        self.monitor.absorb(event)
        if self._repaint_pending:
            return
        self._repaint_pending = True
        wait = self._repainted_at + REPAINT_MIN_S - time.monotonic()
        if wait > 0:
            self.set_timer(wait, self.repaint)
        else:
            self.call_later(self.repaint)

    def check_silence(self) -> None:
        """Repaint while the daemon is silent (the time it has been counts up), and once when
        it stops or starts being."""
        silent = self.monitor.silent_s() is not None
        if silent or silent != self._shown_silent:
            self._shown_silent = silent
            self.repaint()

    def repaint(self) -> None:
        """Show the monitor on the active monitor screen (under any modal on top of it)."""
        self._repaint_pending = False
        self._repainted_at = time.monotonic()
        if not self.is_running:  # shutting down: the screens are being taken apart
            return
        for screen in reversed(self.screen_stack):
            if isinstance(screen, MonitorScreen):
                screen.show()
                return

    # ----------------------------------------------------------------- navigation

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Screen switching and help wait until a modal on top is closed."""
        return action not in NAVIGATION or isinstance(self.screen, MonitorScreen)

    async def action_show_screen(self, mode: str) -> None:
        """Switch to the monitor screen ``mode``."""
        await self.switch_mode(mode)

    async def action_next_screen(self) -> None:
        """Switch to the next monitor screen (wrapping round)."""
        await self._step_screen(1)

    async def action_previous_screen(self) -> None:
        """Switch to the previous monitor screen (wrapping round)."""
        await self._step_screen(-1)

    async def _step_screen(self, step: int) -> None:
        modes = [mode for mode, _ in SCREEN_TABS]
        index = modes.index(self.current_mode) if self.current_mode in modes else 0
        await self.switch_mode(modes[(index + step) % len(modes)])

    def action_help(self) -> None:
        """Show the keys."""
        self.push_screen(HelpScreen())

    # ----------------------------------------------------------------- operator actions

    def on_target_table_action_requested(self, message: TargetTable.ActionRequested) -> None:
        """Confirm an operator action on a target, then run it."""
        target, action = message.target, message.action

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.run_admin(target, action)

        self.push_screen(
            ConfirmScreen(CONFIRM_QUESTIONS[action].format(target=target), CONFIRM_DETAILS[action]),
            confirmed,
        )

    @work(group="admin")
    async def run_admin(self, target: str, action: TargetAction) -> None:
        """Ask the daemon to act on ``target``; show what it answered."""
        try:
            answer = await self.feed.admin(ADMIN_ACTIONS[action], target)
        except QuotadError as error:
            self.notify(
                f"{action} {target}: {error.message}",
                title="quotad refused",
                severity="error",
                timeout=8,
                markup=False,
            )
            return
        self.notify(answer, title=f"{action} {target}", markup=False)

    # ----------------------------------------------------------------- spend reports

    def on_spend_screen_report_wanted(self, message: SpendScreen.ReportWanted) -> None:
        """Fetch the spend reports for the spend screen."""
        if self.monitor.state == "connected":
            self.fetch_spend()

    @work(exclusive=True, group="spend")
    async def fetch_spend(self) -> None:
        """Today's and this month's spend by app and by model."""
        feed = self.feed
        try:
            view = SpendView(
                day_by_app=await feed.spend("day", "app"),
                day_by_model=await feed.spend("day", "model"),
                month_by_app=await feed.spend("month", "app"),
                month_by_model=await feed.spend("month", "model"),
            )
        except QuotadError as error:
            view = SpendView(unavailable=error.message)
        self.monitor.spend = view
        self.repaint()


def run_tui(
    socket: str | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    sockets: Sequence[str | os.PathLike[str]] | None = None,
) -> None:
    """Run ``quotad top`` against the daemon at ``socket`` (or the first of ``sockets`` that
    answers) until the user quits."""
    TopApp(DaemonFeed(socket, interval_s, sockets=sockets)).run()
