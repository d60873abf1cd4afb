"""A real store (``quotad.db`` in a temp dir) for in-process broker tests, and ledger rows
to fill one with."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from quotad.daemon.config import Config
from quotad.daemon.store import Store
from quotad.daemon.store.budgets import Calendar
from quotad.daemon.store.ledger import LedgerRow

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC).timestamp()
CALENDAR = Calendar("UTC")


@contextlib.asynccontextmanager
async def open_store(config: Config) -> AsyncIterator[Store]:
    """An opened store in a fresh temp dir, closed and removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="qs", dir="/tmp"))
    store = Store(config, directory)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)


def ledger_row(
    number: int,
    *,
    at: float = NOW,
    app: str = "agent",
    model: str = "fast",
    target: str = "openai/gpt-4o-mini",
    status: str = "ok",
    cost: float = 0.01,
    cached: bool = False,
    unpriced: bool = False,
) -> LedgerRow:
    """A ledger row of a chat request, numbered ``number``, at ``at`` (default :data:`NOW`)."""
    return LedgerRow(
        request_id=f"qd-test-{number}",
        time=at,
        day=CALENDAR.day(at),
        kind="chat",
        app=app,
        user="",
        uid=1000,
        pid=42,
        gid=1000,
        model=model,
        target=target,
        attempts=1,
        status=status,
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=0,
        cost_usd=0.0 if cached else cost,
        saved_usd=cost if cached else 0.0,
        cached=cached,
        unpriced=unpriced,
        wait_s=0.0,
        latency_s=0.1,
        priority="normal",
        tags='["nightly"]',
    )
