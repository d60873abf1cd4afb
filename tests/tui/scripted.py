"""A scripted feed for ``quotad top`` tests: fixed snapshots, spend reports and admin answers.

:func:`busy_day` builds a deterministic stream of snapshots of a daemon with gates, breakers,
queues, apps, budgets and a cache, as the finished daemon reports them; :class:`ScriptedFeed`
delivers it through the same :class:`~quotad.tui.feed.Feed` seam as the real feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from quotad.client import QuotadError
from quotad.protocol.messages import (
    AppStatus,
    BudgetStatus,
    CacheStatus,
    Event,
    GateStatus,
    QueueStatus,
    RequestRecord,
    Snapshot,
    SpendReply,
    SpendRow,
    StatusReply,
    TargetStatus,
    WindowStatus,
)
from quotad.tui.feed import Connected, FeedEvent, SpendKey, SpendPeriod, Waiting

SOCKET = "/tmp/quotad-test/quotad.sock"
START = 1_767_000_000.0  # a fixed wall-clock time
INTERVAL_S = 0.5
APPS = ("agent", "indexer", "notebook")
TARGETS = (
    "openai/gpt-4o-mini",
    "anthropic/claude-3-5-haiku-latest",
    "groq/llama-3.1-8b-instant",
    "openai/gpt-4o",
)


def _gates(step: int) -> list[GateStatus]:
    """Named as the daemon names them: ``provider:NAME``, ``provider/model``, ``app:NAME``."""
    return [
        GateStatus(
            name="provider:openai",
            scope="provider",
            windows=[
                WindowStatus(unit="requests", limit=500, window_s=60, used=300 + step * 4),
                WindowStatus(unit="tokens", limit=200_000, window_s=60, used=140_000 + step * 900),
            ],
        ),
        GateStatus(
            name="openai/gpt-4o-mini",
            scope="model",
            windows=[
                WindowStatus(unit="requests", limit=20, window_s=2, used=17, provider_remaining=3)
            ],
        ),
        GateStatus(
            name="provider:anthropic",
            scope="provider",
            windows=[WindowStatus(unit="requests", limit=50, window_s=60, used=50)],
            paused_until=START + step * INTERVAL_S + 12.0,
        ),
        GateStatus(
            name="app:indexer",
            scope="app",
            windows=[WindowStatus(unit="requests", limit=60, window_s=60, used=12 + step)],
        ),
    ]


def _targets(step: int) -> list[TargetStatus]:
    """As the daemon reports them: no ``gates`` list (:meth:`Monitor.gates_of` finds them)."""
    return [
        TargetStatus(
            name=TARGETS[0], provider="openai", model="gpt-4o-mini", kind="openai",
            breaker="closed", health="healthy", uptime_pct=99.8, in_flight=3,
            requests=1000 + step * 6, failures=4, latency_ewma_s=0.412,
        ),
        TargetStatus(
            name=TARGETS[1], provider="anthropic", model="claude-3-5-haiku-latest",
            kind="anthropic", breaker="half_open", health="degraded", uptime_pct=91.0,
            in_flight=1, requests=400 + step * 2, failures=37,
            paused_until=START + step * INTERVAL_S + 12.0,
        ),
        TargetStatus(
            name=TARGETS[2], provider="groq", model="llama-3.1-8b-instant", kind="openai",
            breaker="open", health="unhealthy", uptime_pct=40.0, requests=250, failures=120,
        ),
        TargetStatus(
            name=TARGETS[3], provider="openai", model="gpt-4o", kind="openai", enabled=False,
            requests=12, unpriced=True,
        ),
    ]  # fmt: skip


def _records(step: int) -> list[RequestRecord]:
    records = []
    count = step % 4 + 1
    for index in range(count):
        number = step * 10 + index
        app = APPS[number % 3]
        cached = number % 5 == 0
        failed = number % 7 == 3
        records.append(
            RequestRecord(
                request_id=f"req-{number:05d}",
                time=START + step * INTERVAL_S - 0.1 * (count - 1 - index),
                app=app,
                target=TARGETS[number % 2],
                status="upstream_error" if failed else "ok",
                wait_s=0.05 * (number % 6),
                latency_s=0.002 if cached else 0.3 + 0.01 * (number % 9),
                prompt_tokens=120 + number % 50,
                completion_tokens=0 if failed else 40 + number % 30,
                cost_usd=0.0 if cached or failed else 0.0004 + 0.00001 * (number % 10),
                cached=cached,
                attempts=2 if failed else 1,
                priority={"agent": "high", "indexer": "low", "notebook": "normal"}[app],
            )
        )
    return records


def busy_status(step: int) -> StatusReply:
    """The daemon's state at ``step`` of :func:`busy_day`."""
    return StatusReply(
        daemon_version="0.1.0",
        pid=4242,
        uptime_s=3725.0 + step * INTERVAL_S,
        socket=SOCKET,
        connections=7,
        in_flight=4,
        requests_total=1662 + step * 8,
        targets=_targets(step),
        gates=_gates(step),
        queues=QueueStatus(low=9, normal=3, high=1, critical=0),
        cache=CacheStatus(
            mode="on", entries=812, bytes=48_500_000, max_bytes=268_435_456, hits=300 + step,
            misses=900 + step * 3, hit_rate=(300 + step) / (1200 + step * 4), evictions=17,
            saved_usd=0.4213, semantic_mode="shadow", semantic_entries=640, semantic_lookups=700,
            would_be_hits=96, shadow_compared=94, shadow_agreed=81, shadow_identical=12,
        ),
        budgets=[
            BudgetStatus(name="global", scope="global", period="day", limit_usd=20.0,
                         spent_usd=14.25, reserved_usd=0.35),
            BudgetStatus(name="global", scope="global", period="month", limit_usd=300.0,
                         spent_usd=96.5),
            BudgetStatus(name="indexer", scope="app", period="day", limit_usd=5.0,
                         spent_usd=4.7, reserved_usd=0.2, alert=True),
        ],
        events=[
            Event(time=START - 30.0, kind="breaker_open",
                  message="groq/llama-3.1-8b-instant: 5 failures in a row"),
            Event(time=START + step * INTERVAL_S - 4.0, kind="budget_alert",
                  message="indexer spent 94% of its $5.00 daily budget"),
            Event(time=START - 600.0, kind="reload", message="config reloaded"),
        ],
        apps=[
            AppStatus(name="agent", priority="high", share=3, requests=820, in_flight=2,
                      wait_s_total=41.0, spend_today_usd=6.1),
            AppStatus(name="indexer", priority="low", share=1, requests=700, in_flight=1,
                      queued=9, wait_s_total=420.0, spend_today_usd=4.7),
            AppStatus(name="notebook", priority="normal", share=2, requests=142, in_flight=1,
                      queued=3, wait_s_total=12.5, spend_today_usd=3.45, blocked=2,
                      entities={"email": 9, "secret": 2}),
        ],
    )  # fmt: skip


