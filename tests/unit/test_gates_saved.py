"""The gates across a restart, on virtual clocks: what a run counted is saved (``gates.state``)
and counted again by the next run, so a restart does not let a provider's whole window through
a second time (before: a restart under load drew a 429 for every request of the next window).
Merged entries only ever count longer; a wall clock set back never holds a window longer; a
file that is not a saved state is left unused."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.gates import MAX_RESUMED_PAUSES, Gates, SlidingWindow
from quotad.daemon.gates import saved as saved_module
from quotad.daemon.gates.saved import (
    MAX_SAVED_PER_WINDOW,
    SavedGate,
    SavedGates,
    SavedWindow,
    capture,
    read_saved,
    saved_path,
    to_saved,
    write_saved,
)
from quotad.daemon.gates.window import Gate

PROVIDER = '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
WALL = 1_790_000_000.0


def make_gates(text: str, clock: VirtualClock) -> Gates:
    return Gates(parse_config(tomllib.loads(PROVIDER + text)), clock)


def first_run(text: str) -> tuple[Gates, VirtualClock]:
    """Gates of ``text`` on a clock that starts at wall time :data:`WALL`, and the clock."""
    clock = VirtualClock(epoch=WALL)
    return make_gates(text, clock), clock


def admitted(gates: Gates, count: int, app: str = "any", tokens: int = 10) -> int:
    """How many of ``count`` requests go at once, each sent and settled as reserved."""
    demand = gates.demand("p", "p/m", app, tokens)
    went = 0
    for _ in range(count):
        reservation = gates.admit_now(demand)
        if reservation is None:
            break
        gates.sent(reservation)
        gates.settle(reservation, None)
        went += 1
    return went


def restarted(
    gates: Gates, text: str, down_s: float, *, wall_shift: float = 0.0
) -> tuple[Gates, VirtualClock]:
    """``gates`` saved now, and a new run (its own monotonic clock, started ``down_s`` later
    by the wall clock, ``wall_shift`` more if it was set) counting them again."""
    saved = msgspec.msgpack.decode(
        msgspec.msgpack.encode(to_saved(gates.capture())), type=SavedGates
    )
    clock = VirtualClock(start=50.0, epoch=gates.clock.time() + down_s + wall_shift)
    again = make_gates(text, clock)
    again.resume(saved)
    return again, clock


def test_a_restart_keeps_a_provider_window_full() -> None:
    text = "pace = false\nlimits = [{ requests = 20, window_s = 10 }]\n"
    gates, clock = first_run(text)
    assert admitted(gates, 30) == 20
    clock.advance(2.0)
    again, again_clock = restarted(gates, text, down_s=1.0)
    assert admitted(again, 5) == 0  # the provider still counts all 20
    waiting = again.demand("p", "p/m", "any", 10)
    assert waiting.available_at(again.clock.monotonic()) == pytest.approx(
        again.clock.monotonic() + 10.0 + 0.05 - 3.0, abs=0.05
    )
    again_clock.advance(7.2)  # 3 s had passed of the 10.05
    assert admitted(again, 30) == 20


def test_the_code_before_saved_nothing_so_a_fresh_run_admits_a_second_window() -> None:
    """What the restart did before: a second window at once, which the provider refuses."""
    text = "pace = false\nlimits = [{ requests = 20, window_s = 10 }]\n"
    gates, _ = first_run(text)
    assert admitted(gates, 20) == 20
    assert admitted(make_gates(text, VirtualClock(epoch=WALL + 1.0)), 20) == 20


def test_the_pace_tokens_and_an_app_window_are_kept_too() -> None:
    text = "rpm = 60\ntpm = 1000\n[apps.a]\nrpm = 4\n"
    gates, _ = first_run(text)
    assert admitted(gates, 10, app="a") == 4  # the app's 4
    again, _again_clock = restarted(gates, text, down_s=0.5)
    assert admitted(again, 10, app="a") == 0
    others = admitted(again, 10, app="b")
    assert others == 3  # the pace: 7 at once (1 a second, bursts of 6), 4 of them taken
    usage = {
        (gate.name, window.unit): window.usage(again.clock.monotonic())
        for gate in again.demand("p", "p/m", "a", 0).gates
        for window in gate.windows
    }
    assert usage[("provider:p", "tokens")] == 10 * (4 + others)
    assert usage[("app:a", "requests")] == 4


def test_a_pause_after_a_429_is_kept_and_ends_when_it_did() -> None:
    gates, clock = first_run("")
    gates.pause("p/m", 30.0)
    clock.advance(5.0)
    again, _again_clock = restarted(gates, "", down_s=5.0)
    until = again.paused_until("p/m")
    assert until is not None
    assert until == pytest.approx(WALL + 30.0)
    assert again.paused_until("q/m") is None


def test_a_wall_clock_set_back_never_holds_a_window_longer() -> None:
    text = "pace = false\nlimits = [{ requests = 5, window_s = 10 }]\n"
    gates, clock = first_run(text)
    assert admitted(gates, 5) == 5
    clock.advance(4.0)
    again, again_clock = restarted(gates, text, down_s=0.0, wall_shift=-3600.0)  # set back an hour
    assert admitted(again, 1) == 0
    again_clock.advance(6.05)  # as if no time had passed: 10.05 - 4
    assert admitted(again, 5) == 5


def test_a_clock_set_forward_lets_them_expire() -> None:
    text = "pace = false\nlimits = [{ requests = 5, window_s = 10 }]\n"
    gates, _ = first_run(text)
    assert admitted(gates, 5) == 5
    assert admitted(restarted(gates, text, down_s=11.0)[0], 5) == 5


def test_a_window_no_longer_configured_or_of_another_length_is_not_resumed() -> None:
    gates, _ = first_run("pace = false\nrpm = 5\n[apps.a]\nrpm = 2\n")
    assert admitted(gates, 5, app="a") == 2
    again, _again_clock = restarted(
        gates, "pace = false\nlimits = [{ requests = 5, window_s = 30 }]\n", 1.0
    )
    assert admitted(again, 5, app="a") == 5  # rpm 5's two are not the 30 s window's (a
    # restart puts back windows of the same length only; a reload counts them in a new one)


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=400),
    amounts=st.lists(st.integers(1, 50), min_size=400, max_size=400),
    later=st.floats(0.0, 25.0),
)
def test_a_resumed_window_counts_as_much_as_the_saved_one_never_less(
    gaps: list[float], amounts: list[int], later: float
) -> None:
    """Merged into at most MAX_SAVED_PER_WINDOW entries (here 1,024 over a span of 20.05 s:
    ~20 ms each), a window counts every unit it counted, each as long or longer."""
    window = SlidingWindow("tokens", 10**9, 20.0, 0.05)
    gate = Gate("provider:p", "provider", [window])
    now = 0.0
    for gap, amount in zip(gaps, amounts, strict=False):
        now += gap
        window.admit(amount, now)
    saved = to_saved(capture([gate], now, 1000.0))  # a small wall time: exact enough here
    entries = saved.gates[0].windows[0].admissions if saved.gates else []
    assert len(entries) <= MAX_SAVED_PER_WINDOW
    resumed = SlidingWindow("tokens", 10**9, 20.0, 0.05)
    resumed.resume([(when - 900.0, units) for when, units in entries], -1.0, 0, -1.0, 100.0)
    assert resumed.usage(100.0) == window.usage(now)
    assert resumed.usage(100.0 + later) >= window.usage(now + later)
    assert resumed.usage(100.0 + later + 0.021) <= window.usage(now + later)


@pytest.mark.parametrize("gap", [0.0005, 0.0586, 0.0587, 0.0587085])
def test_many_admissions_are_merged_into_a_file_that_reads_back(gap: float) -> None:
    """Admissions over the whole span (60.05 s), at gaps near a merge's width: never more
    entries than a file may hold (one more, and the whole file would be refused)."""
    window = SlidingWindow("requests", 10**6, 60.0, 0.05)
    count = int(60.05 / gap)
    for index in range(count):
        window.admit(1, 1000.0 + index * gap)
    now = 1000.0 + (count - 1) * gap
    saved = to_saved(capture([Gate("provider:p", "provider", [window])], now, WALL))
    read = msgspec.msgpack.decode(msgspec.msgpack.encode(saved), type=SavedGates)
    entries = read.gates[0].windows[0].admissions
    assert len(entries) <= MAX_SAVED_PER_WINDOW
    assert sum(units for _, units in entries) == window.usage(now)


def test_the_file_is_written_whole_and_read_back(tmp_path: Path) -> None:
    directory = tmp_path
    path = saved_path(directory)
    gates, _ = first_run("rpm = 10\n")
    admitted(gates, 3)
    write_saved(path, to_saved(gates.capture(), stopped=True), durable=True)
    read = read_saved(path)
    assert read is not None
    assert read.stopped
    assert read == to_saved(gates.capture(), stopped=True)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in directory.iterdir()] == ["gates.state"]  # no temporary left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00garbage",
        msgspec.msgpack.encode({"format": 2, "saved_at": 1.0, "gates": []}),
        msgspec.msgpack.encode({"format": 1, "saved_at": -5.0, "gates": []}),
        msgspec.msgpack.encode(
            {"format": 1, "saved_at": 1.0, "gates": [["p/m", None, [["tokens", 1.0, [[1.0, -3]]]]]]}
        ),
        msgspec.msgpack.encode({"format": 1, "saved_at": float("nan"), "gates": []}),
        b"\x91" * 100_000,  # nested arrays
    ],
    ids=["empty", "garbage", "format", "negative-time", "negative-units", "nan", "nested"],
)
def test_a_file_that_is_no_saved_state_is_left_unused_with_a_warning(
    content: bytes, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = saved_path(tmp_path)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert read_saved(path) is None
    assert f"{path} is not a saved state" in caplog.text


def test_no_file_is_nothing_saved_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    directory = tmp_path
    path = saved_path(directory)
    assert read_saved(path) is None
    gates, _ = first_run("rpm = 10\n")
    admitted(gates, 2)
    write_saved(path, to_saved(gates.capture()), durable=False)
    before = path.read_bytes()
    (directory / ".gates.state.tmp").mkdir()  # the temporary cannot be written
    with pytest.raises(OSError):
        write_saved(path, to_saved(gates.capture()), durable=True)
    assert path.read_bytes() == before


def test_a_fifo_or_an_oversized_file_is_not_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A FIFO no process writes reads as empty (never holding the start); a file past the
    bound is not read."""
    path = saved_path(tmp_path)
    os.mkfifo(path)
    with caplog.at_level(logging.WARNING):
        assert read_saved(path) is None
    assert "is not a saved state" in caplog.text
    path.unlink()
    monkeypatch.setattr(saved_module, "MAX_FILE_BYTES", 10)
    path.write_bytes(b"x" * 11)
    with caplog.at_level(logging.WARNING):
        assert read_saved(path) is None
    assert "larger than 10 bytes" in caplog.text


