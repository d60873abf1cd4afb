"""What tests of the event loop's share use: another task counting the turns it gets (and the
longest it waited for one), how many it gets while some work runs, and on which threads the
cache keys' hash runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import pytest

from quotad.daemon.store import answers


class TurnCounter:
    """Another task (:meth:`run`, started in a task group) that counts the turns it gets, and
    the longest it waited for one."""

    def __init__(self) -> None:
        self.turns = 0
        self.done = False
        self.longest_wait_s = 0.0

    async def run(self) -> None:
        """Count a turn, give the others theirs, until :attr:`done`."""
        last = time.perf_counter()
        while not self.done:
            self.turns += 1
            await anyio.lowlevel.checkpoint()
            now = time.perf_counter()
            self.longest_wait_s = max(self.longest_wait_s, now - last)
            last = now


async def turns_during(work: Callable[[], Awaitable[object]]) -> int:
    """How many turns another task got while ``work`` ran."""
    counter = TurnCounter()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(counter.run)
        await anyio.lowlevel.checkpoint()
        before = counter.turns
        await work()
        counter.done = True
    return counter.turns - before


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
