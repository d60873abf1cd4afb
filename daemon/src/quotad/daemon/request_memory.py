"""The daemon-wide bound on the bytes of requests held in memory (:class:`RequestMemory`),
shared by both front ends: the bodies the HTTP front door buffers before its handler runs, and
the frames of the Unix socket's requests in flight. (A frame still arriving is not counted: past
the bound it could be refused only with its connection, whose requests in flight would go too,
its request's id being in the part not read yet; each connection's is bounded by
``daemon.max_frame`` and 30 s.)

Each front end bounds what one connection and one request may hold; this bounds them all
together, so that local clients cannot push the daemon's memory to many GB (1,024 connections
each buffering most of a 16 MB body, or thousands of 8 MiB frames in flight) and get it killed
for everyone. Past the bound a request is refused (503 or ``overloaded``, to be tried again
shortly), never paused: partial bodies waiting for each other's room could wait for ever.

The runtime makes one and hands it to both servers; :meth:`RequestMemory.take` and
:meth:`RequestMemory.give` are a couple of integer operations (they run for each body part and
each request frame). Whoever takes bytes gives them back exactly once, when what
holds them is done.
"""

from __future__ import annotations

import logging
from typing import Final

from quotad.daemon.net.log_rate import log_due
from quotad.protocol.figures import size as figure

log = logging.getLogger("quotad.daemon.request_memory")

REQUEST_MEMORY_BYTES: Final = 512 * 1024 * 1024
"""Request bytes both front ends may hold in memory together: HTTP bodies being read or
answered, the frames of Unix-socket requests in flight. 40 HTTP connections each sending 15 MB
of a body and stalling added 570 MB to the daemon's RSS, 100 of them 1.4 GB (1,024 may
connect); 1,280 in-flight 1 MiB chats on the socket 1.4 GB; now 510-600 MB."""


class RequestMemory:
    """The request bytes held in memory (:attr:`held`) and their bound (:attr:`bound`,
    :data:`REQUEST_MEMORY_BYTES` unless given)."""

    __slots__ = ("bound", "held", "refused")

    def __init__(self, bound: int | None = None) -> None:
        self.bound = REQUEST_MEMORY_BYTES if bound is None else bound
        self.held = 0
        """Bytes taken and not given back yet."""
        self.refused = 0
        """Takes refused since the start (each a request refused)."""

    def take(self, size: int, own: int = 0) -> bool:
        """Hold ``size`` more bytes for a request that holds ``own`` already, if that stays
        within the bound or no other request holds any (one request larger than the bound,
        which the front ends' own bounds let through, is served alone, not refused for ever);
        False (nothing taken) when not: the request is to be refused."""
        held = self.held + size
        if held > self.bound and self.held > own:
            self._refuse(size)
            return False
        self.held = held
        return True

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken before."""
        self.held -= size

    def _refuse(self, size: int) -> None:
        self.refused += 1
        if log_due(self.refused):
            log.warning(
                "requests hold %s of the daemon's memory, %s more would pass its bound of "
                "%s: refused %d request(s) so far (overloaded, to be retried shortly)",
                figure(self.held),
                figure(size),
                figure(self.bound),
                self.refused,
            )

    def refusal(self) -> str:
        """What a request refused for want of room is told."""
        return (
            f"the requests quotad holds in memory are at their bound ({figure(self.bound)} "
            "for the daemon); retry shortly"
        )
