"""What tests of the event loop's share use: how many turns another task gets while some work
runs, and on which threads the cache keys' hash runs."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from quotad.daemon.store import answers


async def turns_during(work: Callable[[], Awaitable[object]]) -> int:
    """How many turns another task got while ``work`` ran."""
    turns = 0
    done = False

    async def other_task() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        before = turns
        await work()
        done = True
    return turns - before


def threads_hashing_keys(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each call to :func:`~quotad.daemon.store.answers.key_digest` from now
    on, in order (``threading.get_ident``)."""
    threads: list[int] = []
    digest = answers.key_digest

    def key_digest(canonical: bytes) -> bytes:
        threads.append(threading.get_ident())
        return digest(canonical)

    monkeypatch.setattr(answers, "key_digest", key_digest)
    return threads
