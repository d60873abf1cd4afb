"""Spend reports over the ledger (``quotad spend``): totals of a period grouped by app, model,
target or day, a month-end forecast, and a flag on days whose spend is anomalous.

Reports read ``spend_daily`` (the ledger summed per local day, app, model and target, written
in the same transaction as each row), so their cost does not grow with the number of requests.

- Periods are local: ``day`` is today since local midnight, ``week`` the last 7 local days
  including today, ``month`` this calendar month; all end now.
- Guardrails: requests refused (``blocked``, counted in ``errors`` too) and the entities
  found in requests and replies by kind (``entities``), from ``guardrails_daily``.
- Tokens count billed calls only (a cache hit's tokens are not billed; its row counts as a
  cache hit and carries ``saved_usd``; ``semantic_hits`` counts the semantic ones among them).
  ``errors`` counts rows whose status is not ``ok``.
- Forecast: this month's spend so far plus the trend of its complete days (a least-squares
  line through their daily totals, never below zero, today counted as the larger of what it
  has spent and the line) to the month's end; with fewer than 3 complete days, the month's
  spend per elapsed day times the month's length. None when this month has no rows.
- Anomaly (rows by day): a day is flagged when its spend exceeds the mean of the 28 days
  before it by more than 3 standard deviations, is at least twice that mean and at least
  $0.01 above it; days before the ledger's first row do not count, and at least 7 must.
"""

from __future__ import annotations

import math
import reprlib
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.db import Database
from quotad.protocol.messages import SpendReply, SpendRow

ANOMALY_HISTORY_DAYS: Final = 28
ANOMALY_MIN_DAYS: Final = 7
ANOMALY_SIGMAS: Final = 3.0
ANOMALY_MIN_RATIO: Final = 2.0
ANOMALY_MIN_EXCESS_USD: Final = 0.01
TREND_MIN_DAYS: Final = 3

GROUP_COLUMNS: Final = {"app": "app", "model": "model", "target": "target", "day": "day"}
PERIOD_DAYS: Final = {"day": 0, "week": 6}
BLOCKED: Final = "blocked"
"""The ``kind`` of ``guardrails_daily`` that counts requests a guardrail refused."""
MAX_DAY_USD: Final = 1e9
"""The largest cost a ``spend_daily`` row is read with: a billion USD in a day for one app,
model and target (the fleet's bound, :data:`quotad.daemon.cluster.spend.MAX_NANO`)."""
READABLE_DAY: Final = (
    "typeof(day) = 'text' AND day GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'"
)
"""SQL: whether a row's ``day`` is a local day (``YYYY-MM-DD``). ``quotad.db`` is the daemon's
to write, but SQLite keeps any value in any column."""


def is_amount(usd: float) -> bool:
    """Whether ``usd`` is an amount spent, as a ``spend_daily`` row is read with one
    (:data:`READABLE_COST`): from 0 to :data:`MAX_DAY_USD` (not NaN, nor infinite)."""
    return 0.0 <= usd <= MAX_DAY_USD


def _is_amount(column: str) -> str:
    """SQL: whether a row's ``column`` is an amount of USD (not a text, bytes, below 0 or
    past :data:`MAX_DAY_USD`)."""
    return f"typeof({column}) IN ('integer', 'real') AND {column} BETWEEN 0 AND {MAX_DAY_USD:g}"


DAY_OR_NULL: Final = f"CASE WHEN {READABLE_DAY} THEN day END"
"""SQL: a row's ``day``, NULL when it is no date."""
READABLE_COST: Final = _is_amount("cost_usd")
"""SQL: whether a ``spend_daily`` row's ``cost_usd`` is an amount spent."""
MAX_DAY_COUNT: Final = 10**13
"""The largest count a row of ``spend_daily`` or ``guardrails_daily`` is read with (requests,
tokens, hits, entities; the fleet's bound, :data:`quotad.daemon.cluster.spend.MAX_COUNT`): the
sum of a report's rows stays within what a reply carries (2**64)."""
SHOWN_UNREADABLE_ROWS: Final = 5
"""How many unreadable rows :func:`unreadable_spend_message` names."""
_ROW_NAMES: Final = ("day", "app", "model", "target", "cost_usd")


