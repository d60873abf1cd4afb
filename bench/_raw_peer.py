"""A raw peer of the daemon's socket for the benchmarks: frames encoded once and written to a
plain Unix socket, replies decoded as they come; the least a client can do per round trip, so
the direct baseline the client library and the fleet are measured against. Not a benchmark
itself (the smoke test skips ``bench/_*.py``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import Hello

RECEIVE_BYTES = 1 << 16


class RawPeer:
    """A connection to the daemon at ``path`` that has said Hello as app ``bench``."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.encoder = FrameEncoder()
        self.decoder = reply_decoder()
        self.pending: list[Any] = []
        """Replies decoded but not yet asked for."""
        self.request(self.encoder.encode(Hello(app="bench")))

    def receive(self, count: int) -> list[Any]:
        """The next ``count`` replies, read until that many came (later ones kept)."""
        while len(self.pending) < count:
            data = self.sock.recv(RECEIVE_BYTES)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            self.pending.extend(self.decoder.feed(data))
        replies, self.pending = self.pending[:count], self.pending[count:]
        return replies

    def request(self, frame: bytes) -> Any:
        """Send one encoded request; its reply."""
        self.sock.sendall(frame)
        (reply,) = self.receive(1)
        return reply
