"""Binding the daemon's Unix socket: a path too long for ``sun_path`` is refused with what the
bound is, before anything is created (``bind()`` says only "AF_UNIX path too long", with no
errno: the daemon's message was "cannot bind …: None")."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from quotad.daemon.server.binding import (
    MAX_SOCKET_PATH_BYTES,
    SocketInUseError,
    bind_unix_socket,
)


def test_a_socket_path_too_long_to_bind_says_so_and_how_long_it_may_be() -> None:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        longest = directory / ("a" * (MAX_SOCKET_PATH_BYTES - len(str(directory)) - 1))
        assert len(str(longest)) == MAX_SOCKET_PATH_BYTES
        bind_unix_socket(longest).close()  # the longest path binds
        too_long = directory / ("b" * (MAX_SOCKET_PATH_BYTES - len(str(directory))))
        with pytest.raises(SocketInUseError) as refused:
            bind_unix_socket(too_long)
        expected = (
            f"its path is 108 bytes and a Unix socket's holds at most {MAX_SOCKET_PATH_BYTES}"
        )
        assert expected in str(refused.value)
        assert not too_long.exists()
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("file/q.sock", "cannot use {directory}/file/q.sock: Not a directory"),
        ("file/sub/q.sock", "cannot use {directory}/file/sub for the socket: Not a directory"),
        ("a\0b/q.sock", "a path cannot hold a NUL character"),
    ],
)
def test_a_socket_path_that_cannot_be_used_is_a_clear_error(relative: str, expected: str) -> None:
    """A socket whose parent is a regular file, or whose path holds a NUL, was a traceback
    (NotADirectoryError, ValueError) out of `quotad serve`."""
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        (directory / "file").write_text("")
        with pytest.raises(SocketInUseError) as refused:
            bind_unix_socket(directory / relative)
        assert expected.format(directory=directory) in str(refused.value)
    finally:
        shutil.rmtree(directory)
