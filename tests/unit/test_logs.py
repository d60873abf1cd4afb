"""The per-request debug log line: its text and JSON forms, app names that cannot forge a field
or a line, and that nothing of it runs when debug is off."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

import quotad.daemon.live_tail
from quotad.daemon.live_tail import LiveTail
from quotad.daemon.logs import REQUEST_LOG, JsonFormatter, TextFormatter, log_request
from quotad.daemon.store.ledger import LedgerRow


def row(app: str = "indexer", target: str = "openai/gpt-4o-mini") -> LedgerRow:
    return LedgerRow(
        request_id="qd-1a2b-7", time=1_767_000_000.0, day="2026-01-01", kind="chat", app=app,
        user="", uid=1000, pid=4242, gid=1000, model="fast", target=target, attempts=1,
        status="ok", prompt_tokens=12, completion_tokens=30, cached_tokens=0, cost_usd=2.235e-05,
        saved_usd=0.0, cached=False, unpriced=False, wait_s=0.0021, latency_s=0.4125,
        priority="normal", tags="[]",
    )  # fmt: skip


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """The ``quotad`` logger at debug, into a buffer."""
    root = logging.getLogger("quotad")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved = root.handlers[:], root.level, root.propagate
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    root.propagate = False
    yield buffer, handler
    root.handlers[:], level, root.propagate = saved
    root.setLevel(level)


def test_text_line_names_the_request_and_its_figures(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    buffer, handler = captured
    handler.setFormatter(TextFormatter(journald=False))
    log_request(row())
    line = buffer.getvalue().strip()
    assert line.endswith(
        "debug   quotad.requests: request qd-1a2b-7 app=indexer target=openai/gpt-4o-mini "
        "status=ok tokens=12+30 cost=$0.000022 wait=2ms latency=412ms attempts=1"
    )


def test_an_app_name_cannot_forge_a_field_or_a_line(
    captured: tuple[io.StringIO, logging.Handler],
) -> None:
    buffer, handler = captured
    handler.setFormatter(TextFormatter(journald=True))
    log_request(row(app="evil\n<3>quotad: forged status=ok", target=""))
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('<7>quotad.requests: request qd-1a2b-7 app="evil\\n<3>')
    assert "target=- " in lines[0]


def test_json_line_carries_the_fields(captured: tuple[io.StringIO, logging.Handler]) -> None:
    buffer, handler = captured
    handler.setFormatter(JsonFormatter())
    log_request(row())
    entry = json.loads(buffer.getvalue())
    assert entry["level"] == "debug"
    assert entry["logger"] == "quotad.requests"
    assert entry["request"] == {
        "id": "qd-1a2b-7", "kind": "chat", "app": "indexer", "model": "fast",
        "target": "openai/gpt-4o-mini", "status": "ok", "attempts": 1, "prompt_tokens": 12,
        "completion_tokens": 30, "cached": False, "cost_usd": 2.235e-05, "wait_s": 0.0021,
        "latency_s": 0.4125,
    }  # fmt: skip


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_nothing_is_formatted_unless_debug_is_on(
    level: int, captured: tuple[io.StringIO, logging.Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    logging.getLogger("quotad").setLevel(level)
    logged: list[LedgerRow] = []
    monkeypatch.setattr(quotad.daemon.live_tail, "log_request", logged.append)
    tail = LiveTail()
    tail.finished(row())
    assert tail.finished_total == 1
    assert logged == ([row()] if level == logging.DEBUG else [])
    assert REQUEST_LOG.isEnabledFor(logging.DEBUG) is (level == logging.DEBUG)
