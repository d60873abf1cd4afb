"""Reload bookkeeping: which requests began under an earlier config.

Each config reload (SIGHUP, ``quotad reload``) starts a new generation. Requests in flight run
on to their end on what they began with; the runtime closes the providers a reload replaced
once every request of the earlier generations has ended (:meth:`ConfigGenerations.advance`
returns the event that says so)."""

from __future__ import annotations

import anyio


class ConfigGenerations:
    """The current config generation, and who waits for the earlier ones' requests to end."""

    __slots__ = ("_earlier_in_flight", "_waiters", "current")

    def __init__(self) -> None:
        self.current = 0
        self._earlier_in_flight = 0
        self._waiters: list[anyio.Event] = []

    def advance(self, in_flight: int) -> anyio.Event:
        """A reload: a new generation begins with ``in_flight`` requests still running. The
        event is set once all of them (and those of earlier reloads) have ended."""
        self.current += 1
        self._earlier_in_flight = in_flight
        done = anyio.Event()
        self._waiters.append(done)
        if not in_flight:
            self._wake_waiters()
        return done

    def ended(self, generation: int) -> None:
        """A request that began under ``generation`` ended."""
        if generation != self.current:
            self._earlier_in_flight -= 1
            if not self._earlier_in_flight:
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        for event in self._waiters:
            event.set()
        self._waiters.clear()
