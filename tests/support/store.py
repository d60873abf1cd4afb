"""A real store (``quotad.db`` in a temp dir) for in-process broker tests."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from quotad.daemon.config import Config
from quotad.daemon.store import Store


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
