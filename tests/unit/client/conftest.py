"""Fixtures of the client tests: a temp socket, a fake daemon on it, and ``new_client``, which
runs a test once per client API (see tests/support/client_apis.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client_apis import CLIENT_APIS, NewClient, client_maker
from tests.support.fake_daemon import FakeDaemon


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_path(socket_dir: Path) -> str:
    return str(socket_dir / "q.sock")


@pytest.fixture
def fake(socket_path: str) -> Iterator[FakeDaemon]:
    with FakeDaemon(socket_path) as daemon:
        yield daemon


@pytest.fixture(params=CLIENT_APIS)
def new_client(request: pytest.FixtureRequest) -> Iterator[NewClient]:
    """Makes clients of one API: ``Client``, or ``AsyncClient`` on one anyio backend."""
    backend: tuple[str, dict[str, Any]] | None = request.param
    with client_maker(backend) as maker:
        yield maker
