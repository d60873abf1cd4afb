"""Requests: a live tail of finished requests, newest first."""

from __future__ import annotations

from typing import Final

from rich.text import Text
from textual.app import ComposeResult

from quotad.protocol.messages import ANSWERED, RequestRecord
from quotad.tui.format import milliseconds, seconds, usd
from quotad.tui.monitor import TAIL_RECORDS, Monitor
from quotad.tui.screens.base import MonitorScreen, titled
from quotad.tui.widgets.table import Column, LiveTable, Row

COLUMNS: Final = (
    Column("age", 6),
    Column("app", 11),
    Column("target", 30),
    Column("status", 14),
    Column("wait", 7),
    Column("latency", 7),
    Column("tokens", 9),
    Column("cost", 9),
    Column("cache", 5),
)


def request_cells(record: RequestRecord, now: float) -> list[Text]:
    """The cells of one finished request, its age taken against the snapshot's ``now``."""
    ok = record.status in ANSWERED
    status = Text(record.status, style="green" if ok else "bold red")
    if record.attempts > 1:
        status.append(f" x{record.attempts}", style="yellow")
    return [
        Text(seconds(max(now - record.time, 0.0)), justify="right"),
        Text(record.app),
        Text(record.target),
        status,
        Text(milliseconds(record.wait_s), justify="right"),
        Text(milliseconds(record.latency_s), justify="right"),
        Text(f"{record.prompt_tokens}+{record.completion_tokens}", justify="right"),
        Text(usd(record.cost_usd), justify="right"),
        Text("hit", style="cyan") if record.cached else Text("-", style="grey50"),
    ]


class RequestsScreen(MonitorScreen):
    """The newest finished requests, all the monitor keeps (sampled by the daemon under heavy
    load). Rows are keyed by position, so the cursor stays put while the tail moves under it."""

    MODE = "requests"
    TITLE = "Requests"

    def compose_body(self) -> ComposeResult:
        yield titled(
            LiveTable(COLUMNS, id="tail"),
            f"finished requests, newest first (the last {TAIL_RECORDS} seen)",
        )

    def on_mount(self) -> None:
        self.query_one(LiveTable).focus()
        super().on_mount()

    def show_body(self, monitor: Monitor) -> None:
        now = monitor.now
        newest = list(monitor.tail)
        newest.reverse()
        rows: list[Row] = [
            (str(index), request_cells(record, now)) for index, record in enumerate(newest)
        ]
        self.query_one(LiveTable).show_rows(rows)
