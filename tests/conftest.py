"""Shared pytest configuration: the anyio backends every async test runs under."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.backends import ALL_BACKENDS


@pytest.fixture(params=ALL_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Run each ``@pytest.mark.anyio`` test under asyncio, asyncio+uvloop and trio."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
def asyncio_only() -> tuple[str, dict[str, Any]]:
    """For tests of daemon internals: asyncio + uvloop, as the daemon runs (see
    ``tests/support/backends.py``)."""
    return ("asyncio", {"use_uvloop": True})
