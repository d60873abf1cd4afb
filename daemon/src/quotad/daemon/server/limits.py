"""What one Unix-socket connection (and the listener) may hold: :class:`ConnectionLimits`,
from ``[daemon]``; the listener enforces the connection count (and each uid's share of it),
each connection the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from quotad.daemon.config import DaemonConfig
from quotad.protocol.framing import DEFAULT_MAX_FRAME

MAX_SHARE_PER_UID: Final = 0.75
"""The most of ``daemon.max_connections`` that the peers of one uid may hold together (the
operator's uids are not held to it): one uid holding every connection locked the others out."""
OPERATOR_RESERVE: Final = 16
"""Connections kept for the operator (the daemon's own uid, and root): other uids together may
hold ``daemon.max_connections`` less this many (less an eighth of it, if that is fewer), so that
``quotad status`` and ``reload`` still get in while other users hold all the rest."""

IDLE_TIMEOUT_S: Final = 300.0
"""A greeted connection that has held nothing this long (no request in flight, no
subscription, no permit) is closed: generous, since a client keeping its connection for the
next request is normal (and reconnects at that request, unnoticed); only a peer holding
connections it does not use loses them."""

FRAME_TIMEOUT_S: Final = 30.0
"""How long a frame may take to arrive whole, from its first byte (while the daemon reads the
connection): as the HTTP front door's ``read_timeout_s``. A peer that declared 8 MiB frames
and sent them but for a byte held 8 MiB of the daemon's memory per connection, for as long
as it sent a byte now and then."""


def most_per_uid(max_connections: int) -> int:
    """Connections the peers of one uid (not the operator's) may hold: :data:`MAX_SHARE_PER_UID`
    of ``max_connections``, at least one."""
    return max(1, int(max_connections * MAX_SHARE_PER_UID))


def operator_reserve(max_connections: int) -> int:
    """Connections only the operator may take: :data:`OPERATOR_RESERVE`, or an eighth of
    ``max_connections`` if that is fewer."""
    return min(OPERATOR_RESERVE, max_connections // 8)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one Unix-socket connection (and the listener) may hold; from ``[daemon]``."""

    max_frame: int = DEFAULT_MAX_FRAME
    max_connections: int = 1024
    max_in_flight: int = 4096
    """Requests in flight plus permits held, per connection (one connection may carry a
    whole app's concurrency: an open-loop load that falls behind piles up here)."""
    max_subscriptions: int = 32
    """Subscribes per connection (each builds a status every interval: at most 20 a second)."""
    hello_timeout_s: float = 10.0
    idle_timeout_s: float = IDLE_TIMEOUT_S
    """How long a greeted connection may hold nothing (:data:`IDLE_TIMEOUT_S`)."""
    frame_timeout_s: float = FRAME_TIMEOUT_S
    """How long a frame may take to arrive whole (:data:`FRAME_TIMEOUT_S`)."""

    @classmethod
    def from_config(cls, config: DaemonConfig) -> ConnectionLimits:
        """The limits ``[daemon]`` sets."""
        return cls(
            max_frame=config.max_frame,
            max_connections=config.max_connections,
            max_in_flight=config.max_in_flight_per_connection,
            hello_timeout_s=config.hello_timeout_s,
        )
