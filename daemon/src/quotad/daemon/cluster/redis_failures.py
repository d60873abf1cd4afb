"""What talking to Redis can raise, and what the link makes of it: a Redis away, slow or
refusing raises :data:`PLAIN_FAILURES`; a peer on Redis's port that does not speak RESP as a
Redis does can make redis-py raise anything (an integer where its handshake wants a map,
replies nested past Python's recursion), and every call site that talks to Redis takes that as
Redis away too (:func:`unreadable` says why). It ended the daemon before."""

from __future__ import annotations

from typing import Final

from redis.exceptions import RedisError

PLAIN_FAILURES: Final = (TimeoutError, RedisError, OSError)
"""What talking to a Redis that is away, slow or refusing raises."""


def unreadable(error: Exception) -> str:
    """Why the link is down when redis-py raised what no server speaking RESP makes it raise."""
    return f"Redis answered what this host cannot read ({type(error).__name__}: {str(error)[:160]})"
