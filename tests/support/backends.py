"""The anyio backends tests run under: every async test under :data:`ALL_BACKENDS` (see
``tests/conftest.py``). The daemon itself runs on asyncio + uvloop (the ``asyncio_only``
fixture: tests of its internals); the parts written directly against asyncio (the HTTP
server's and the provider pool's connections are asyncio protocols) are also tested on plain
asyncio, under :data:`ASYNCIO_BACKENDS`."""

from __future__ import annotations

from typing import Final

import pytest

ASYNCIO_BACKENDS: Final = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
]
ALL_BACKENDS: Final = [*ASYNCIO_BACKENDS, pytest.param(("trio", {}), id="trio")]
