"""The anyio backends tests run under: every async test under :data:`ALL_BACKENDS` (see
``tests/conftest.py``); tests of the daemon's asyncio-only parts (its HTTP server and
provider pool are asyncio protocols) under :data:`ASYNCIO_BACKENDS`."""

from __future__ import annotations

from typing import Final

import pytest

ASYNCIO_BACKENDS: Final = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
]
ALL_BACKENDS: Final = [*ASYNCIO_BACKENDS, pytest.param(("trio", {}), id="trio")]