def is_anomalous(cost: float, history: list[float]) -> bool:
    """Whether a day's ``cost`` is anomalous against the daily costs of ``history``."""
    if len(history) < ANOMALY_MIN_DAYS:
        return False
    mean = sum(history) / len(history)
    sigma = math.sqrt(sum((value - mean) ** 2 for value in history) / len(history))
    return (
        cost > mean + ANOMALY_SIGMAS * sigma
        and cost >= ANOMALY_MIN_RATIO * mean
        and cost - mean >= ANOMALY_MIN_EXCESS_USD
    )


def forecast_month(
    complete_days: list[float], today_usd: float, days_in_month: int, elapsed_days: float
) -> float:
    """The month's spend at its end, from its complete days so far and today's spend."""
    spent = sum(complete_days) + today_usd
    count = len(complete_days)
    if count < TREND_MIN_DAYS:
        return spent / max(elapsed_days, 1 / 24) * days_in_month
    mean_x = (count - 1) / 2
    mean_y = sum(complete_days) / count
    spread = sum((x - mean_x) ** 2 for x in range(count))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(complete_days)) / spread
    intercept = mean_y - slope * mean_x
    today = max(today_usd, intercept + slope * count)
    rest = sum(max(0.0, intercept + slope * x) for x in range(count + 1, days_in_month))
    return sum(complete_days) + today + rest


def _parsed_day(label: str) -> date | None:
    """The date a row's day names; None when it names none (a damaged or hand-edited file)."""
    try:
        return date.fromisoformat(label)
    except ValueError:
        return None


def amount(column: str) -> str:
    """SQL: a row's ``column`` as an amount of USD, NULL when it is none (:func:`_is_amount`)."""
    return f"CASE WHEN {_is_amount(column)} THEN {column} END"


def counted(column: str) -> str:
    """SQL: a row's ``column`` as a count, NULL (counted as none by ``total``) when it is no
    whole number from 0 to :data:`MAX_DAY_COUNT`: in a file damaged or edited by hand, an
    infinite count failed the report (no integer holds it), and large ones its reply."""
    return (
        f"CASE WHEN typeof({column}) = 'integer' AND {column} BETWEEN 0 AND {MAX_DAY_COUNT} "
        f"THEN {column} END"
    )


class SpendReport:
    """Builds :class:`SpendReply` reports from the read connection."""

    def __init__(self, db: Database, calendar: Calendar) -> None:
        self._db = db
        self.calendar = calendar

    async def build(self, period: str, by: str, now: float) -> SpendReply:
        """Totals of ``period`` (day, week, month) grouped ``by`` (app, model, target, day)."""
        span = ReportSpan.of(self.calendar, period, by, now)
        column = GROUP_COLUMNS[by]
        requests, errors, prompt, completion, cached, hits, semantic = (
            f"total({counted(name)})"
            for name in (
                "requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
                "cache_hits", "semantic_hits",
            )
        )  # fmt: skip
        grouped = await self._db.read(
            f"SELECT {column}, {requests}, {errors}, {prompt}, {completion}, {cached}, "
            f"total(cost_usd), {hits}, total(saved_usd), max(unpriced), {semantic} "
            f"FROM spend_daily WHERE day >= ? AND day <= ? GROUP BY {column}",
            (span.first_day, span.today),
        )
        rows = [_row(values) for values in grouped]
        await self._add_guardrails(rows, column, span.first_day, span.today)
        daily = {
            str(label): float(cost)
            for label, cost in await self._db.read(
                "SELECT day, total(cost_usd) FROM spend_daily WHERE day >= ? AND day <= ? "
                "GROUP BY day",
                (span.history_day, span.today),
            )
        }
        ledger_start = None
        if by == "day":
            first = await self._db.read(f"SELECT min(day) FROM spend_daily WHERE {READABLE_DAY}")
            ledger_start = _parsed_day(first[0][0]) if first and first[0][0] else None
        return span.reply(rows, daily, ledger_start)

    async def _add_guardrails(
        self, rows: list[SpendRow], column: str, first_day: str, last_day: str
    ) -> None:
        """What the guardrails found (``guardrails_daily``), onto the report's rows."""
        by_key = {row.key: row for row in rows}
        found = await self._db.read(
            f"SELECT {column}, kind, total({counted('count')}) FROM guardrails_daily "
            f"WHERE day >= ? AND day <= ? GROUP BY {column}, kind ORDER BY kind",
            (first_day, last_day),
        )
        for key, kind, count in found:
            row = by_key.get(str(key))
            if row is None:
                continue
            if kind == BLOCKED:
                row.blocked = int(count)
            else:
                row.entities[str(kind)] = int(count)


