"""What the guardrails found, as ``quotad spend`` (text and CSV) and ``quotad status`` print
it: columns that appear once something was found, counts by kind, never a value."""

from __future__ import annotations

import csv
import io
import re

from quotad.daemon.report import format_spend, format_status, spend_csv
from quotad.protocol.messages import AppStatus, SpendReply, SpendRow, StatusReply


def cells(lines: list[str], first: str) -> list[str]:
    """The cells of the table line that starts with ``first``."""
    return re.split(r" {2,}", next(line for line in lines if line.startswith(first)))


def reply(*rows: SpendRow) -> SpendReply:
    total = SpendRow(key="total", requests=sum(row.requests for row in rows))
    for row in rows:
        total.blocked += row.blocked
        for kind, count in row.entities.items():
            total.entities[kind] = total.entities.get(kind, 0) + count
    return SpendReply(period="day", by="app", since=0.0, until=60.0, rows=list(rows), total=total)


def test_spend_shows_blocked_and_found_columns_only_when_something_was_found() -> None:
    quiet = format_spend(reply(SpendRow(key="indexer", requests=3)))
    assert "blocked" not in quiet
    assert "found" not in quiet
    text = format_spend(
        reply(
            SpendRow(key="indexer", requests=3),
            SpendRow(key="notebook", requests=4, errors=1, blocked=1, entities={"secret": 1}),
            SpendRow(key="agent", requests=2, entities={"phone": 1, "email": 2}),
        )
    )
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("app"))
    assert header.split()[-2:] == ["blocked", "found"]
    assert cells(lines, "notebook")[-2:] == ["1", "secret 1"]
    assert cells(lines, "agent")[-2:] == ["0", "email 2, phone 1"]
    assert cells(lines, "indexer")[-2:] == ["0", "-"]
    assert cells(lines, "total")[-2:] == ["1", "email 2, phone 1, secret 1"]


def test_spend_csv_has_a_column_per_entity_kind() -> None:
    text = spend_csv(reply(SpendRow(key="agent", blocked=2, entities={"email": 3})))
    agent, total = csv.DictReader(io.StringIO(text))
    assert (agent["blocked"], agent["found_email"], agent["found_secret"]) == ("2", "3", "0")
    assert total["key"] == "total"
    assert total["found_email"] == "3"
    assert "entities" not in agent


def test_status_shows_what_each_app_had_found() -> None:
    status = StatusReply(
        apps=[
            AppStatus(name="agent", requests=4),
            AppStatus(name="notebook", requests=2, blocked=1, entities={"email": 2, "ip": 1}),
        ]
    )
    lines = format_status(status).splitlines()
    assert cells(lines, "notebook")[-2:] == ["1", "email 2, ip 1"]
    assert cells(lines, "agent")[-2:] == ["0", "-"]
    assert "found" not in format_status(StatusReply(apps=[AppStatus(name="agent")]))
