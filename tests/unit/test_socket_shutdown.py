"""The premise of closing an idle socket connection without losing a request
(``Connection.close_idle``), checked on this kernel: once the daemon's side of an AF_UNIX
stream shuts reading, a peer's send fails at once with nothing of it received."""

from __future__ import annotations

import socket

import pytest

from quotad.daemon.server import connection as connection_module


@pytest.mark.parametrize("queued", [b"", b"a frame sent first"])
def test_shutting_the_read_side_lets_in_what_came_before_and_fails_every_later_send(
    queued: bytes,
) -> None:
    """What closing an idle connection rests on (``Connection.close_idle``): on an AF_UNIX
    stream, once the daemon's side shuts reading, a peer's send fails at once (EPIPE, nothing
    of it received), while what it sent before is still read, then the end."""
    daemon_side, client_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with daemon_side, client_side:
        client_side.sendall(queued)
        assert connection_module._shut_reading(daemon_side.fileno()) is bool(queued)
        with pytest.raises(BrokenPipeError):
            client_side.send(b"a frame sent after", socket.MSG_NOSIGNAL)
        received = b""
        while chunk := daemon_side.recv(4096):
            received += chunk
        assert received == queued
        daemon_side.sendall(b"answers still go out")
        assert client_side.recv(4096) == b"answers still go out"
