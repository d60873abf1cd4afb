"""Pilot tests of what ``quotad top`` says in the corners a new user trips on: the health of a
target with recent failures, the limit in force when the provider's is tighter, the length of
the Requests tail, the Spend screen while disconnected, and a long reason for waiting."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from quotad.protocol.messages import Snapshot
from quotad.tui.app import TopApp
from quotad.tui.feed import FeedEvent, Waiting
from quotad.tui.monitor import TAIL_RECORDS
from quotad.tui.screens.requests import RequestsScreen
from quotad.tui.widgets.gauges import LimitGauges
from quotad.tui.widgets.table import LiveTable
from quotad.tui.widgets.targets import COLUMNS, TargetTable
from quotad.tui.widgets.text import LiveText
from tests.tui.pilots import wait_until
from tests.tui.scripted import WAITING_ONLY, ScriptedFeed, busy_day

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),  # Textual runs on asyncio
]
SIZE = (120, 36)
README = Path(__file__).parents[2] / "README.md"


def shown(widget: LiveText) -> str:
    return str(widget.render())


def with_target(events: list[FeedEvent], name: str, **changes: object) -> list[FeedEvent]:
    """``events`` with target ``name`` of every snapshot changed."""
    changed: list[FeedEvent] = []
    for event in events:
        if isinstance(event, Snapshot):
            targets = [
                msgspec.structs.replace(t, **changes) if t.name == name else t
                for t in event.status.targets
            ]
            status = msgspec.structs.replace(event.status, targets=targets)
            event = msgspec.structs.replace(event, status=status)
        changed.append(event)
    return changed


async def test_a_target_with_recent_failures_says_why_it_is_degraded_not_100_percent() -> None:
    events = with_target(
        busy_day(3),
        "openai/gpt-4o-mini",
        health="degraded",
        uptime_pct=100.0,
        recent="." * 40 + "..x.....x.",
    )
    feed = ScriptedFeed(events)
    app = TopApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        table = app.screen.query_one(TargetTable)
        await wait_until(pilot, lambda: table.row_count == 4)
        labels = [column.label for column in COLUMNS]
        row = [str(cell) for cell in table.get_row_at(0)]
        assert row[labels.index("health")] == "degraded 2/10"
        assert row[labels.index("uptime")] == "100%"
        assert not any(re.search(r"degraded \d+(\.\d+)?%", cell) for cell in row)
        half_open = [str(cell) for cell in table.get_row_at(1)]
        assert half_open[labels.index("health")] == "degraded"


async def test_limits_show_the_providers_gates_and_the_limit_in_force() -> None:
    feed = ScriptedFeed(busy_day(3))
    app = TopApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        gauges = app.screen.query_one(LimitGauges)
        await wait_until(pilot, lambda: "openai/gpt-4o" in shown(gauges))
        text = shown(gauges)
        # every target of a provider with limits shows them (the daemon lists no gate names)
        block = text.split("openai/gpt-4o\n", 1)[1]
        assert block.lstrip().startswith("provider openai")
        assert "no limits configured" not in text.split("groq/")[0]
        # 17 used of 20, the provider's count leaves 3: the limit in force is 3, 0 of it ours
        assert re.search(r"requests/2s .* 0/3 \(20 configured\)", text), text


async def test_the_requests_tail_says_how_many_it_keeps_as_the_readme_does() -> None:
    feed = ScriptedFeed(busy_day(3))
    app = TopApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await pilot.press("4")
        assert isinstance(app.screen, RequestsScreen)
        title = str(app.screen.query_one(LiveTable).border_title)
        assert f"last {TAIL_RECORDS}" in title
    readme = " ".join(README.read_text().split())  # lines wrapped anywhere
    assert f"the last {TAIL_RECORDS} requests" in readme
    assert f"the last {TAIL_RECORDS} finished requests seen" in readme


async def test_spend_while_disconnected_says_so_not_no_budgets() -> None:
    feed = ScriptedFeed(WAITING_ONLY)
    app = TopApp(feed)
    async with app.run_test(size=SIZE) as pilot:
        await feed.delivered.wait()
        await pilot.press("3")
        budgets = app.screen.query_one("#budgets", LiveText)
        await wait_until(pilot, lambda: "quotad" in shown(budgets))
        assert "no budgets configured" not in shown(budgets)
        assert "not connected to quotad" in shown(budgets)


@pytest.mark.parametrize("width", [120, 160])
async def test_a_long_reason_for_waiting_is_shown_whole(width: int) -> None:
    reason = (
        "/run/user/1000/quotad/quotad.sock: no such socket; /run/quotad/quotad.sock: "
        "permission denied (add this user to the group quotad); /tmp/quotad-1000/quotad.sock: "
        "connection refused, the-last-words-of-the-reason"
    )
    feed = ScriptedFeed([Waiting(reason)])
    app = TopApp(feed)
    async with app.run_test(size=(width, 36)) as pilot:
        await feed.delivered.wait()
        await pilot.pause()
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "the-last-words-of-the-reason" in screen
