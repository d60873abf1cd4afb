"""What ``quotad top`` knows: the latest snapshot and bounded histories derived from the stream.

:class:`Monitor` is plain data, no Textual: the app feeds it every :data:`FeedEvent` and the
screens render from it. Everything it keeps is bounded — the latest :class:`Snapshot` only, the
last :data:`HISTORY_POINTS` points of each trend, the last :data:`TAIL_RECORDS` finished requests,
at most :data:`MAX_APPS` apps — so a burst of traffic or a slow terminal never grows it.

A daemon that stops answering without closing the connection (stopped with SIGSTOP, wedged,
swamped) sends no snapshot and no error: :meth:`Monitor.silent_s` tells how long it has been
silent once that is past :data:`STALE_INTERVALS` intervals (and :data:`STALE_MIN_S`), so that
the screen says its figures are stale instead of showing them as live.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from quotad.protocol.messages import (
    ANSWERED,
    SNAPSHOT_REQUESTS,
    AppStatus,
    GateStatus,
    RequestRecord,
    Snapshot,
    SpendReply,
    StatusReply,
    TargetStatus,
)
from quotad.tui.feed import DEFAULT_INTERVAL_S, Connected, FeedEvent, Waiting

HISTORY_POINTS: Final = 120
TAIL_RECORDS: Final = SNAPSHOT_REQUESTS
"""Finished requests kept: as many as one snapshot brings at most, which the Requests screen
shows whole."""
MAX_APPS: Final = 200
OTHER_APPS: Final = "(other apps)"
STALE_INTERVALS: Final = 4
"""Snapshot intervals without one after which the daemon's figures are shown as stale."""
STALE_MIN_S: Final = 2.0
"""…and not before this many seconds (a short interval is not kept to the millisecond)."""

ConnectionState = Literal["connecting", "connected", "waiting"]


def _history() -> deque[float | None]:
    return deque(maxlen=HISTORY_POINTS)


@dataclass(slots=True)
class AppActivity:
    """What the finished requests seen of one app add up to (since ``quotad top`` started)."""

    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    wait_s: float = 0.0
    latency_s: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    priority: str = "normal"

    def add(self, record: RequestRecord) -> None:
        """Count one finished request."""
        self.requests += 1
        self.errors += record.status not in ANSWERED
        self.cache_hits += record.cached
        self.wait_s += record.wait_s
        self.latency_s += record.latency_s
        self.tokens += record.prompt_tokens + record.completion_tokens
        self.cost_usd += record.cost_usd
        self.priority = record.priority


@dataclass(slots=True)
class TargetTrend:
    """One target's recent requests per second and provider latency, one point per snapshot."""

    requests_per_s: deque[float | None] = field(default_factory=_history)
    latency_s: deque[float | None] = field(default_factory=_history)
    requests_seen: int | None = None


@dataclass(slots=True)
class SpendView:
    """The spend reports last fetched, or why there are none."""

    day_by_app: SpendReply | None = None
    day_by_model: SpendReply | None = None
    month_by_app: SpendReply | None = None
    month_by_model: SpendReply | None = None
    unavailable: str = ""


def provider_latencies(records: Iterable[RequestRecord]) -> list[float]:
    """Latencies of the records that reached a provider and succeeded (not cache hits)."""
    return [r.latency_s for r in records if r.status in ANSWERED and not r.cached]


