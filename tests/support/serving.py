"""Running an in-process server (the HTTP/1.1 server, the front door) for the length of a
block: started in a task group, drained and stopped on the way out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc


class Servable(Protocol):
    """What :func:`running` needs of a server: ``serve`` reports readiness to its task group,
    ``shutdown`` drains it."""

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = ...) -> None: ...

    async def shutdown(self, deadline_s: float) -> None: ...


ServerT = TypeVar("ServerT", bound=Servable)


@asynccontextmanager
async def running(server: ServerT, drain_s: float = 1.0) -> AsyncIterator[ServerT]:
    """``server`` serving for the duration of the block; afterwards it gets ``drain_s`` to
    finish what is in flight (and the test fails if it has not stopped within 5 s)."""
    async with anyio.create_task_group() as tasks:
        await tasks.start(server.serve)
        try:
            yield server
        finally:
            with anyio.fail_after(5):
                await server.shutdown(drain_s)
