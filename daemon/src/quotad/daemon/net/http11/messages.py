"""What an HTTP handler sees and answers: :class:`HttpRequest`, :class:`HttpResponse`,
:class:`StreamingResponse`, :class:`AbortConnection` and the :data:`Handler` signature; and
:class:`HttpLimits`, the bounds on what one request may take."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class HttpLimits:
    """Bounds on what one request may take."""

    max_header_bytes: int = 65536
    max_body_bytes: int = 16 * 1024 * 1024
    read_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0


@dataclass(slots=True)
class HttpRequest:
    """One complete request."""

    method: str
    target: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: tuple[str, int] | None = None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None when absent."""
        key = name.lower().encode("latin-1")
        for header_name, value in self.headers:
            if header_name == key:
                return value.decode("latin-1")
        return None


@dataclass(slots=True)
class HttpResponse:
    """A complete answer; the server adds ``content-length``."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclass(slots=True)
class StreamingResponse:
    """An answer whose body is sent chunk by chunk as ``chunks`` yields it."""

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | StreamingResponse]]


class AbortConnection(Exception):
    """Raised by a handler or a streaming iterator: close the connection without an answer
    (or in the middle of a stream). ``reset=True`` closes with a TCP RST instead of a FIN."""

    def __init__(self, *, reset: bool = False) -> None:
        super().__init__("abort the connection" + (" with a reset" if reset else ""))
        self.reset = reset
