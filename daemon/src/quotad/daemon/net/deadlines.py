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

as ``anyio.fail_after`` is used: the block runs inside an anyio cancel scope *without* a
deadline of its own (so no timer), and ONE sweep task, sleeping until the earliest deadline
being watched, cancels the scopes whose deadline has passed; the scope absorbs its own
cancellation when the block ends, which is then raised as TimeoutError. The sweep starts with
the first watch and ends when nothing is watched. Each :class:`Deadlines` has its sweep: the
broker's (request deadlines) and each lean provider pool's (a call's whole-exchange bound).

Because the cancellation is the scope's (``CancelScope.cancel``, public anyio), anyio delivers
it by its own rules: a shielded scope entered within the block (a stream being closed after a
failure, httpcore releasing a connection) finishes first and the cancellation lands after it;
a CancelledError that is not only the deadline's (the caller cancelled too) stays a
CancelledError; two deadlines passing at once leave no cancel request behind on the task.
Deadlines are in the event loop's time, as a timeout scope's are; the sweep is an asyncio task
(the daemon runs on asyncio).

Only public anyio is used. An earlier version cancelled the task itself (``Task.cancel``, no
scope: cheaper) and, to respect shields, read anyio's private task states to see whether the
task sat in a shielded scope; no public API tells that of another task, and shields entered by
code we do not control (httpcore's) cannot be marked by us, so the block has its own scope and
anyio's delivery does the rest. The price: a block costs about a third of an
``anyio.fail_after`` block instead of a sixth (``bench/deadlines.py``), and still makes no
timer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import anyio

MAX_SLEEP_S: Final = 1.0
"""The longest the sweep sleeps before looking again."""


class Deadline:
    """One block's deadline: a ``with`` block that raises TimeoutError when it passes."""

    __slots__ = ("_cancelling", "_deadlines", "_scope", "_task", "at", "expired")

    def __init__(self, deadlines: Deadlines, at: float, scope: anyio.CancelScope) -> None:
        self._deadlines = deadlines
        self._scope = scope
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self.at = at
        self.expired = False
        """The sweep has cancelled the block for this deadline."""

    def __enter__(self) -> Deadline:
        task = self._task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self._scope.__enter__()
        self._deadlines.watch(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop watching; when the scope absorbed the deadline's cancellation and nothing
        else's, the block ends with TimeoutError. A cancel request of someone else's still
        counted on the task (asyncio's ``cancelling()``) keeps the CancelledError one, as
        ``asyncio.timeout`` does (anyio before 4.16 would swallow it with its own)."""
        self._deadlines.unwatch(self)
        if self._scope.__exit__(exc_type, exc, traceback):
            assert self._task is not None
            if self._task.cancelling() > self._cancelling:
                return  # the CancelledError goes on
            raise TimeoutError from exc

    def expire(self) -> None:
        """End the block now, as its deadline passing does (anyio's delivery rules apply)."""
        self.expired = True
        self._scope.cancel()


class Deadlines:
    """The watched deadlines and their sweep (see the module docstring)."""

    def __init__(self) -> None:
        self._new_scope: Callable[[], anyio.CancelScope] = self._first_scope
        self._watched: set[Deadline] = set()
        self._sweep: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_at = math.inf

    def within(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, for a ``with`` block."""
        at = asyncio.get_running_loop().time() + seconds
        return Deadline(self, at, self._new_scope())

    def _first_scope(self) -> anyio.CancelScope:
        """A scope from anyio's constructor, which dispatches to the running backend on each
        call (a third of a block's cost); later scopes come straight from the class it
        returned, which takes the same keywords as anyio does for its own scopes, unless it
        refuses them (then every scope comes from anyio's constructor)."""
        scope = anyio.CancelScope()
        scope_type = type(scope)
        try:
            scope_type()
        except TypeError:
            self._new_scope = anyio.CancelScope
        else:
            self._new_scope = scope_type
        return scope

    def watch(self, deadline: Deadline) -> None:
        """Expire ``deadline`` at ``deadline.at`` unless :meth:`unwatch` comes first."""
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
                    if deadline.at > now:
                        earliest = min(earliest, deadline.at)
                    elif not deadline.expired:
                        deadline.expire()
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
