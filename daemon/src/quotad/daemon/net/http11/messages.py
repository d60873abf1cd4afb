"""What an HTTP handler sees and answers: :class:`HttpRequest`, :class:`HttpResponse`,
:class:`StreamingResponse`, :class:`AbortConnection`, the :data:`Handler` signature and the two
hooks beside it, :data:`Authorize` (a request's head, before its body is read) and
:data:`ErrorAnswer` (how the server's own refusals are answered); :class:`HttpLimits`, the
bounds on what one request and one listener may take; and :class:`BodyMemory`, the bound the
server may share on the bodies it buffers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

Headers = list[tuple[str, str]]

HEAD_TIMEOUT_S: Final = 10.0
"""How long an unidentified connection (see :class:`HttpLimits`) has to send a whole request
head: a peer without a key held connections 75 s idle, then 30 s for a head."""
HEADER_FIELD_COST: Final = 32
"""What each header field counts against ``max_header_bytes`` beyond its bytes, as HTTP/2
counts a header list (RFC 9113, section 6.5.2): a parsed header holds some 120 bytes (a tuple
of two bytes objects in a list) however short its line, and a 64 KB head of 16,000 four-byte
headers (``a:``) held 1.9 MB (one stalled head per connection, 200 connections: +374 MB); so
counted, it holds at most 1,800 such headers, 200 KB (200 connections: +39 MB)."""
UNIDENTIFIED_SHARE: Final = 0.5
"""The share of ``max_connections`` that unidentified connections may hold together."""


@dataclass(slots=True)
class HttpLimits:
    """Bounds on what one request, and one listener, may take."""

    max_header_bytes: int = 65536
    """The request line and the headers, as sent (line ends included), each header counting
    :data:`HEADER_FIELD_COST` bytes more; larger is 431."""
    max_body_bytes: int = 16 * 1024 * 1024
    """A body, declared (``content-length``) or read (chunked); larger is 413."""
    max_body_chunks: int = 16384
    """Chunks in a chunked body; more is 413 (each chunk costs a callback: a body of a
    million one-byte chunks costs far more than its bytes)."""
    read_timeout_s: float = 30.0
    """A request that has started arriving must be complete within this (else 408)."""
    idle_timeout_s: float = 75.0
    """How long a connection waits for its next request."""
    max_connections: int = 1024
    """Open connections per listener; a connection beyond it is answered 503 and closed at
    once, unread (unless an unidentified one makes room, see below)."""
    head_timeout_s: float = HEAD_TIMEOUT_S
    """A connection is *unidentified* until one of its requests is let in naming who sends it
    (:attr:`HttpRequest.authorized` set by :data:`Authorize`; any request when there is no
    such hook): while it is, each request head must be complete within this, counted from
    the connection's start or its last answer (else 408 and close, or a quiet close if none of
    it came). A peer without a key cannot hold connections longer."""
    unidentified_share: float = UNIDENTIFIED_SHARE
    """Unidentified connections hold at most this share of ``max_connections`` (at least one):
    a new connection past it, or past ``max_connections``, makes room by closing the oldest
    unidentified connection waiting for a head (a 503 if it had sent part of one), else by
    dropping the oldest whose answers wait for it to read them (it pipelined requests and
    reads none of the answers); only when there is neither is the new one refused. So a peer
    without a key, however many connections it opens, cannot keep out one that has a key: the
    newest connection is the last closed."""

    @property
    def max_unidentified(self) -> int:
        """Unidentified connections that may be open at once (see :attr:`unidentified_share`)."""
        return max(1, int(self.max_connections * self.unidentified_share))


@dataclass(slots=True)
class HttpRequest:
    """One request: its head, then (once read) its body. :data:`Authorize` sees it with an
    empty ``body``, before any of the body has been read; the handler sees it complete."""

    method: str
    target: str
    path: str
    headers: list[tuple[bytes, bytes]]
    """``(lower-cased name, value)`` pairs, values without surrounding blanks."""
    body: bytes = b""
    client: tuple[str, int] | None = None
    authorized: object = None
    """What :data:`Authorize` learnt of the request (who sends it, say), left here for the
    handler; None when no hook set it."""

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
    """An answer whose body is sent chunk by chunk as ``chunks`` yields it.

    ``trailer_names`` are fields known only once the body is (a stream's cost): announced in
    the head (``trailer``), and sent after the last chunk as ``chunks`` has put them in
    ``trailers`` by its end (those it did not are left out; none on an HTTP/1.0 answer, which
    is not chunked).

    ``write_stall_s`` bounds how long its body may wait for the client to read any of it
    before the connection is dropped (None: the server's bound, ``WRITE_STALL_S``)."""

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]
    trailer_names: tuple[str, ...] = ()
    trailers: Headers = field(default_factory=list)
    write_stall_s: float | None = None


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | StreamingResponse]]

Authorize = Callable[[HttpRequest], HttpResponse | None]
"""Called when a request's head is complete, before any of its body is read (its ``body`` is
still empty), in the order requests arrive: None admits the request (its body is read, then
the handler runs); a response is the answer instead, and the handler never sees the request.
A refused request that has a body closes the connection after the answer, its body unread;
one without a body leaves a keep-alive connection open. It runs in the event loop's read
callback: it must be quick and must not block (a dict lookup, not I/O)."""

ErrorAnswer = Callable[[int, str], HttpResponse]
"""How the server answers a request it refuses itself (400, 408, 413, 431, 501, 505; 500 for
a handler that failed or an answer it could not write), given the status and what is wrong.
:func:`default_error_answer` unless the server is given another (the front door's adds its
request id)."""


class BodyMemory(Protocol):
    """A bound on the body bytes all the server's connections buffer, shared with whatever
    else holds requests (the daemon's :class:`~quotad.daemon.request_memory.RequestMemory`,
    with the Unix socket's): a body part past it is answered 503 and its connection closed."""

    def take(self, size: int, own: int = 0) -> bool:
        """Hold ``size`` more bytes for a request holding ``own``; False: refuse it."""
        ...

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken before."""
        ...

    def refusal(self) -> str:
        """What a request refused for want of room is told."""
        ...


_json = msgspec.json.Encoder()


def error_body(status: int, message: str) -> bytes:
    """A JSON error body both SDK families understand: ``error.message`` for OpenAI's,
    ``type: "error"`` + ``error.type`` for Anthropic's. Its ``code`` is one of the wire
    protocol's (DESIGN §5): ``internal`` for the server's own failure, ``overloaded`` for a
    503, else ``bad_request`` (the status tells which: 400, 408, 413, 431, 501, 505)."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    code = {500: "internal", 503: "overloaded"}.get(status, "bad_request")
    return _json.encode(
        {"type": "error", "error": {"type": kind, "message": message, "code": code}}
    )


def default_error_answer(status: int, message: str) -> HttpResponse:
    """The :data:`ErrorAnswer` of a server given none: :func:`error_body` as JSON (a 503
    with ``retry-after``)."""
    headers = [("content-type", "application/json")]
    if status == 503:
        headers.append(("retry-after", "1"))
    return HttpResponse(status, headers, error_body(status, message))


class AbortConnection(Exception):
    """Raised by a handler or a streaming iterator: close the connection without an answer
    (or in the middle of a stream). ``reset=True`` closes with a TCP RST instead of a FIN."""

    def __init__(self, *, reset: bool = False) -> None:
        super().__init__("abort the connection" + (" with a reset" if reset else ""))
        self.reset = reset
