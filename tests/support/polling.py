"""Waiting for state that no event announces (a process's files, a daemon's status, a server's
count of connections): poll a condition until it holds or a bound passes, from a test's own
thread (:func:`wait_until`) or from a task on the test's event loop (:func:`run_loop_until`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {condition.__doc__ or condition}")
        time.sleep(0.02)


LOOP_LOOKS = 10_000
"""How many times :func:`run_loop_until` looks, 1 ms of the loop apart (10 s at the least)."""


async def run_loop_until(condition: Callable[[], bool]) -> None:
    """Let the event loop run, looking at ``condition`` every 1 ms, until it holds; fail after
    :data:`LOOP_LOOKS` looks (a bound in looks, not in time: a loaded machine stretches it)."""
    for _ in range(LOOP_LOOKS):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError(f"not true after {LOOP_LOOKS} looks: {condition.__doc__ or condition}")