async def unreadable_spend(db: Database, first_day: str) -> list[tuple[Any, ...]]:
    """``(day, app, model, target, cost_usd)`` of the ``spend_daily`` rows from ``first_day``
    on, and of those whose day is no date (which day they count is unknown), whose cost or
    day cannot be read (:data:`READABLE_COST`, :data:`READABLE_DAY`): a file damaged or
    edited by hand. Budgets read their totals, where a text or bytes counts 0 and a cost below
    0 takes off what was spent."""
    return await db.read(
        "SELECT day, app, model, target, cost_usd FROM spend_daily "
        f"WHERE (day >= ? OR NOT ({READABLE_DAY})) AND NOT ({READABLE_COST} AND {READABLE_DAY})",
        (first_day,),
    )


def unreadable_spend_message(path: Path, rows: list[tuple[Any, ...]], budgets: list[str]) -> str:
    """What the start (or a reload) says of rows :func:`unreadable_spend` found that
    ``budgets`` (their names) count: the rows and how to mend them."""
    shown = "; ".join(
        " ".join(
            f"{name}={reprlib.repr(value)}" for name, value in zip(_ROW_NAMES, row, strict=True)
        )
        for row in rows[:SHOWN_UNREADABLE_ROWS]
    )
    more = (
        f" (and {len(rows) - SHOWN_UNREADABLE_ROWS} more)"
        if len(rows) > SHOWN_UNREADABLE_ROWS
        else ""
    )
    return (
        f"{path}: table spend_daily has {len(rows)} row(s) of this month, or of no day, that a "
        f"budget counts ({', '.join(map(repr, budgets))}) and whose cost or day cannot be read: "
        f"{shown}{more}. Counted as 0, or as money given back, their spend would let requests "
        "pass a budget. Give each its day (YYYY-MM-DD) and its "
        "cost, the sum of its ledger rows' while they are kept: "
        f'`sqlite3 {path} "UPDATE spend_daily SET cost_usd = (SELECT total(cost_usd) FROM '
        "ledger AS l WHERE (l.day, l.app, l.model, l.target) = (spend_daily.day, "
        "spend_daily.app, spend_daily.model, spend_daily.target)) "
        f'WHERE NOT ({READABLE_COST})"`'
    )


