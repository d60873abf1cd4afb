"""Request deadlines without a timer per request: :class:`Deadlines`.

A request's attempts (gate waits, provider calls, backoffs) must end at its deadline. A cancel
scope with a timeout per request did that, but on uvloop a timer is a libuv handle made and
registered for each request, which with the scope's own bookkeeping cost ~50 µs of the event
loop's time per request (measured inside the daemon). Instead::

    deadline = deadlines.within(seconds)
    try:
        with deadline:
            ...                       # TimeoutError once ``seconds`` have passed
    except TimeoutError:
        if not deadline.expired:      # someone else's
            raise

as ``asyncio.timeout`` is used: the block's task is watched while it runs, and ONE sweep task,
sleeping until the earliest deadline being watched, cancels the tasks whose deadline has
passed; leaving the block turns that cancellation into TimeoutError. The sweep starts with the
first watch and ends when nothing is watched. Each :class:`Deadlines` has its sweep: the
broker's (request deadlines) and each lean provider pool's (a call's whole-exchange bound).

Deadlines are in the event loop's time, as a timeout scope's are. The daemon runs on asyncio;
tasks are cancelled the asyncio way (``Task.cancel``/``uncancel``), which anyio's scopes inside
pass on as they pass on any cancellation that is not theirs. A native cancel would go through
an anyio scope with ``shield=True`` too, so the sweep does as anyio's own timeouts do: it waits
while the task is inside a shielded scope entered within the block (a stream being closed
after a failure, say) and cancels it after. As with ``asyncio.timeout``, a CancelledError that
is not only the deadline's (the caller cancelled too) stays a CancelledError.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any, Final

from anyio._backends._asyncio import _task_states

MAX_SLEEP_S: Final = 1.0
"""The longest the sweep sleeps before looking again."""
SHIELD_RETRY_S: Final = 0.02
"""How soon the sweep looks again at a task past its deadline but inside a shielded scope."""


def _innermost_scope(task: asyncio.Task[Any]) -> Any:
    """The anyio cancel scope ``task`` is in now, if any (anyio's task state: private, and
    pinned by uv.lock; the suite covers it)."""
    state = _task_states.get(task)
    return None if state is None else state.cancel_scope


def _shielded(task: asyncio.Task[Any], outside: Any) -> bool:
    """Whether ``task`` is inside a shielded anyio scope entered within ``outside``."""
    scope = _innermost_scope(task)
    while scope is not None and scope is not outside:
        if scope.shield:
            return True
        scope = scope._parent_scope
    return False


class Deadline:
    """One task's deadline: a ``with`` block that raises TimeoutError when it passes."""

    __slots__ = ("_cancelling", "_deadlines", "_taken_back", "at", "expired", "outside", "task")

    def __init__(self, deadlines: Deadlines, at: float) -> None:
        self._deadlines = deadlines
        self.at = at
        self.task: asyncio.Task[Any] | None = None
        self.outside: Any = None
        """The anyio scope the block was entered in (shields outside it do not hold it)."""
        self.expired = False
        """The sweep has cancelled the task for this deadline."""
        self._taken_back = False
        self._cancelling = 0

    def __enter__(self) -> Deadline:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.outside = _innermost_scope(task)
        self._cancelling = task.cancelling()
        self._deadlines.watch(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop watching. The sweep's cancellation is taken back (``uncancel``), and raised
        as TimeoutError when it is what ends the block. Taken back too when another handler
        consumed its CancelledError (two deadlines passing at once: two cancels, one
        delivery): a cancel request left counted on the task would confuse every cancel
        scope after."""
        self._deadlines.unwatch(self)
        if not self.expired or self._taken_back:
            return
        self._taken_back = True
        assert self.task is not None
        if self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class Deadlines:
    """The watched deadlines and their sweep (see the module docstring)."""

    def __init__(self) -> None:
        self._watched: set[Deadline] = set()
        self._sweep: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_at = math.inf

    def within(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, for a ``with`` block."""
        return Deadline(self, asyncio.get_running_loop().time() + seconds)

    def watch(self, deadline: Deadline) -> None:
        """Cancel ``deadline.task`` at ``deadline.at`` unless :meth:`unwatch` comes first."""
        self._watched.add(deadline)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().create_task(
                self._run(), name="quotad-deadlines"
            )
        elif deadline.at < self._wake_at:  # earlier than the sweep will look: wake it now
            self._wake()

    def unwatch(self, deadline: Deadline) -> None:
        self._watched.discard(deadline)

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
                for deadline in self._watched:
                    task = deadline.task
                    if deadline.at > now:
                        earliest = min(earliest, deadline.at)
                    elif deadline.expired or task is None:
                        continue
                    elif _shielded(task, deadline.outside):
                        earliest = min(earliest, now + SHIELD_RETRY_S)
                    else:
                        deadline.expired = True
                        task.cancel()
                wake_at = self._wake_at = min(earliest, now + MAX_SLEEP_S)
                wakeup = self._wakeup = loop.create_future()
                timer = loop.call_at(wake_at, self._wake)
                try:
                    await wakeup
                finally:
                    timer.cancel()
                    self._wakeup = None
        finally:
            self._sweep = None
            self._wake_at = math.inf