def test_admissions_not_left_yet_are_saved_as_counted_from_now() -> None:
    window = SlidingWindow("requests", 100, 10.0, 0.05)
    window.admit(1, 0.0, pending=True)  # a waiter admitted, its task not run yet
    window.admit(2, 1.0)
    window.admit(1, 2.0)
    saved = to_saved(capture([Gate("provider:p", "provider", [window])], 30.0, WALL))
    # at 30 s the two sent ones have expired (10.05 s), the pending one counts from now
    assert saved.gates[0].windows[0].admissions == [(WALL, 1)]


def test_only_gates_that_count_something_are_copied() -> None:
    """10,000 idle app gates took 100 ms of the event loop a second to copy."""
    gates, clock = first_run("rpm = 60\n" + "".join(f"[apps.a{n}]\nrpm = 5\n" for n in range(50)))
    admitted(gates, 1, app="a7")
    gates.pause("p/m", 5.0)
    assert sorted(name for name, _, _ in gates.capture().gates) == ["app:a7", "p/m", "provider:p"]
    clock.advance(61.0)  # the window and the pace have passed, and the pause
    assert gates.capture().gates == []


def test_a_window_the_file_repeats_is_put_back_once() -> None:
    """A hand-made file repeating a window (no daemon writes one) was merged again for each
    copy, a sort of the whole log each time: 400 copies of a full window (4.5 MB) held the
    start for 13.5 s, 64 MB would for about an hour; now its first entry is counted."""
    text = "pace = false\nlimits = [{ requests = 5000, window_s = 60 }]\n"
    entries = [(WALL - 1.0 + index * 1e-4, 1) for index in range(MAX_SAVED_PER_WINDOW)]
    window = SavedWindow("requests", 60.0, entries)
    copies = [SavedGate("provider:p", None, [window, window]) for _ in range(50)]
    clock = VirtualClock(start=50.0, epoch=WALL + 1.0)
    gates = make_gates(text, clock)
    resumed = gates.resume(SavedGates(format=1, saved_at=WALL, gates=copies))
    assert (resumed.windows, resumed.units) == (1, MAX_SAVED_PER_WINDOW)
    assert len(gates.capture().gates[0][2][0].log) == MAX_SAVED_PER_WINDOW


