"""A raw HTTP/1.1 server on a loopback port for tests that need answers no well-behaved
server gives (huge or endless bodies, keys echoed in odd encodings): :class:`RawHTTPServer`
runs in a thread, reads each request (head and ``content-length`` body) and lets a handler
write whatever bytes it likes; always stopped by the test that starts it."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from quotad.client import Client

Handler = Callable[["RawRequest", socket.socket], None]
"""Writes the answer to a request on the socket (it may write forever: a closed peer ends it)."""


class RawRequest:
    """A request as it came: its request line, lower-cased headers, and body."""

    def __init__(self, line: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        self.line = line
        self.headers = headers
        self.body = body

    @property
    def path(self) -> str:
        return self.line.split(b" ")[1].decode()


def _read_request(connection: socket.socket, buffer: bytearray) -> RawRequest | None:
    while b"\r\n\r\n" not in buffer:
        data = connection.recv(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n")
    line, *lines = bytes(buffer[:end]).split(b"\r\n")
    del buffer[: end + 4]
    headers = {}
    for header in lines:
        name, _, value = header.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    while len(buffer) < length:
        data = connection.recv(65536)
        if not data:
            return None
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return RawRequest(line, headers, body)


class RawHTTPServer:
    """``handler`` answers every request, on as many keep-alive connections as come; use as a
    context manager. :attr:`requests` counts the requests read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                connection: socket.socket = self.request
                buffer = bytearray()
                try:
                    while (request := _read_request(connection, buffer)) is not None:
                        outer.requests += 1
                        outer.handler(request, connection)
                except OSError:
                    pass  # the peer went away mid-answer: what huge answers are for

        class _Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RawHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def answer(
    status: int, body: bytes, headers: dict[str, str] | None = None, reason: str = "X"
) -> Callable[[RawRequest, socket.socket], None]:
    """A handler answering every request with ``status`` and ``body`` (content-length)."""

    def handle(request: RawRequest, connection: socket.socket) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", f"content-length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return handle


def endless(
    head: bytes, piece: bytes, total: int, *, chunked: bool = False
) -> Callable[[RawRequest, socket.socket], Any]:
    """A handler sending ``head`` then ``piece`` again and again, ``total`` bytes in all (as
    chunks when ``chunked``), until done or the peer goes away."""

    def handle(request: RawRequest, connection: socket.socket) -> None:
        connection.sendall(head)
        sent = 0
        frame = b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece
        while sent < total:
            connection.sendall(frame)
            sent += len(piece)
        if chunked:
            connection.sendall(b"0\r\n\r\n")

    return handle


def relay(client: Client, pieces: list[int]) -> None:
    """Stream a chat from ``raw/m`` (a raw server's account), noting the size of each piece
    of text relayed."""
    for chunk in client.chat_stream("raw/m", [{"role": "user", "content": "hi"}], cache="bypass"):
        pieces.append(len(chunk.delta))
