"""What one Unix-socket connection (and the listener) may hold: :class:`ConnectionLimits`,
from ``[daemon]``; the listener enforces the connection count, each connection the rest."""

from __future__ import annotations

from dataclasses import dataclass

from quotad.daemon.config import DaemonConfig
from quotad.protocol.framing import DEFAULT_MAX_FRAME


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

    @classmethod
    def from_config(cls, config: DaemonConfig) -> ConnectionLimits:
        """The limits ``[daemon]`` sets."""
        return cls(
            max_frame=config.max_frame,
            max_connections=config.max_connections,
            max_in_flight=config.max_in_flight_per_connection,
            hello_timeout_s=config.hello_timeout_s,
        )
