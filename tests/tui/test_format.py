"""How figures read in ``quotad top``: bars, sparklines, durations, money; and the words the
feed uses for an absent daemon."""

from __future__ import annotations

import math
import subprocess
import sys

import anyio
import pytest

import quotad.tui.feed
from quotad.client import ConnectionLostError, DaemonUnavailableError, UnknownModelError
from quotad.tui.feed import DaemonFeed, FeedEvent, Waiting, why_unavailable
from quotad.tui.format import bar, milliseconds, percent, seconds, size, spark, usd


def test_bars_fill_in_eighths_and_warn_near_full() -> None:
    assert bar(0.5, 4).plain == "██··"
    assert bar(1 / 16, 2).plain == "▏·"
    assert bar(2.0, 3).plain == "███"  # clamped
    assert bar(-1.0, 3).plain == "···"
    assert bar(0.5, 10).style == "green"
    assert bar(0.75, 10).style == "yellow"
    assert bar(0.95, 10).style == "red"


def test_sparklines_scale_to_the_peak_keep_gaps_and_right_align() -> None:
    assert spark([0.0, 5.0, 10.0], 3).plain == "▁▅█"
    assert spark([1.0, None, 1.0], 3).plain == "█ █"
    assert spark([0.5], 3, top=1.0).plain == "  ▅"
    assert spark([float(v) for v in range(100)], 4).plain == "████"  # the last four only
    assert spark([], 2).plain == "  "


def test_durations_sizes_and_money() -> None:
    assert [seconds(v) for v in (None, 0.25, 2.44, 185, 7800, 200_000)] == [
        "-", "250ms", "2.4s", "3m05s", "2h10m", "2d7h",
    ]  # fmt: skip
    assert [size(v) for v in (512, 2048, 48_500_000, 3 * 1024**3)] == [
        "512 B", "2.0 KiB", "46.3 MiB", "3.0 GiB",
    ]  # fmt: skip
    assert [usd(v) for v in (None, 0.00042, 0.000022, 12.5, 1234.5)] == [
        "-",
        "$0.00042",
        "$0.000022",
        "$12.50",
        "$1,234.50",
    ]


NOT_FINITE = (math.nan, math.inf, -math.inf)


def test_figures_that_are_not_finite_numbers_read_as_absent() -> None:
    """Only a buggy daemon (or one of another version) sends them: they raised ValueError or
    OverflowError in a repaint, which ended ``quotad top``."""
    for format_figure in (seconds, milliseconds, percent, usd, size):
        assert [format_figure(value) for value in NOT_FINITE] == ["-"] * 3
    assert [bar(value, 4).plain for value in NOT_FINITE] == ["····", "████", "····"]
    assert [spark([1.0, value], 2).plain for value in NOT_FINITE] == ["█ "] * 3
    assert spark([1.0, 0.5], 2, top=math.nan).plain == "█▅"


def test_huge_figures_are_shown_not_raised() -> None:
    assert spark([1e-308, 1e308], 2, top=1e-308).plain == "██"
    assert spark([1.0, -1e308], 2).plain == "█▁"
    assert seconds(1e308).endswith("h")
    assert usd(1e308).startswith("$100,000")


def test_why_the_daemon_is_unavailable_in_few_words() -> None:
    one = DaemonUnavailableError.after_trying([("/x/q.sock", "no such socket")])
    assert why_unavailable(one) == "no such socket"
    two = DaemonUnavailableError.after_trying(
        [("/a.sock", "no such socket"), ("/b.sock", "permission denied")]
    )
    assert why_unavailable(two) == "/a.sock: no such socket; /b.sock: permission denied"
    assert why_unavailable(ConnectionLostError("gone")) == "lost the connection to the daemon"
    assert why_unavailable(UnknownModelError("nope")) == "unknown_model: nope"


def test_an_interval_outside_what_subscribe_accepts_is_refused() -> None:
    with pytest.raises(ValueError, match=r"interval_s=0\.01 is outside"):
        DaemonFeed("/x.sock", 0.01)
    result = subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", "top", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--interval 0 is outside 0.05-3600 s" in result.stderr


def test_the_feed_outlives_an_unexpected_error_and_says_what_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Exploding:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        async def __aenter__(self) -> Exploding:
            raise RuntimeError("a surprise from the connection")

        async def __aexit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(quotad.tui.feed, "AsyncClient", Exploding)
    events: list[FeedEvent] = []

    async def follow_a_while() -> None:
        with anyio.move_on_after(0.6):
            await DaemonFeed("/x.sock").follow(events.append)

    anyio.run(follow_a_while)
    assert len(events) >= 2  # it kept retrying
    assert events[0] == Waiting("RuntimeError: a surprise from the connection")
