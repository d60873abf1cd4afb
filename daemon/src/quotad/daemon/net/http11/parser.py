"""HTTP/1.1 request parsing for the server core: bytes in, events out, no I/O.

One :class:`RequestParser` per connection holds the bytes read so far. :meth:`~RequestParser.
next_event` returns the next :class:`RequestHead`, :class:`BodyData` or :data:`END_OF_MESSAGE`
of the current request, or :data:`NEED_DATA`; :meth:`~RequestParser.start_next` moves on to
the next request, keeping what was read beyond this one (pipelining). It replaces h11 on the
server side, where h11's general state machine and per-event validation cost several times
the rest of the parse; what it accepts is the same, what it refuses raises :class:`ParseError`
with the status to answer:

- request line ``METHOD SP TARGET SP HTTP/1.x`` (a token method, a target without spaces or
  control characters); another version is 505, anything else 400;
- header lines ``name: value`` (token names; values without control characters but tab),
  CRLF or bare-LF line ends; obsolete line folding, an HTTP/1.1 request without ``host``,
  ``content-length`` not a number or given twice differently, or given with
  ``transfer-encoding``: 400; a transfer-encoding other than ``chunked``: 501;
- a head over ``max_head_bytes`` still incomplete: 431 (the server checks complete heads);
- bodies framed by ``content-length`` or chunked (chunk extensions and trailers skipped);
  the client's close in the middle of a request: 400 (the server then just closes).
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

NEED_DATA: Final = "need data"
END_OF_MESSAGE: Final = "end of message"
CLOSED: Final = "closed"
"""The client closed the connection between requests."""

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET: Final = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_HEADER_LINE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*+"
    rb"((?:[^\x00-\x20\x7f]++|[ \t]++(?=[^\x00-\x20\x7f]))*+)[ \t]*+\r?"
)
"""A whole header line as split on LF: a token name, and a value without control characters
but tab, its surrounding blanks (and the line's CR) outside the group. The value is runs of
visible bytes and runs of blanks followed by a visible byte, all possessive: the match takes
linear time whatever the line (a lazy ``.*?`` between blanks backtracks cubically)."""
_HEX: Final = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN_START: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_VERSIONS: Final = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
_MAX_CHUNK_LINE: Final = 4096

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE = range(7)


class ParseError(Exception):
    """A request that cannot be served; ``error_status_hint`` is the status to answer."""

    def __init__(self, message: str, error_status_hint: int = 400) -> None:
        super().__init__(message)
        self.error_status_hint = error_status_hint


class RequestHead:
    """A request's line and headers (names lower-cased, values without surrounding blanks),
    and what the parse learnt of them: ``size``, the bytes of the line and the headers as
    ``name: value`` lines; ``content_length``, the declared body size (0 when none or
    chunked); ``keep_alive``, false for HTTP/1.0 or a ``connection`` header saying close."""

    __slots__ = (
        "content_length",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "size",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.size = len(method) + len(target) + 12
        self.content_length = 0
        self.keep_alive = http_version == b"1.1"


class BodyData:
    """A piece of a request's body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


Event = RequestHead | BodyData | str


class RequestParser:
    """Parses the requests of one connection, one after another (see the module docstring)."""

    __slots__ = ("_buffer", "_closed", "_expect_continue", "_remaining", "_state", "max_head_bytes")

    def __init__(self, max_head_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self._buffer = bytearray()
        self._closed = False
        self._state = _HEAD
        self._remaining = 0
        self._expect_continue = False

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; ``b""`` means the client closed its side."""
        if data:
            self._buffer += data
        else:
            self._closed = True

    @property
    def has_data(self) -> bool:
        """Whether bytes beyond the requests parsed so far have arrived."""
        return bool(self._buffer)

    @property
    def client_is_waiting_for_100_continue(self) -> bool:
        """The head asked ``expect: 100-continue`` and none of its body has come yet."""
        return self._expect_continue and self._state != _DONE and not self._buffer

    def start_next(self) -> None:
        """Parse the next request (the current one is complete)."""
        self._state = _HEAD
        self._expect_continue = False

    def next_event(self) -> Event:
        """The next event of the current request; :data:`NEED_DATA` when more bytes are
        needed first. Raises :class:`ParseError`."""
        state = self._state
        if state == _HEAD:
            return self._head()
        if state == _LENGTH:
            return self._length_body()
        if state == _DONE:
            return END_OF_MESSAGE
        return self._chunked_body()

    # ------------------------------------------------------------------ head

    def _head(self) -> Event:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        size = 4
        if end < 0:
            end, size = buffer.find(b"\n\n"), 2
        if end < 0:
            if buffer and buffer[0] not in _TOKEN_START:
                raise ParseError("bad request line")  # not HTTP at all (TLS, garbage)
            if len(buffer) > self.max_head_bytes:
                raise ParseError("request line and headers too large", 431)
            if self._closed:
                if buffer:
                    raise ParseError("the client closed the connection in a request head")
                return CLOSED
            return NEED_DATA
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + size]
        head = _request_line(lines[0].removesuffix(b"\r"))
        headers = head.headers
        size = head.size
        length: int | None = None
        chunked = False
        has_host = False
        for raw in lines[1:]:
            match = _HEADER_LINE.fullmatch(raw)
            if match is None:
                _refuse_header_line(raw.removesuffix(b"\r"))
            name, value = match.groups()
            name = name.lower()
            headers.append((name, value))
            size += len(name) + len(value) + 4
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise ParseError(f"bad content-length {value[:20]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked":
                    raise ParseError(f"transfer-encoding {value[:40]!r} is not supported", 501)
                chunked = True
            elif name == b"host":
                has_host = True
            elif name == b"expect" and value.lower() == b"100-continue":
                self._expect_continue = True
            elif name == b"connection" and b"close" in value.lower():
                head.keep_alive = False
        if chunked and length is not None:
            raise ParseError("both content-length and transfer-encoding")
        if head.http_version == b"1.1" and not has_host:
            raise ParseError("missing host header")
        head.size = size
        head.content_length = length or 0
        if chunked:
            self._state = _CHUNK_SIZE
        elif length:
            self._state, self._remaining = _LENGTH, length
        else:
            self._state = _DONE
        return head

    # ------------------------------------------------------------------ bodies

    def _length_body(self) -> Event:
        if self._remaining == 0:
            self._state = _DONE
            return END_OF_MESSAGE
        buffer = self._buffer
        if not buffer:
            if self._closed:
                raise ParseError("the client closed the connection in a request body")
            return NEED_DATA
        data = bytes(buffer[: self._remaining])
        del buffer[: len(data)]
        self._remaining -= len(data)
        return BodyData(data)

    def _line(self) -> bytes | None:
        """The next line of chunk framing (without its line end), or None until it is in."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > _MAX_CHUNK_LINE:
                raise ParseError("a chunk size or trailer line too long")
            if self._closed:
                raise ParseError("the client closed the connection in a request body")
            return None
        line = bytes(buffer[:end]).removesuffix(b"\r")
        del buffer[: end + 1]
        return line

    def _chunked_body(self) -> Event:
        while True:
            state = self._state
            if state == _CHUNK_DATA:
                data = self._length_body()
                if data == END_OF_MESSAGE:
                    self._state = _CHUNK_END
                    continue
                if isinstance(data, BodyData):
                    self._state = _CHUNK_DATA
                return data
            line = self._line()
            if line is None:
                return NEED_DATA
            if state == _CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size):
                    raise ParseError(f"bad chunk size {size[:20]!r}")
                self._remaining = int(size, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                if line:
                    raise ParseError("a chunk longer than its size")
                self._state = _CHUNK_SIZE
            elif not line:  # _TRAILERS: an empty line ends them
                self._state = _DONE
                return END_OF_MESSAGE


def _refuse_header_line(line: bytes) -> NoReturn:
    """Raise the :class:`ParseError` that says what is wrong with a header ``line`` that
    :data:`_HEADER_LINE` did not match."""
    if line[:1] in (b" ", b"\t"):
        raise ParseError("obsolete header line folding")
    name, colon, _ = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise ParseError(f"bad header line {line[:100]!r}")
    raise ParseError(f"bad character in header {name.decode()!r}")


def _request_line(line: bytes) -> RequestHead:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise ParseError(f"bad request line {line[:100]!r}")
    version = _VERSIONS.get(parts[2])
    if version is None:
        if parts[2].startswith(b"HTTP/"):
            raise ParseError(f"unsupported version {parts[2][:20]!r}", 505)
        raise ParseError(f"bad request line {line[:100]!r}")
    return RequestHead(parts[0], parts[1], version, [])
