"""Another user at the daemon's socket: a forked child that drops to a uid (and gid, groups),
connects, sends, and hands back what it read; for the tests of who may connect (SO_PEERCRED,
``daemon.allow_uids``). Needs root to change uid; the tests that use it skip without."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


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
    pid = _fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        _as_user(
            uid,
            uid if gid is None else gid,
            groups,
            write_end,
            lambda: os.write(write_end, _exchange(path, data, first_frame_only, timeout_s)),
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        received = reader.read()
    _, exit_status = os.waitpid(pid, 0)
    assert exit_status == 0, received.decode(errors="replace")
    return received


def _fork() -> int:
    """``os.fork()``, without its warning about threads (the child only makes syscalls)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _as_user(
    uid: int, gid: int, groups: Sequence[int], report: int, work: Callable[[], object]
) -> NoReturn:
    """In a forked child: become ``uid`` (``gid``, ``groups``), do ``work``, and end; an
    error is written to ``report`` for the parent (and the child exits 1)."""
    status = 0
    try:
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
        work()
    except BaseException as error:
        os.write(report, b"child: " + repr(error).encode())
        status = 1
    finally:
        os._exit(status)


def _exchange(path: Path, data: bytes, first_frame_only: bool, timeout_s: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the daemon may have answered and closed already
        with contextlib.suppress(ConnectionResetError):  # it closed, ours unread
            return _read(sock, first_frame_only)
        return b""


def _read(sock: socket.socket, first_frame_only: bool) -> bytes:
    """What ``sock`` reads until the peer closes, or with ``first_frame_only`` until a
    whole frame is in."""
    received = b""
    while not first_frame_only or not _has_whole_frame(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _has_whole_frame(data: bytes) -> bool:
    return len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big")


class ConnectionsHeldAs:
    """Connections held open by a forked child running as ``uid``: it opens ``count`` to the
    Unix socket ``path``, sends ``hello`` on each and reads its first frame, reports each
    (:meth:`answers`), then holds them all until :meth:`release`. For the tests of what one uid
    may hold; needs root. The child closes every descriptor it inherited but its pipes, so that
    it holds none of the parent's sockets open."""

    def __init__(self, path: Path, count: int, *, uid: int, hello: bytes) -> None:
        answers_read, answers_write = os.pipe()
        release_read, release_write = os.pipe()
        pid = _fork()
        if pid == 0:  # pragma: no cover - the child
            keep = sorted((answers_write, release_read))
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 65536)

            def hold() -> None:
                held = [_first_frame(path, hello) for _ in range(count)]
                os.write(answers_write, b"".join(frame for _, frame in held))
                os.close(answers_write)  # the parent's read of the answers ends
                os.read(release_read, 1)  # until the parent closes its end

            _as_user(uid, uid, (), answers_write, hold)
        os.close(answers_write)
        os.close(release_read)
        self.pid = pid
        self._answers = os.fdopen(answers_read, "rb")
        self._release = release_write

    def answers(self) -> bytes:
        """The first frame each connection got, one after another (blocks until the child
        has them all)."""
        with self._answers:
            answers = self._answers.read()
        assert not answers.startswith(b"child: "), answers.decode(errors="replace")
        return answers

    def release(self) -> None:
        """Let the child close its connections and end; wait for it."""
        os.close(self._release)
        _, exit_status = os.waitpid(self.pid, 0)
        assert exit_status == 0


def _first_frame(path: Path, hello: bytes) -> tuple[socket.socket, bytes]:
    """A connection to ``path`` that sent ``hello``, and the first whole frame it read."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    sock.connect(str(path))
    sock.sendall(hello)
    return sock, _read(sock, first_frame_only=True)
