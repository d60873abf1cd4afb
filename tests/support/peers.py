"""Another user at the daemon's socket: a forked child that drops to a uid (and gid, groups),
connects, sends, and hands back what it read; for the tests of who may connect (SO_PEERCRED,
``daemon.allow_uids``). Needs root to change uid; the tests that use it skip without."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path


def exchange_as(
    path: Path,
    data: bytes,
    *,
    uid: int,
    gid: int | None = None,
    groups: Sequence[int] = (),
    first_frame_only: bool = False,
    timeout_s: float = 10.0,
) -> bytes:
    """Send ``data`` to the Unix socket ``path`` from a forked child running as ``uid``
    (``gid``: the same number unless given; ``groups``: its supplementary groups); what it
    read back: everything until the daemon closed, or with ``first_frame_only`` its first
    whole frame."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # fork while threads exist: the child only makes syscalls
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 0
        try:
            os.close(read_end)
            os.setgroups(list(groups))
            os.setgid(uid if gid is None else gid)
            os.setuid(uid)
            os.write(write_end, _exchange(path, data, first_frame_only, timeout_s))
        except BaseException as error:
            os.write(write_end, b"child: " + repr(error).encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        received = reader.read()
    _, exit_status = os.waitpid(pid, 0)
    assert exit_status == 0, received.decode(errors="replace")
    return received


def _exchange(path: Path, data: bytes, first_frame_only: bool, timeout_s: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the daemon may have answered and closed already
        received = b""
        with contextlib.suppress(ConnectionResetError):  # it closed, ours unread
            while not first_frame_only or not _has_whole_frame(received):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return received


def _has_whole_frame(data: bytes) -> bool:
    return len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big")
