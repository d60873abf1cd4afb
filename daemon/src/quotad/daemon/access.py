"""Who may use the daemon over its Unix socket: ``[daemon] allow_uids`` and ``allow_gids``
checked against the peer's SO_PEERCRED identity.

The socket's file mode decides who can connect at all (0600: the daemon's user; 0660 under
systemd: also the group ``quotad``). The allow lists narrow that further: when either is set,
a peer is let in when its uid is in ``allow_uids``, or its primary or a supplementary group
(SO_PEERGROUPS) is in ``allow_gids``. The daemon's own uid is always let in. With both lists
empty every peer that can connect is let in. Computed once per config; checked once per
connection.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

from quotad.daemon.config import DaemonConfig

SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
"""Linux's option for a Unix peer's supplementary groups (Python does not name it)."""
_MAX_GROUPS: Final = 65536


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """The supplementary groups of a connected Unix socket's peer; empty where the kernel
    cannot tell (not Linux, or older than 4.13)."""
    size = 64
    while size <= _MAX_GROUPS:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * 4)
        except OSError as error:
            if error.errno == errno.ERANGE:  # more groups than room
                size *= 8
                continue
            return frozenset()
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return frozenset()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The allow lists of one config; :meth:`refusal` says why a peer is refused, if it is."""

    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    own_uid: int = -1

    @classmethod
    def from_config(cls, config: DaemonConfig) -> AccessPolicy:
        """The policy of ``[daemon]``; the running process's uid is always allowed."""
        return cls(frozenset(config.allow_uids), frozenset(config.allow_gids), os.getuid())

    @property
    def restricted(self) -> bool:
        """True when an allow list is set (else every peer that can connect is let in)."""
        return bool(self.allow_uids or self.allow_gids)

    def refusal(self, uid: int, gid: int, sock: socket.socket | None = None) -> str | None:
        """None when the peer ``uid``/``gid`` may use the daemon; else the reason it may not.
        ``sock`` (the peer's connection) is asked for supplementary groups when they matter."""
        if not self.restricted or uid == self.own_uid or uid in self.allow_uids:
            return None
        if gid in self.allow_gids:
            return None
        if self.allow_gids and sock is not None and peer_groups(sock) & self.allow_gids:
            return None
        return (
            f"uid {uid} (gid {gid}) is not allowed to use this quotad; "
            "daemon.allow_uids and daemon.allow_gids name who is"
        )