class ReportSpan:
    """The days one report covers, and how its rows become a :class:`SpendReply` (the
    ledger's report above, and the fleet's: :mod:`quotad.daemon.cluster.spend`)."""

    def __init__(self, calendar: Calendar, period: str, by: str, now: float, since: float) -> None:
        self.calendar = calendar
        self.period = period
        self.by = by
        self.now = now
        self.since = since
        self.first_day = calendar.day(since)
        self.today = calendar.day(now)
        self.month_start, self.month_end, self.month_label = calendar.month_bounds(now)
        history_start = min(self.month_start, calendar.days_back(since, ANOMALY_HISTORY_DAYS))
        self.history_day = calendar.day(history_start)
        """The first day whose total the forecast and the anomaly flags read."""

    @classmethod
    def of(cls, calendar: Calendar, period: str, by: str, now: float) -> ReportSpan:
        """The span of ``period`` (day, week, month) ending ``now``."""
        if period == "month":
            since = calendar.month_bounds(now)[0]
        else:
            since = calendar.days_back(now, PERIOD_DAYS[period])
        return cls(calendar, period, by, now, since)

    def reply(
        self, rows: list[SpendRow], daily: dict[str, float], first_day: date | None
    ) -> SpendReply:
        """The report of ``rows`` (one per key), given the total of each day from
        :attr:`history_day` (``daily``) and the first day anything was spent
        (``first_day``, for the anomaly flags of a report by day)."""
        if self.by == "day":
            for row in rows:
                row.anomalous = is_anomalous(row.cost_usd, _history(daily, row.key, first_day))
            rows.sort(key=lambda row: row.key)
        else:
            rows.sort(key=lambda row: (-row.cost_usd, -row.requests, row.key))
        return SpendReply(
            period=self.period,
            by=self.by,
            since=self.since,
            until=self.now,
            total=_total(rows),
            rows=rows,
            forecast_month_usd=self._forecast(daily),
        )

    def _forecast(self, daily: dict[str, float]) -> float | None:
        if not any(label.startswith(self.month_label) for label in daily):
            return None
        today = date.fromisoformat(self.today)
        first = today.replace(day=1)
        complete = [
            daily.get((first + timedelta(days=n)).isoformat(), 0.0)
            for n in range((today - first).days)
        ]
        days_in_month = round((self.month_end - self.month_start) / 86400)
        elapsed_days = (self.now - self.month_start) / 86400
        return forecast_month(
            complete, daily.get(today.isoformat(), 0.0), days_in_month, elapsed_days
        )


def _row(values: tuple[Any, ...]) -> SpendRow:
    """A report row from one grouped query row."""
    key, requests, errors, prompt, completion, cached, cost, hits, saved, unpriced, semantic = (
        values
    )
    return SpendRow(
        key=str(key),
        requests=int(requests),
        errors=int(errors),
        prompt_tokens=int(prompt),
        completion_tokens=int(completion),
        cached_tokens=int(cached),
        cost_usd=float(cost),
        cache_hits=int(hits),
        saved_usd=float(saved),
        unpriced=bool(unpriced),
        semantic_hits=int(semantic),
    )


def _history(daily: dict[str, float], label: str, first_day: date | None) -> list[float]:
    """Daily costs of the days before ``label`` that count as its history."""
    day = _parsed_day(label)
    history: list[float] = []
    if day is None:  # a row whose day is no date: it has no history
        return history
    for back in range(1, ANOMALY_HISTORY_DAYS + 1):
        earlier = day - timedelta(days=back)
        if first_day is None or earlier < first_day:
            break
        history.append(daily.get(earlier.isoformat(), 0.0))
    return history


def _total(rows: list[SpendRow]) -> SpendRow:
    total = SpendRow(key="total")
    for row in rows:
        total.requests += row.requests
        total.errors += row.errors
        total.prompt_tokens += row.prompt_tokens
        total.completion_tokens += row.completion_tokens
        total.cached_tokens += row.cached_tokens
        total.cost_usd += row.cost_usd
        total.cache_hits += row.cache_hits
        total.saved_usd += row.saved_usd
        total.semantic_hits += row.semantic_hits
        total.unpriced = total.unpriced or row.unpriced
        total.blocked += row.blocked
        for kind, count in row.entities.items():
            total.entities[kind] = total.entities.get(kind, 0) + count
    return total
