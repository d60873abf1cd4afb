"""Fixtures of the store's unit tests: a fresh temp directory and an opened ``Database`` in it,
on asyncio (the store's database runs on asyncio only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quotad.daemon.store.db import Database


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return asyncio_only


@pytest.fixture
async def db(directory: Path) -> AsyncIterator[Database]:
    database = Database(directory / "quotad.db")
    await database.open()
    yield database
    await database.close()
