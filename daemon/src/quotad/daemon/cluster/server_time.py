"""The fleet's Redis clock as seen from this host: :class:`ServerTime` maps the server's
``TIME`` (Unix µs, carried by every script's reply) to our monotonic clock and back, always on
the late side (:data:`CLOCK_SLACK_S`). Pure: the link samples it, the windows and their share
stock read it, nothing here talks to Redis.
"""

from __future__ import annotations

from typing import Final

CLOCK_SLACK_S: Final = 0.001
"""Added on the late side of every conversion between the server's clock and ours."""


class ServerTime:
    """The server's clock (``TIME``, Unix µs) against our monotonic clock.

    A reply carrying the server's time ``T``, sent at ``t0`` and received at ``t1``, says the
    offset server - local lies in ``[T - t1, T - t0]``. Conversions take the late side of
    that interval (plus :data:`CLOCK_SLACK_S`): a server time becomes the latest local time
    it can be (so a wait never ends early), a local time the latest server time it can be
    (so an admission's expiry is never too early).
    """

    __slots__ = ("_high", "_low", "known")

    def __init__(self) -> None:
        self._low = 0.0
        self._high = 0.0
        self.known = False

    def sample(self, server_us: int, sent: float, received: float) -> None:
        """Learn from one reply."""
        server_s = server_us / 1e6
        self._low = server_s - received
        self._high = server_s - sent
        self.known = True

    def to_local(self, server_us: float) -> float:
        """The latest local monotonic time that server time can be."""
        return server_us / 1e6 - self._low + CLOCK_SLACK_S

    def to_local_early(self, server_us: float) -> float:
        """The earliest local monotonic time that server time can be (an entry expiring
        then is surely still in the log before it)."""
        return server_us / 1e6 - self._high - CLOCK_SLACK_S

    def to_server_us(self, local: float) -> int:
        """The latest server time (µs) that local monotonic time can be."""
        return int((local + self._high + CLOCK_SLACK_S) * 1e6) + 1
