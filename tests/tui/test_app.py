"""Pilot tests of ``quotad top`` on a scripted feed: navigation, operator actions, help,
quitting, and that a burst of snapshots coalesces into few repaints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from textual.content import Content
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Static

from quotad.client import BadRequestError
from quotad.protocol.messages import Snapshot
from quotad.tui.app import SCREEN_TABS, STALE_CHECK_S, TopApp
from quotad.tui.feed import FeedEvent
from quotad.tui.screens.confirm import ConfirmScreen
from quotad.tui.screens.help import HelpScreen
from quotad.tui.widgets.connection import ConnectionBar
from quotad.tui.widgets.targets import TargetTable
from tests.tui.pilots import RecordingApp, connection_line, wait_until
from tests.tui.scripted import TARGETS, ScriptedFeed, busy_day

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # Textual runs on asyncio
]
SIZE = (120, 36)


def active(app: TopApp) -> Screen[object]:
    """The screen on top (a fresh read: key presses change it)."""
    return app.screen


@asynccontextmanager
async def settled(feed: ScriptedFeed) -> AsyncIterator[tuple[RecordingApp, Pilot[None]]]:
    """The app on ``feed`` under a pilot, once every scripted event is delivered and shown."""
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await pilot.pause()
        yield app, pilot


async def test_tab_and_number_keys_switch_screens() -> None:
    feed = ScriptedFeed(busy_day(5))
    app = RecordingApp(feed)
    modes = [mode for mode, _ in SCREEN_TABS]
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        assert app.current_mode == "overview"
        for expected in [*modes[1:], modes[0]]:
            await pilot.press("tab")
            assert app.current_mode == expected
        await pilot.press("shift+tab")
        assert app.current_mode == modes[-1]
        for number, mode in enumerate(modes, start=1):
            await pilot.press(str(number))
            assert app.current_mode == mode
            assert type(active(app)).__name__.lower() == f"{mode}screen"


async def test_help_lists_the_keys_and_blocks_switching_until_closed() -> None:
    feed = ScriptedFeed(busy_day(2))
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(active(app), HelpScreen)
        await pilot.press("2", "tab")
        assert isinstance(active(app), HelpScreen)
        assert app.current_mode == "overview"
        await pilot.press("escape")
        assert not isinstance(active(app), HelpScreen)
        await pilot.press("2")
        assert app.current_mode == "apps"


async def test_disable_asks_first_and_no_does_nothing() -> None:
    feed = ScriptedFeed(busy_day(3))
    async with settled(feed) as (app, pilot):
        await pilot.press("d")
        confirm = active(app)
        assert isinstance(confirm, ConfirmScreen)
        assert TARGETS[0] in confirm.question
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(active(app), ConfirmScreen)
        assert feed.admin_calls == []


@pytest.mark.parametrize(
    ("key", "action"), [("d", "target_disable"), ("e", "target_enable"), ("r", "target_reset")]
)
async def test_a_confirmed_action_runs_on_the_selected_target(key: str, action: str) -> None:
    feed = ScriptedFeed(busy_day(3))
    async with settled(feed) as (app, pilot):
        await pilot.press("down", "down", key, "y")
        await wait_until(pilot, lambda: bool(app.notices))
        assert feed.admin_calls == [(action, TARGETS[2])]
        assert app.notices[-1][0] == "information"
        assert app.notices[-1][2] == f"{action} {TARGETS[2]}: ok"


async def test_a_refused_action_shows_the_daemons_error() -> None:
    refusal = BadRequestError("admin action 'target_disable' is not supported [yet]")
    feed = ScriptedFeed(busy_day(3), admin_error=refusal)
    async with settled(feed) as (app, pilot):
        await pilot.press("d", "y")
        await wait_until(pilot, lambda: bool(app.notices))
        severity, title, message = app.notices[-1]
        assert severity == "error"
        assert title == "quotad refused"
        assert message == f"disable {TARGETS[0]}: {refusal.message}"


async def test_the_cursor_stays_on_its_target_across_snapshots() -> None:
    feed = ScriptedFeed(busy_day(3))
    async with settled(feed) as (app, pilot):
        await pilot.press("down")
        table = app.screen.query_one(TargetTable)
        assert table.cursor_key == TARGETS[1]
        for event in busy_day(6)[4:]:
            app.deliver(event)
        await pilot.pause()
        assert table.cursor_key == TARGETS[1]


async def test_a_burst_of_snapshots_coalesces_into_few_repaints() -> None:
    events: list[FeedEvent] = busy_day(500)
    feed = ScriptedFeed(events)
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await wait_until(pilot, lambda: app.repaints >= 1)
        await pilot.pause()
        assert app.monitor.snapshots == 500
        assert app.repaints == 1  # delivered in one go: one repaint, however slow the machine
        last = events[-1]
        assert isinstance(last, Snapshot)
        assert app.monitor.snapshot is last


async def test_q_quits() -> None:
    feed = ScriptedFeed(busy_day(2))
    app = RecordingApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    assert app.return_code == 0


@pytest.mark.parametrize(
    "name", ["sim/[/]", "sim/[@click=app.quit]x", "sim/[link=http://e]z[/link]", "sim/[b]bold"]
)
async def test_a_target_named_like_markup_is_confirmed_as_written(name: str) -> None:
    """Clients name targets (``provider/model``). Read as markup, ``[/]`` in one crashed
    ``quotad top`` (MarkupError) when its action was confirmed, and ``[@click=…]`` made its
    question run an action of the operator's app when clicked."""
    events = busy_day(3)
    for event in events:
        if isinstance(event, Snapshot):
            event.status.targets[0].name = name
    feed = ScriptedFeed(events)
    async with settled(feed) as (app, pilot):
        table = active(app).query_one(TargetTable)
        for _ in range(len(TARGETS)):
            if table.cursor_key == name:
                break
            await pilot.press("down")
        await pilot.press("d")
        await pilot.pause()
        confirm = active(app)
        assert isinstance(confirm, ConfirmScreen)
        shown = confirm.query_one("#question", Static).render()
        assert isinstance(shown, Content)
        assert shown.plain == f"Disable target {name}?"
        assert not any(span.style for span in shown.spans)  # nothing of it read as a style
        await pilot.press("y")
        await wait_until(pilot, lambda: bool(app.notices))
        assert feed.admin_calls == [("target_disable", name)]


async def test_a_silent_daemon_is_shown_stale_not_live() -> None:
    """A daemon stopped with SIGSTOP keeps its connection and sends nothing: the bar stayed
    green with frozen figures."""
    now = [5000.0]
    feed = ScriptedFeed(busy_day(3), interval_s=0.5)
    app = RecordingApp(feed, clock=lambda: now[0])
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await pilot.pause()
        bar = app.screen.query_one(ConnectionBar)
        assert "stale" not in connection_line(app)
        now[0] += 1.9  # under 4 intervals, and 2 s
        await pilot.pause(STALE_CHECK_S * 1.5)
        assert "stale" not in connection_line(app)
        assert not bar.has_class("-waiting")
        now[0] += 10.1
        await wait_until(pilot, lambda: "stale: no snapshot for 12.0s" in connection_line(app))
        assert app.screen.query_one(ConnectionBar).has_class("-waiting")
        now[0] += 3.0
        await wait_until(pilot, lambda: "no snapshot for 15.0s" in connection_line(app))
