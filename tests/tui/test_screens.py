"""Snapshot tests: every screen of ``quotad top`` at 120 x 36 from deterministic snapshot data.

The data comes through the feed seam (:mod:`tests.tui.scripted`); the SVGs under
``__snapshots__`` are the accepted pictures (``pytest --snapshot-update`` rewrites them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest
from textual.pilot import Pilot

from quotad.client import BadRequestError
from quotad.tui.app import TopApp
from tests.tui.scripted import WAITING_ONLY, ScriptedFeed, busy_day

SIZE = (120, 36)
SnapCompare = Callable[..., bool]


def after_feed(
    feed: ScriptedFeed, keys: Sequence[str] = (), *, spend: bool = False
) -> Callable[[Pilot[None]], Awaitable[None]]:
    """A ``run_before`` that waits for the feed to be delivered, then presses ``keys`` (and
    waits for the spend reports when ``spend``)."""

    async def run_before(pilot: Pilot[None]) -> None:
        await feed.delivered.wait()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        if spend:
            app = pilot.app
            assert isinstance(app, TopApp)
            for _ in range(100):
                if app.monitor.spend.day_by_app or app.monitor.spend.unavailable:
                    break
                await pilot.pause(0.01)
            await pilot.pause()

    return run_before


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param((), id="overview"),
        pytest.param(("2",), id="apps"),
        pytest.param(("4",), id="requests"),
        pytest.param(("5",), id="cache"),
        pytest.param(("question_mark",), id="help"),
        pytest.param(("d",), id="confirm-disable"),
    ],
)
def test_screen(snap_compare: SnapCompare, keys: tuple[str, ...]) -> None:
    feed = ScriptedFeed(busy_day())
    assert snap_compare(TopApp(feed), terminal_size=SIZE, run_before=after_feed(feed, keys))


def test_spend_screen(snap_compare: SnapCompare) -> None:
    feed = ScriptedFeed(busy_day())
    run_before = after_feed(feed, ["3"], spend=True)
    assert snap_compare(TopApp(feed), terminal_size=SIZE, run_before=run_before)


def test_spend_screen_without_reports(snap_compare: SnapCompare) -> None:
    refusal = BadRequestError("Spend is not supported by this daemon version")
    feed = ScriptedFeed(busy_day(), spend=refusal)
    run_before = after_feed(feed, ["3"], spend=True)
    assert snap_compare(TopApp(feed), terminal_size=SIZE, run_before=run_before)


def test_waiting_for_the_daemon(snap_compare: SnapCompare) -> None:
    feed = ScriptedFeed(WAITING_ONLY)
    assert snap_compare(TopApp(feed), terminal_size=SIZE, run_before=after_feed(feed))
