"""The daemon's Unix socket (DESIGN §5): the listener, its connections, the socket file.

- :mod:`~quotad.daemon.server.binding`: the socket file (0600 in a 0700 directory, a stale
  socket replaced, a live daemon's refused) and SO_PEERCRED.
- :mod:`~quotad.daemon.server.listener`: :class:`SocketServer`, the accept loop, who is let in
  and how many at once, draining at shutdown, status.
- :mod:`~quotad.daemon.server.connection`: :class:`Connection`, one client as an asyncio
  protocol: frames decoded as they arrive, requests answered by id, many in flight.
- :mod:`~quotad.daemon.server.limits`: :class:`ConnectionLimits`, what each may hold.
- :mod:`~quotad.daemon.server.snapshots`: what a ``Subscribe`` gets, a snapshot at a time.
- :mod:`~quotad.daemon.server.error_replies`: the errors the socket answers with besides the
  pipeline's (``overloaded``, a reply too large or not encodable).
"""

from __future__ import annotations

from quotad.daemon.server.binding import (
    PeerCredentials,
    SocketInUseError,
    bind_unix_socket,
    peer_credentials,
)
from quotad.daemon.server.connection import FEATURES, Connection
from quotad.daemon.server.limits import ConnectionLimits
from quotad.daemon.server.listener import SocketServer

__all__ = [
    "FEATURES",
    "Connection",
    "ConnectionLimits",
    "PeerCredentials",
    "SocketInUseError",
    "SocketServer",
    "bind_unix_socket",
    "peer_credentials",
]