def test_a_file_cannot_make_more_paused_targets_than_a_router_names() -> None:
    """Each paused target a file names is a gate made again: a file naming a million made a
    million (4.2 s at start, 770 MB)."""
    names = [f"p/invented-{n}" for n in range(MAX_RESUMED_PAUSES + 500)]
    saved = SavedGates(
        format=1, saved_at=WALL, gates=[SavedGate(name, WALL + 60.0, []) for name in names]
    )
    gates, _ = first_run("")
    gates.resume(saved)
    paused = [gate.name for gate in gates.status()[0] if gate.paused_until is not None]
    assert len(paused) == MAX_RESUMED_PAUSES


def test_a_window_takes_back_its_newest_limit_of_entries_at_most() -> None:
    """A window of 5 requests given 1,024 entries (a file not written by it) keeps the
    newest 5: full until the fifth newest leaves, as it would be with all of them."""
    window = SlidingWindow("requests", 5, 10.0, 0.05)
    entries = [(90.0 + n * 0.005, 1) for n in range(1024)]  # the newest at 95.115
    assert window.resume(entries, -1.0, 0, -1.0, 100.0) == 5
    assert len(window.admissions(100.0)) == 5
    assert not window.fits(1, 100.0)
    assert window.free_at(1, 100.0) == pytest.approx(entries[-5][0] + 10.05)
