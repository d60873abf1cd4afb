"""The daemon-wide bound on the bytes of requests held in memory (:class:`RequestMemory`),
shared by both front ends: the bodies the HTTP front door buffers before its handler runs, and
on the Unix socket the frames of requests in flight and the bytes of frames still arriving
(what a connection's frame decoder holds after a read).

Each front end bounds what one connection and one request may hold; this bounds them all
together, so that local clients cannot push the daemon's memory to many GB (1,024 connections
each buffering most of a 16 MB body, or of an 8 MiB frame, or thousands of 8 MiB frames in
flight) and get it killed for everyone. Past the bound a request is refused (503 or
``overloaded``, to be tried again shortly), never paused: partial bodies waiting for each
other's room could wait for ever.

A socket frame is held as it arrives, from the bytes left in the decoder after each read, and
given back at the next read; a frame that ends there is then held as its request's until the
request ends (so never twice), and a frame read whole in one read (a chat of a few KiB: nearly
every frame) is never counted as arriving at all. Past the bound a frame arriving cannot be
refused by itself: its request's id is in the part not read yet. Its connection is: answered
``overloaded`` (id 0, saying the daemon's request memory is full), its requests cancelled, the
frame dropped, and closed, after reading and dropping what the peer still sends for a moment
(so that a client, which sends a frame whole before it reads, reads why rather than EPIPE).
Reading the rest of the frame and refusing its request by id instead would need the id out of
a frame's first bytes, MessagePack the decoder cannot read in part, in whatever order a
client writes the fields. (Before, a frame still arriving was not counted: 200 connections
each sending all but the last byte of an 8 MiB frame added 1.6 GB to the daemon's RSS, and
one uid may hold 768.)

The runtime makes one and hands it to both servers; :meth:`RequestMemory.take` and
:meth:`RequestMemory.give` are a couple of integer operations (they run for each body part,
each request frame, and each read that leaves part of a frame). Whoever takes bytes gives
them back exactly once, when what holds them is done.
"""

from __future__ import annotations

import logging
from typing import Final

from quotad.daemon.net.log_rate import log_due
from quotad.protocol.figures import size as figure

log = logging.getLogger("quotad.daemon.request_memory")

REQUEST_MEMORY_BYTES: Final = 512 * 1024 * 1024
"""Request bytes both front ends may hold in memory together: HTTP bodies being read or
answered, the frames of Unix-socket requests in flight or arriving. 40 HTTP connections each
sending 15 MB of a body and stalling added 570 MB to the daemon's RSS, 100 of them 1.4 GB
(1,024 may connect); 1,280 in-flight 1 MiB chats on the socket 1.4 GB; now 510-600 MB. 200
socket connections each sending all but a byte of an 8 MiB frame added 1.6 GB; now 511 MB."""


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
