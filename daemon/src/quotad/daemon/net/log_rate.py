"""How often an event any client can repeat at will is logged (a refused request, a connection
closed to make room, a request refused for want of memory): the first time, then once every
:data:`LOG_EVERY` (:func:`log_due`), the line saying the count so far, so that a client sending
thousands a second grows the log by a few lines, not by one each. Here, in the plumbing, so
that the HTTP core and the daemon above it share it."""

from __future__ import annotations

from typing import Final

LOG_EVERY: Final = 1000
"""An event any client can repeat is logged the first time, then once every this many."""


def log_due(count: int) -> bool:
    """Whether the ``count``-th time (from 1) an event any client can repeat at will happened
    is to be logged: the first, then every :data:`LOG_EVERY`-th (the line says the count).
    (20,000 pipelined 404s wrote 20,000 lines, 3.9 MB, and took the daemon 1.4-2.1 s of CPU;
    now 21 lines, 5 KB, 0.7-1.0 s.)"""
    return count == 1 or count % LOG_EVERY == 0
