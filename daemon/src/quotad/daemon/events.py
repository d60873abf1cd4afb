"""Things an operator should notice (a breaker opened, a target disabled…): each is logged
and kept in a short list that ``quotad status`` shows (``StatusReply.events``)."""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

from quotad.daemon.clock import Clock
from quotad.protocol.messages import Event

KEPT_EVENTS: Final = 100

log = logging.getLogger("quotad.events")


class EventLog:
    """The last :data:`KEPT_EVENTS` events, oldest first."""

    __slots__ = ("_clock", "_events")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=KEPT_EVENTS)

    def add(self, kind: str, message: str, level: int = logging.INFO) -> None:
        """Log an event and keep it for status."""
        log.log(level, "%s: %s", kind, message)
        self._events.append(Event(time=self._clock.time(), kind=kind, message=message))

    def recent(self) -> list[Event]:
        """The events kept, oldest first."""
        return list(self._events)
