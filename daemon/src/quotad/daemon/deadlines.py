"""Request deadlines without a timer per request: :class:`Deadlines`.

A request's attempts (gate waits, provider calls, backoffs) must end at its deadline. A cancel
scope with a timeout per request did that, but on uvloop a timer is a libuv handle made and
registered for each request, which with the scope's own bookkeeping cost ~50 µs of the event
loop's time per request (measured inside the daemon). Instead, a request :meth:`~Deadlines.
watch`\\ es its task while it runs its attempts; ONE sweep task, sleeping until the earliest
deadline being watched, cancels the tasks whose deadline has passed, and the request tells its
own cancellation apart with :meth:`~Deadlines.expired`. The sweep starts with the first watch
and ends when nothing is watched.

Deadlines are in the event loop's time, as a timeout scope's are. The daemon runs on asyncio;
tasks are cancelled the asyncio way (``Task.cancel``/``uncancel``), which anyio's scopes inside
pass on as they pass on any cancellation that is not theirs.
"""

from __future__ import annotations

import asyncio
import math
from typing import Final

MAX_SLEEP_S: Final = 1.0
"""The longest the sweep sleeps before looking again."""


class Watch:
    """One task's deadline while it is watched."""

    __slots__ = ("at", "expired", "taken_back", "task")

    def __init__(self, task: asyncio.Task[object], at: float) -> None:
        self.task = task
        self.at = at
        self.expired = False
        """The sweep has cancelled the task for this deadline."""
        self.taken_back = False
        """That cancellation has been taken back (``uncancel``)."""


class Deadlines:
    """The watched deadlines and their sweep (see the module docstring)."""

    def __init__(self) -> None:
        self._watched: set[Watch] = set()
        self._sweep: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_at = math.inf

    def watch(self, seconds: float) -> Watch:
        """Cancel the current task ``seconds`` from now unless :meth:`unwatch` comes first."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        watch = Watch(task, loop.time() + seconds)
        self._watched.add(watch)
        if self._sweep is None:
            self._sweep = loop.create_task(self._run(), name="quotad-deadlines")
        elif watch.at < self._wake_at:  # earlier than the sweep will look: wake it now
            self._wake()
        return watch

    def unwatch(self, watch: Watch) -> None:
        """The task is done with what the deadline bounded. A cancellation of the sweep's
        that nobody took back is taken back here: its CancelledError was consumed by another
        deadline's handler (two cancels, one delivery), and a cancel request left counted on
        the task would confuse every cancel scope after."""
        self._watched.discard(watch)
        if watch.expired and not watch.taken_back:
            watch.taken_back = True
            watch.task.uncancel()

    @staticmethod
    def expired(watch: Watch) -> bool:
        """Whether a CancelledError in the watched task is the deadline's; if so, it is
        taken back (``uncancel``): the caller goes on to say the deadline passed."""
        if not watch.expired or watch.taken_back:
            return False
        watch.taken_back = True
        watch.task.uncancel()
        return True

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._watched:
                now = loop.time()
                earliest = math.inf
                for watch in self._watched:
                    if watch.at <= now:
                        if not watch.expired:
                            watch.expired = True
                            watch.task.cancel()
                    elif watch.at < earliest:
                        earliest = watch.at
                self._wake_at = earliest
                wakeup = self._wakeup = loop.create_future()
                timer = loop.call_at(min(earliest, now + MAX_SLEEP_S), self._wake)
                try:
                    await wakeup
                finally:
                    timer.cancel()
                    self._wakeup = None
        finally:
            self._sweep = None
            self._wake_at = math.inf