class Monitor:
    """The state of the daemon as ``quotad top`` last saw it, with bounded history."""

    def __init__(
        self,
        where: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self.stale_after_s = max(STALE_INTERVALS * interval_s, STALE_MIN_S)
        """Seconds without a snapshot, while connected, after which the figures are stale."""
        self._clock = clock
        self._heard_at: float | None = None
        """When the daemon last sent something: a snapshot, or the connection's welcome."""
        self.state: ConnectionState = "connecting"
        self.reason = ""
        self.daemon_version = ""
        self.snapshot: Snapshot | None = None
        self.snapshots = 0
        self.requests_per_s: deque[float | None] = _history()
        self.latency_s: deque[float | None] = _history()
        self.cache_hit_rate: deque[float | None] = _history()
        self.targets: dict[str, TargetTrend] = {}
        self.tail: deque[RequestRecord] = deque(maxlen=TAIL_RECORDS)
        self.apps: dict[str, AppActivity] = {}
        self.spend = SpendView()
        self._fresh = True

    # ----------------------------------------------------------------- feeding

    def absorb(self, event: FeedEvent) -> None:
        """Take one event from the feed."""
        match event:
            case Snapshot():
                self._absorb_snapshot(event)
            case Connected():
                self.state = "connected"
                self.reason = ""
                self.daemon_version = event.daemon_version
                self._fresh = True
                self._heard_at = self._clock()
            case Waiting():
                self.state = "waiting"
                self.reason = event.reason

    def _absorb_snapshot(self, snapshot: Snapshot) -> None:
        previous = None if self._fresh else self.snapshot
        self._fresh = False
        self.snapshot = snapshot
        self.snapshots += 1
        self.state = "connected"
        self._heard_at = self._clock()
        status = snapshot.status
        records = snapshot.requests
        if previous is not None:
            self.requests_per_s.append(snapshot.requests_per_s)
            self.latency_s.append(_mean(provider_latencies(records)))
        self.cache_hit_rate.append(status.cache.hit_rate if status.cache.mode != "off" else None)
        interval = snapshot.time - previous.time if previous is not None else 0.0
        self._absorb_targets(status.targets, records, interval)
        self.tail.extend(records)
        for record in records:
            self._app(record.app or "(unnamed)").add(record)

    def _absorb_targets(
        self, targets: list[TargetStatus], records: list[RequestRecord], interval: float
    ) -> None:
        by_target: dict[str, list[RequestRecord]] = {}
        for record in records:
            by_target.setdefault(record.target, []).append(record)
        trends: dict[str, TargetTrend] = {}
        for target in targets:
            trend = self.targets.get(target.name) or TargetTrend()
            trends[target.name] = trend
            seen = trend.requests_seen
            if seen is not None and interval > 0 and target.requests >= seen:
                trend.requests_per_s.append((target.requests - seen) / interval)
                trend.latency_s.append(_mean(provider_latencies(by_target.get(target.name, ()))))
            trend.requests_seen = target.requests
        self.targets = trends

    def _app(self, name: str) -> AppActivity:
        activity = self.apps.get(name)
        if activity is None:
            if len(self.apps) >= MAX_APPS:
                name = OTHER_APPS
            activity = self.apps.setdefault(name, AppActivity())
        return activity

    # ----------------------------------------------------------------- reading

    def silent_s(self) -> float | None:
        """Seconds since the connected daemon last sent anything, when that is at least
        :attr:`stale_after_s`; None while it is heard from in time, or not connected (then
        the connection state says why)."""
        if self.state != "connected" or self._heard_at is None:
            return None
        silent = self._clock() - self._heard_at
        return silent if silent >= self.stale_after_s else None

    @property
    def status(self) -> StatusReply | None:
        """The daemon's status as of the latest snapshot."""
        return self.snapshot.status if self.snapshot is not None else None

    @property
    def now(self) -> float:
        """The daemon's wall-clock time of the latest snapshot (0 before the first)."""
        return self.snapshot.time if self.snapshot is not None else 0.0

    def gates_of(self, target: TargetStatus) -> list[GateStatus]:
        """The gates that apply to ``target``: its provider's, then its own (per-model limits
        and 429 pauses), or the ones the target lists."""
        status = self.status
        if status is None:
            return []
        by_name = {gate.name: gate for gate in status.gates}
        return [by_name[name] for name in _gate_names(target) if name in by_name]

    def other_gates(self) -> list[GateStatus]:
        """The gates of no target (app gates, for one)."""
        status = self.status
        if status is None:
            return []
        listed = {name for target in status.targets for name in _gate_names(target)}
        return [gate for gate in status.gates if gate.name not in listed]

    def app_rows(self) -> list[tuple[str, AppStatus | None, AppActivity | None]]:
        """Every app the daemon reports or a seen request named, sorted by name."""
        reported = {app.name: app for app in self.status.apps} if self.status else {}
        names = sorted(set(reported) | set(self.apps))
        return [(name, reported.get(name), self.apps.get(name)) for name in names]


def _gate_names(target: TargetStatus) -> list[str]:
    """The names of the gates of ``target``: those it lists, else the daemon's names for its
    provider's gate (``provider:NAME``) and its own (``provider/model``)."""
    return target.gates or [f"provider:{target.provider}", target.name]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def latest(values: Iterable[float | None]) -> float | None:
    """The newest known point of a trend (``None`` marks an interval without data)."""
    found = None
    for value in values:
        if value is not None:
            found = value
    return found


def peak(values: Iterable[float | None]) -> float | None:
    """The highest known point of a trend."""
    return max((value for value in values if value is not None), default=None)
