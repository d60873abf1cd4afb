"""Talking to a daemon's Unix socket below the client: a plain connected socket, and the reply
frames read off it (until the daemon closes, or a count of them)."""

from __future__ import annotations

import socket
from pathlib import Path

from quotad.protocol.framing import reply_decoder
from quotad.protocol.messages import Reply


def unix_connection(path: Path, timeout_s: float = 5.0) -> socket.socket:
    """A blocking socket connected to ``path``, each call on it bounded by ``timeout_s``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect(str(path))
    return sock


def replies_until_closed(sock: socket.socket, *, reset_is_close: bool = False) -> list[Reply]:
    """Every reply until the daemon closes the connection (with ``reset_is_close``, a reset
    counts as the close: the daemon closed with what was sent still unread)."""
    decoder = reply_decoder()
    replies: list[Reply] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            if not reset_is_close:
                raise
            return replies
        if not data:
            return replies
        replies.extend(decoder.feed(data))


def read_replies(sock: socket.socket, count: int) -> list[Reply]:
    """The next ``count`` replies; fails if the daemon closes before."""
    decoder = reply_decoder()
    replies: list[Reply] = []
    while len(replies) < count:
        data = sock.recv(65536)
        assert data, f"closed after {replies}"
        replies.extend(decoder.feed(data))
    return replies
