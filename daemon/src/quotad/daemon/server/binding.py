"""The Unix socket's file and its peers: :func:`bind_unix_socket` (mode 0600 from birth in a
0700 directory; a stale socket of a dead daemon replaced, a live daemon's refused) and
:func:`peer_credentials` (SO_PEERCRED: who is at the other end of a connection).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("quotad.server")

MAX_SOCKET_PATH_BYTES: Final = 107
"""The longest Unix socket path Linux binds (``sun_path`` is 108 bytes, with its NUL)."""


class SocketInUseError(Exception):
    """Another live daemon already serves the socket path, or the path cannot be used."""


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process of a Unix-socket connection, as of its ``connect()`` (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials | None:
    """SO_PEERCRED of a connected Unix socket; None where the platform has no such option."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    return PeerCredentials(pid, uid, gid)


def _prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700 (or check one we did not make is not world-open)."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        return
    info = directory.stat()
    if info.st_uid == os.getuid() and directory.name.startswith("quotad"):
        os.chmod(directory, 0o700)  # our own runtime directory: keep it private
    elif info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise SocketInUseError(
            f"{directory} is writable by everyone: choose a private directory for the socket"
        )


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse when a live daemon answers on it."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as error:  # its directory is a file, or cannot be entered...
        raise SocketInUseError(f"cannot use {path}: {error.strerror or error}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUseError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s (no daemon answers on it)", path)
        path.unlink(missing_ok=True)
        return
    except OSError as error:
        raise SocketInUseError(f"cannot check socket {path}: {error.strerror}") from None
    finally:
        probe.close()
    raise SocketInUseError(
        f"another quotad is already serving {path}; stop it first, or give this one another "
        "socket (--socket or $QUOTAD_SOCKET)"
    )


def bind_unix_socket(path: Path, backlog: int = 1024) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from birth, in a 0700 directory."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:  # bind() says only "AF_UNIX path too long"
        raise SocketInUseError(
            f"cannot bind {path}: its path is {size} bytes and a Unix socket's holds at most "
            f"{MAX_SOCKET_PATH_BYTES}; give a shorter one (daemon.socket, --socket or "
            "$QUOTAD_SOCKET)"
        )
    if "\0" in str(path):
        raise SocketInUseError(f"cannot bind {str(path)!r}: a path cannot hold a NUL character")
    try:
        _prepare_directory(path.parent)
    except OSError as error:  # a parent is a file, or is not ours to write in...
        raise SocketInUseError(
            f"cannot use {path.parent} for the socket: {error.strerror or error}"
        ) from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise SocketInUseError(f"{path} is in use") from None
        raise SocketInUseError(f"cannot bind {path}: {error.strerror or error}") from None
    finally:
        os.umask(previous_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return sock
