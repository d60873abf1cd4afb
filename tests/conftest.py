"""Shared pytest configuration: the anyio backends every async test runs under, and a short
temp directory, a sim and a pair of sims."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import ALL_BACKENDS
from tests.support.sim import SimProcess


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


@pytest.fixture
def directory() -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards: a short path, so that the Unix sockets
    made in it stay within the 108 bytes a socket path may have."""
    path = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    """A sim for a module's tests, answering after 1 ms (a module may define its own)."""
    with SimProcess(latency_ms=1) as process:
        yield process


@pytest.fixture(scope="module")
def sims(request: pytest.FixtureRequest) -> Iterator[tuple[SimProcess, SimProcess]]:
    """Two sims for a module's tests (an OpenAI and an Anthropic one, or a primary and a
    secondary), each answering after the ``SIM_LATENCY_MS`` the module sets (1 ms if none)."""
    latency_ms: float = getattr(request.module, "SIM_LATENCY_MS", 1.0)
    with SimProcess(latency_ms=latency_ms) as first, SimProcess(latency_ms=latency_ms) as second:
        yield first, second