def busy_day(steps: int = 40) -> list[FeedEvent]:
    """Connected, then ``steps`` snapshots half a second apart."""
    events: list[FeedEvent] = [Connected("0.1.0")]
    for step in range(steps):
        events.append(
            Snapshot(
                seq=step + 1,
                time=START + step * INTERVAL_S,
                status=busy_status(step),
                requests=_records(step),
                requests_per_s=0.0 if step == 0 else 12.0 + (step * 7) % 11,
            )
        )
    return events


def _row(key: str, scale: float) -> SpendRow:
    return SpendRow(
        key=key, requests=int(400 * scale), errors=int(3 * scale),
        prompt_tokens=int(90_000 * scale), completion_tokens=int(30_000 * scale),
        cost_usd=round(4.8 * scale, 4), cache_hits=int(60 * scale),
        saved_usd=round(0.12 * scale, 4),
    )  # fmt: skip


def spend_report(period: SpendPeriod, by: SpendKey) -> SpendReply:
    """A fixed ledger report: three rows, totals, budgets, and a forecast for the month."""
    factor = 1.0 if period == "day" else 6.7
    keys = APPS if by == "app" else ("gpt-4o-mini", "claude-3-5-haiku-latest", "gpt-4o")
    rows = [
        _row(key, factor * weight) for key, weight in zip(keys, (1.27, 0.98, 0.72), strict=True)
    ]
    total = SpendRow(
        key="total",
        requests=sum(r.requests for r in rows),
        cost_usd=round(sum(r.cost_usd for r in rows), 4),
        cache_hits=sum(r.cache_hits for r in rows),
        saved_usd=round(sum(r.saved_usd for r in rows), 4),
    )
    return SpendReply(
        period=period,
        by=by,
        since=START - 3600,
        until=START,
        total=total,
        rows=rows,
        budgets=busy_status(0).budgets,
        forecast_month_usd=241.3 if period == "month" else None,
    )


class ScriptedFeed:
    """Delivers ``events`` at once, then idles; answers spend and admin from scripts and
    records the admin calls made."""

    def __init__(
        self,
        events: Sequence[FeedEvent],
        *,
        spend: Callable[[SpendPeriod, SpendKey], SpendReply] | QuotadError = spend_report,
        admin_error: QuotadError | None = None,
        where: str = SOCKET,
        interval_s: float = 3600.0,
    ) -> None:
        self.events = list(events)
        self.interval_s = interval_s
        """Seconds between snapshots it claims: an hour unless told, so that a scripted feed,
        which idles after its events, never shows as stale while a test looks at it."""
        self.spend_answer = spend
        self.admin_error = admin_error
        self.admin_calls: list[tuple[str, str]] = []
        self.delivered = asyncio.Event()
        self._where = where

    @property
    def where(self) -> str:
        return self._where

    async def follow(self, deliver: Callable[[FeedEvent], None]) -> None:
        for event in self.events:
            deliver(event)
        self.delivered.set()
        await asyncio.Event().wait()

    async def admin(self, action: str, target: str) -> str:
        self.admin_calls.append((action, target))
        if self.admin_error is not None:
            raise self.admin_error
        return f"{action} {target}: ok"

    async def spend(self, period: SpendPeriod, by: SpendKey) -> SpendReply:
        if isinstance(self.spend_answer, QuotadError):
            raise self.spend_answer
        return self.spend_answer(period, by)


WAITING_ONLY: list[FeedEvent] = [Waiting("no such socket")]
