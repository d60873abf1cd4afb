"""The Monitor: what ``quotad top`` derives from the snapshot stream, and that it stays bounded."""

from __future__ import annotations

import pytest

from quotad.protocol.messages import RequestRecord, Snapshot, StatusReply, TargetStatus
from quotad.tui.feed import Connected, Waiting
from quotad.tui.monitor import HISTORY_POINTS, MAX_APPS, OTHER_APPS, TAIL_RECORDS, Monitor
from tests.tui.scripted import busy_day


def snapshot(seq: int, time: float, requests: int, records: list[RequestRecord]) -> Snapshot:
    target = TargetStatus(name="sim/m", requests=requests)
    return Snapshot(
        seq=seq,
        time=time,
        status=StatusReply(targets=[target]),
        requests=records,
        requests_per_s=float(len(records)),
    )


def record(
    app: str, latency_s: float, *, status: str = "ok", cached: bool = False
) -> RequestRecord:
    return RequestRecord(app=app, target="sim/m", latency_s=latency_s, status=status, cached=cached)


def test_target_rates_and_latency_come_from_consecutive_snapshots() -> None:
    monitor = Monitor("/x.sock")
    monitor.absorb(Connected("1"))
    monitor.absorb(snapshot(1, 100.0, 10, []))
    monitor.absorb(snapshot(2, 100.5, 15, [record("a", 0.2), record("a", 0.4)]))
    monitor.absorb(snapshot(3, 101.0, 15, [record("a", 0.001, cached=True)]))
    trend = monitor.targets["sim/m"]
    assert list(trend.requests_per_s) == [10.0, 0.0]
    # a cache hit is not provider latency: that interval has no latency point
    latency = list(trend.latency_s)
    assert latency[1] is None
    assert latency[0] == pytest.approx(0.3)
    assert list(monitor.requests_per_s) == [2.0, 1.0]  # the first snapshot has no rate yet


def test_a_reconnect_starts_rates_afresh() -> None:
    monitor = Monitor("/x.sock")
    monitor.absorb(Connected("1"))
    monitor.absorb(snapshot(1, 100.0, 500, []))
    monitor.absorb(Waiting("lost the connection to the daemon"))
    assert monitor.state == "waiting"
    assert monitor.snapshot is not None  # the last data stays on screen
    monitor.absorb(Connected("1"))
    monitor.absorb(snapshot(1, 130.0, 3, []))  # a restarted daemon counts from zero
    monitor.absorb(snapshot(2, 130.5, 4, []))
    assert list(monitor.targets["sim/m"].requests_per_s) == [2.0]


class Clock:
    """A clock that moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_daemon_silent_for_a_few_intervals_is_stale_until_it_speaks() -> None:
    """A daemon stopped with SIGSTOP kept its connection: its last figures showed as live."""
    clock = Clock()
    monitor = Monitor("/x.sock", interval_s=1.0, clock=clock)
    assert monitor.silent_s() is None  # connecting: the connection state says so
    monitor.absorb(Connected("1"))
    clock.now += 10.0
    assert monitor.silent_s() == 10.0  # connected, and not one snapshot since
    monitor.absorb(snapshot(1, 100.0, 1, []))
    clock.now += 3.9
    assert monitor.silent_s() is None  # within 4 intervals
    clock.now += 0.1
    assert monitor.silent_s() == pytest.approx(4.0)
    monitor.absorb(snapshot(2, 104.0, 2, []))
    assert monitor.silent_s() is None
    clock.now += 60.0
    monitor.absorb(Waiting("lost the connection to the daemon"))
    assert monitor.silent_s() is None  # waiting says why itself
    fast = Monitor("/x.sock", interval_s=0.05, clock=clock)
    fast.absorb(Connected("1"))
    clock.now += 1.9
    assert fast.silent_s() is None  # never before 2 s
    assert fast.stale_after_s == 2.0


def test_everything_kept_is_bounded() -> None:
    monitor = Monitor("/x.sock")
    monitor.absorb(Connected("1"))
    for seq in range(1, 1001):
        records = [record(f"app-{seq}-{n}", 0.1) for n in range(3)]
        monitor.absorb(snapshot(seq, seq * 0.1, seq * 3, records))
    assert len(monitor.tail) == TAIL_RECORDS
    assert monitor.tail[-1].app == "app-1000-2"
    assert len(monitor.requests_per_s) == HISTORY_POINTS
    assert len(monitor.targets["sim/m"].requests_per_s) == HISTORY_POINTS
    assert len(monitor.apps) == MAX_APPS + 1
    assert monitor.apps[OTHER_APPS].requests == 3000 - MAX_APPS


def test_apps_merge_the_daemon_report_with_requests_seen() -> None:
    monitor = Monitor("/x.sock")
    for event in busy_day(10):
        monitor.absorb(event)
    rows = monitor.app_rows()
    assert [name for name, _, _ in rows] == ["agent", "indexer", "notebook"]
    seen_total = sum(seen.requests for _, _, seen in rows if seen)
    assert seen_total == sum(len(e.requests) for e in busy_day(10) if isinstance(e, Snapshot))
    assert all(reported is not None for _, reported, _ in rows)


def test_gates_are_matched_to_targets_and_the_rest_are_other_gates() -> None:
    monitor = Monitor("/x.sock")
    for event in busy_day(2):
        monitor.absorb(event)
    status = monitor.status
    assert status is not None
    names = {t.name: [g.name for g in monitor.gates_of(t)] for t in status.targets}
    assert names["openai/gpt-4o-mini"] == ["provider:openai", "openai/gpt-4o-mini"]
    assert names["openai/gpt-4o"] == ["provider:openai"]  # the daemon lists no gate names
    assert names["groq/llama-3.1-8b-instant"] == []
    assert [g.name for g in monitor.other_gates()] == ["app:indexer"]


def test_a_semantic_hit_is_an_answer_not_an_error() -> None:
    """A semantic cache hit has its own ledger status (DESIGN §11), ``semantic``: it counts
    with the answers, as an exact hit's ``ok`` does."""
    monitor = Monitor("/x.sock")
    monitor.absorb(Connected("1"))
    hit = RequestRecord(app="a", status="semantic", cached=True, semantic=True)
    records = [hit, record("a", 0.2, status="timeout"), record("a", 0.1, cached=True)]
    monitor.absorb(snapshot(1, 100.0, 3, records))
    assert (monitor.apps["a"].requests, monitor.apps["a"].errors) == (3, 1)
