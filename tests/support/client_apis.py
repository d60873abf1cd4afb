"""Both client APIs behind one blocking face, so that one test body runs against each.

A test of behaviour the two share takes the ``new_client`` fixture (tests/unit/client/conftest.py)
and uses it as it would :class:`Client`. It runs once per entry of :data:`CLIENT_APIS`: the
blocking :class:`Client` itself, and the :class:`AsyncClient` on every backend of
``ALL_BACKENDS`` (asyncio, asyncio+uvloop, trio), in an event loop of its own thread, reached
through a :class:`BlockingView` over an anyio blocking portal. The view is generic (it writes
no method of the API out): a call runs the async method in the loop and waits for its result;
iterating, entering or leaving an object of the async API iterates, enters or leaves it in the
loop (``async for``, ``async with``). So the test body is plain blocking code, and the daemon
fake sees from each API what that API sends.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Final, cast

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from quotad.client import AsyncClient, Client
from tests.support.backends import ALL_BACKENDS

Backend = tuple[str, dict[str, Any]]
NewClient = Callable[..., Client]
"""Makes a client of the API under test from :class:`Client`'s arguments (not yet open)."""

CLIENT_APIS: Final = [
    pytest.param(None, id="sync"),
    *(pytest.param(backend.values[0], id=f"async-{backend.id}") for backend in ALL_BACKENDS),
]
"""The blocking API (None), then the async API on each anyio backend."""

# The async name of a method, where it is not the blocking one.
_ASYNC_NAMES: Final = {"close": "aclose"}


@contextlib.contextmanager
def client_maker(backend: Backend | None) -> Iterator[NewClient]:
    """:class:`Client` itself for the blocking API; for the async API on ``backend``, a maker
    of views of :class:`AsyncClient` objects living in a loop that runs as long as the
    block."""
    if backend is None:
        yield Client
        return
    name, options = backend
    with start_blocking_portal(name, options) as portal:

        def new_client(*args: Any, **kwargs: Any) -> Client:
            client = portal.call(functools.partial(AsyncClient, *args, **kwargs))
            return cast(Client, BlockingView(portal, client))

        yield new_client


class BlockingView:
    """An object of the async client API, used as its blocking twin (see the module
    docstring); what its methods return is seen through a view in turn."""

    __slots__ = ("_entered", "_portal", "_target")

    def __init__(self, portal: BlockingPortal, target: Any) -> None:
        self._portal = portal
        self._target = target
        self._entered: AbstractContextManager[Any] | None = None

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, _ASYNC_NAMES.get(name, name))
        if not callable(value):
            return value
        return functools.partial(self._call, value)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(self._run, method, args, kwargs)

    async def _run(
        self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return self._view(result)

    def _view(self, result: Any) -> Any:
        """``result`` as is, or a view of it if it belongs to the async API."""
        if hasattr(result, "__aenter__") or type(result).__module__ == AsyncClient.__module__:
            return BlockingView(self._portal, result)
        return result

    def __iter__(self) -> BlockingView:
        return self

    def __next__(self) -> Any:
        try:
            return self._view(self._portal.call(self._target.__anext__))
        except StopAsyncIteration:
            raise StopIteration from None

    def __enter__(self) -> Any:
        self._entered = self._portal.wrap_async_context_manager(self._target)
        return self._view(self._entered.__enter__())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        entered, self._entered = self._entered, None
        if entered is None:
            raise RuntimeError("left a block that was not entered")
        return entered.__exit__(exc_type, exc, tb)
