"""HTTP/1.1 request parsing for the server core, by llhttp (through ``httptools``, as uvicorn
does): bytes in, requests out, no I/O.

One :class:`RequestParser` per connection. :meth:`~RequestParser.feed` hands the bytes read to
llhttp, whose callbacks build each request; requests queue up in :attr:`~RequestParser.
requests` in the order they arrive (pipelining), each an :class:`IncomingRequest` that is
complete, still reading its body, or refused (its ``refusal`` the answer to send instead).
A request's head goes through the server's :data:`~.messages.Authorize` hook as soon as it is
complete, before any of its body is read.

What is refused, with its status (each closes the connection after the answer):

- whatever llhttp refuses in its strict mode (no leniency is turned on): methods it does not
  know, control bytes or bare CR in the target, names or values, bare LF line ends, obsolete
  line folding, ``content-length`` not a number or given twice, ``content-length`` with
  ``transfer-encoding``, a ``transfer-encoding`` not ending in ``chunked``, bad chunk sizes
  (blanks, ``0x``, overflow), chunk data longer than its size, a request line in the trailers: 400;
- beyond llhttp, what h11 refuses too: a request line that is not exactly ``METHOD SP TARGET SP
  HTTP/x.y CRLF`` (two spaces, leading empty lines, a target byte outside ``\\x21-\\x7e``);
  an HTTP/1.1 request without ``host``, or any request with several: 400; a
  ``transfer-encoding`` other than ``chunked`` alone: 501; a version other than 1.0 and 1.1: 505;
- a head over ``max_header_bytes`` (each header counting :data:`~.messages.HEADER_FIELD_COST`
  bytes more, counted by its line ends as each piece of the head comes, before llhttp parses
  it, so that a head never complete holds no more headers than a whole one): 431; a body over
  ``max_body_bytes`` (declared or read) or in more than ``max_body_chunks`` chunks: 413; chunk
  extensions and trailers over ``max_header_bytes`` together: 400;
- a body part the shared :class:`~.messages.BodyMemory` has no room for: 503.

Body bytes are taken from that :class:`~.messages.BodyMemory` (when the parser is given
one) as they are buffered, counted in the request's
:attr:`~IncomingRequest.held`, and given back once (:meth:`RequestParser.release`): when the
request is refused, when its answer is done, or when the connection closes
(:meth:`RequestParser.release_all`, for the requests still queued and one half read).

Pipelined requests are parsed :data:`QUEUED_REQUESTS` ahead of the one taken at most, and
:data:`PARSE_BYTES` (then to the end of the request) at one go: what was read beyond waits in
the :attr:`~RequestParser.backlog` (the connection stops reading meanwhile) and is parsed as
the queue is taken (:meth:`~RequestParser.parse_backlog`), so that a read of many requests is
not parsed (nor authorized) all in one callback. Nor is a request parsed ahead while the heads
of those not released yet (queued, or being answered) count :data:`HELD_HEAD_BYTES`: each
head is given back with its body bytes, by :meth:`~RequestParser.release`.

llhttp reports no offsets, so :meth:`~RequestParser.feed` cuts what it hands over right after
every CRLF CRLF (where a head, or a chunked body, can end) and at the end of a
``content-length`` body: a request then always ends at the end of a piece, the next one begins
at a known byte (whose request line is checked, and whose head is counted, before llhttp sees
it), and a request that llhttp would end anywhere else is refused.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Final

import httptools

from quotad.daemon.net.http11.messages import (
    HEADER_FIELD_COST,
    Authorize,
    BodyMemory,
    ErrorAnswer,
    HttpLimits,
    HttpRequest,
    HttpResponse,
)

logger = logging.getLogger("quotad.daemon.net.http11.server")  # the HTTP core logs as its server

_REQUEST_LINE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n"
)
_FRAMING_HEADERS: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")
)
_METHODS: Final = {method.encode(): method for method in ("GET", "POST", "HEAD", "PUT")}
_END_OF_HEAD: Final = b"\r\n\r\n"
_START, _HEAD, _LENGTH_BODY, _CHUNKED_BODY, _STOPPED = range(5)
QUEUED_REQUESTS: Final = 16
"""Requests parsed ahead of the one being answered at most; bytes beyond wait unparsed
(:attr:`RequestParser.backlog`) until the queue is taken. Each head costs llhttp's callbacks
and the authorize hook: one read of 256 KB of small pipelined requests, parsed whole, held the
event loop 100-370 ms (7,700 heads) in the read callback."""
PARSE_BYTES: Final = 16 * 1024
"""Bytes parsed at one go at most, beyond which the next request waits in the backlog too: a
head costs about a microsecond a header (a 56 KB head of 7,000: 4.7 ms), and sixteen such
heads held the loop 75 ms."""
HELD_HEAD_BYTES: Final = 16 * 1024
"""Head bytes (as counted against ``max_header_bytes``) that the requests of a connection not
released yet, the one being answered among them, may hold before the next request waits in
the backlog too, however the bytes were read: each read was parsed afresh, so a client that
wrote one big head at a time while the request before was answered had up to
:data:`QUEUED_REQUESTS` of them held (heads of 1,800 headers: 3.4 MB a connection, 200
connections: +675 MB). Now a connection holds at most this, and one head more."""


class _Stop(Exception):
    """Raised in a callback to make llhttp stop: the parser has queued its refusal."""


class IncomingRequest:
    """A request as it arrives: ``request`` once its head is complete (None for a head that
    was refused), ``complete`` once its body is in, or ``refusal``, the answer to send
    instead of calling the handler (``closes``: the connection closes after it)."""

    __slots__ = (
        "_body_parts",
        "body_size",
        "chunks",
        "closes",
        "complete",
        "continue_sent",
        "expect_continue",
        "head_bytes",
        "held",
        "http10",
        "keep_alive",
        "refusal",
        "request",
    )

    def __init__(self, request: HttpRequest | None, keep_alive: bool, http10: bool = False) -> None:
        self.request = request
        self.keep_alive = keep_alive
        self.http10 = http10
        self.complete = False
        self.refusal: HttpResponse | None = None
        self.closes = False
        self.expect_continue = False
        self.continue_sent = False
        self.body_size = 0
        self.chunks = 0
        self.held = 0
        """Body bytes taken from the parser's :class:`~.messages.BodyMemory`, not given back."""
        self.head_bytes = 0
        """Its head's bytes, as counted against ``max_header_bytes``, not given back (see
        :data:`HELD_HEAD_BYTES`)."""
        self._body_parts: list[bytes] = []

    @property
    def waits_for_100_continue(self) -> bool:
        """The head asked ``expect: 100-continue``, it was not sent, no body came yet."""
        return (
            self.expect_continue
            and not self.continue_sent
            and not self.body_size
            and not self.chunks
            and not self.complete
        )


class RequestParser:
    """Parses the requests of one connection, one after another (see the module docstring)."""

    __slots__ = (
        "_authorize",
        "_backlog",
        "_backlog_at",
        "_chunked_wire_bytes",
        "_client",
        "_content_length",
        "_current",
        "_ended_in_piece",
        "_error_answer",
        "_expect_continue",
        "_head_bytes",
        "_headers",
        "_held_head_bytes",
        "_hosts",
        "_http10",
        "_keep_alive",
        "_limits",
        "_line",
        "_line_checked",
        "_llhttp",
        "_memory",
        "_method",
        "_remaining",
        "_state",
        "_tail",
        "_target",
        "_transfer_encoding",
        "requests",
    )

    def __init__(
        self,
        limits: HttpLimits,
        error_answer: ErrorAnswer,
        authorize: Authorize | None = None,
        client: tuple[str, int] | None = None,
        memory: BodyMemory | None = None,
    ) -> None:
        self._limits = limits
        self._memory = memory
        self._error_answer = error_answer
        self._authorize = authorize
        self._client = client
        self._llhttp = httptools.HttpRequestParser(self)
        self.requests: deque[IncomingRequest] = deque()
        """Requests in arrival order: the connection takes them from the left."""
        self._state = _START
        self._current: IncomingRequest | None = None
        self._tail = b""
        self._backlog = b""
        self._backlog_at = 0
        self._ended_in_piece = False
        self._line = bytearray()
        self._line_checked = False
        self._method = ""
        self._target = ""
        self._http10 = False
        self._head_bytes = 0
        self._held_head_bytes = 0
        """What the requests not released yet hold of :data:`HELD_HEAD_BYTES`."""
        self._remaining = 0
        self._chunked_wire_bytes = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self._headers: list[tuple[bytes, bytes]] = []
        self._content_length = -1
        self._transfer_encoding: bytes | None = None
        self._hosts = 0
        self._keep_alive = True
        self._expect_continue = False

    @property
    def in_request(self) -> bool:
        """Bytes of a request that is not complete yet have arrived (a read deadline runs)."""
        return self._state in (_HEAD, _LENGTH_BODY, _CHUNKED_BODY)

    @property
    def stopped(self) -> bool:
        """Parsing has ended: a refusal that closes the connection is queued, or a request
        after which the connection closes (HTTP/1.0, ``connection: close``, a protocol
        switch); further bytes are not parsed."""
        return self._state == _STOPPED

    @property
    def backlog(self) -> bool:
        """Bytes read are waiting to be parsed: the queue was full when they came (see
        :meth:`feed`; :meth:`parse_backlog` parses them once it is taken)."""
        return bool(self._backlog)

    def release(self, incoming: IncomingRequest) -> None:
        """Give back the body bytes and the head ``incoming`` holds (its answer is done, or
        it was refused); nothing the second time."""
        held = incoming.held
        if held:
            incoming.held = 0
            assert self._memory is not None
            self._memory.give(held)
        self._held_head_bytes -= incoming.head_bytes
        incoming.head_bytes = 0

    def release_all(self) -> None:
        """Give back what the requests still queued hold (the connection closes)."""
        for incoming in self.requests:
            self.release(incoming)

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes) -> None:
        """Parse ``data``, the next bytes read from the client (cut into pieces as the module
        docstring says), up to :data:`QUEUED_REQUESTS` queued requests, the request that
        passes :data:`PARSE_BYTES`, or the heads not released yet passing
        :data:`HELD_HEAD_BYTES`; what follows waits in the :attr:`backlog`."""
        if self._backlog:
            self._backlog = self._backlog[self._backlog_at :] + data
            self._backlog_at = 0
        else:
            self._parse(data, 0)

    def parse_backlog(self) -> None:
        """Parse what waits in the :attr:`backlog` (as :meth:`feed` does), once the requests
        queued are taken and released."""
        data, start = self._backlog, self._backlog_at
        self._backlog = b""
        self._backlog_at = 0
        if data:
            self._parse(data, start)

    def _parse(self, data: bytes, start: int) -> None:
        """Parse ``data`` from ``start`` on: see :meth:`feed`."""
        size = len(data)
        view: memoryview | None = None
        position = start
        message_start = start
        while position < size:
            state = self._state
            if state == _STOPPED:
                return
            if state == _START:
                if (
                    len(self.requests) >= QUEUED_REQUESTS
                    or position - start >= PARSE_BYTES
                    or self._held_head_bytes >= HELD_HEAD_BYTES
                ):
                    self._backlog = data
                    self._backlog_at = position
                    return
                message_start = position
            if state == _LENGTH_BODY:
                end = min(size, position + self._remaining)
                self._remaining -= end - position
            else:
                end = self._piece_end(data, position, start)
                if state == _CHUNKED_BODY:
                    self._chunked_wire_bytes += end - position
                elif not self._head_piece(data, position, end):
                    return
            self._ended_in_piece = False
            if position == 0 and end == size:  # the usual case: one piece
                piece: bytes | memoryview = data
            else:
                view = view or memoryview(data)
                piece = view[position:end]
            try:
                self._llhttp.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._switching_protocols()
                return
            except httptools.HttpParserError as error:
                self._parse_failed(error)
                return
            if self._state == _CHUNKED_BODY:
                self._check_chunk_framing()
            position = end
        if self._state in (_HEAD, _CHUNKED_BODY):  # the current request's last bytes
            self._tail = (self._tail + data[max(message_start, size - 3) :])[-3:]

    def _parse_failed(self, error: httptools.HttpParserError) -> None:
        """llhttp stopped: a callback's :class:`_Stop` (its refusal is queued), llhttp's own
        refusal, or a bug in a callback (500, logged)."""
        if self._state == _STOPPED:
            return
        cause = error.__context__
        if cause is not None and not isinstance(cause, _Stop):
            logger.error("HTTP request parsing failed", exc_info=cause)
            self._refuse(500, "internal server error")
        else:
            self._refuse(*_llhttp_refusal(error))

    def _piece_end(self, data: bytes, position: int, start: int) -> int:
        """Where the piece starting at ``position`` ends: right after the next CRLF CRLF
        (one begun before ``start``, in the previous bytes parsed, counts), else at the end of
        ``data``."""
        if position == start and self._tail and self._state != _START:
            joined = self._tail + data[start : start + 3]
            found = joined.find(_END_OF_HEAD)
            if found >= 0:
                return start + found + 4 - len(self._tail)
        found = data.find(_END_OF_HEAD, position)
        return len(data) if found < 0 else found + 4

    def _head_piece(self, data: bytes, position: int, end: int) -> bool:
        """Count a piece of a head against ``max_header_bytes`` (each line end but those of
        the request line and of the head counting a header field's cost) and check the request
        line once it is in, before llhttp sees either; False when the head is refused."""
        if self._state == _START:
            self._state = _HEAD
            self._head_bytes = -2 * HEADER_FIELD_COST
            self._line = bytearray()
            self._line_checked = False
            self._tail = b""
        self._head_bytes += end - position + HEADER_FIELD_COST * data.count(b"\n", position, end)
        if self._head_bytes > self._limits.max_header_bytes:
            self._refuse(431, self._head_too_large())
            return False
        if not self._line_checked:
            line_end = data.find(b"\n", position, end)
            if line_end < 0:
                self._line += data[position:end]
                return True
            self._line_checked = True
            if self._line:  # the line came in pieces
                self._line += data[position : line_end + 1]
                match = _REQUEST_LINE.fullmatch(self._line)
                line = bytes(self._line)
            else:  # the usual case: checked where it is, not copied
                match = _REQUEST_LINE.fullmatch(data, position, line_end + 1)
                line = data
            if match is None:
                self._refuse(400, f"bad request line {line[position : position + 100]!r}")
                return False
            method, target, version = match.groups()
            if version not in (b"1.1", b"1.0"):
                self._refuse(505, f"unsupported version HTTP/{version.decode()}")
                return False
            self._method = _METHODS.get(method) or method.decode("ascii")
            self._target = target.decode("ascii")
            self._http10 = version == b"1.0"
        return True

    def _head_too_large(self) -> str:
        return (
            f"request line and headers exceed {self._limits.max_header_bytes} bytes (each "
            f"header counting {HEADER_FIELD_COST} bytes more)"
        )

    def _chunk_framing_too_large(self) -> bool:
        """Whether the chunk-size lines, extensions and trailers of the body so far pass
        ``max_header_bytes`` beyond 16 bytes a chunk (a size line and its CRLFs)."""
        current = self._current
        assert current is not None
        framing = self._chunked_wire_bytes - current.body_size - 16 * current.chunks
        return framing > self._limits.max_header_bytes

    def _check_chunk_framing(self) -> None:
        if self._chunk_framing_too_large():
            self._refuse(400, self._framing_message())

    def _framing_message(self) -> str:
        return f"chunk extensions and trailers exceed {self._limits.max_header_bytes} bytes"

    def _switching_protocols(self) -> None:
        """llhttp stopped after a CONNECT or ``upgrade`` request: it is answered (quotad
        switches to no other protocol), then the connection closes."""
        last = self.requests[-1] if self.requests else None
        if self._state == _START and last is not None and last.complete:
            last.keep_alive = False
            self._state = _STOPPED
        else:
            self._refuse(400, "a protocol upgrade with a request body")

    # ------------------------------------------------------------------ refusing

    def _refuse(self, status: int, message: str, response: HttpResponse | None = None) -> None:
        """Queue the answer to the request being read (``response``, else the server's
        error answer) and stop parsing: the connection closes after it."""
        current = self._current
        if current is None or current.complete:
            current = IncomingRequest(None, keep_alive=False)
            self.requests.append(current)
        if response is None:
            text = message if status in (413, 431, 500, 503) else f"bad request: {message}"
            response = self._error_answer(status, text)
        current.refusal = response
        current.closes = True
        current.keep_alive = False
        current._body_parts = []
        self.release(current)
        self._current = None
        self._state = _STOPPED

    def _stop(self, status: int, message: str) -> _Stop:
        self._refuse(status, message)
        return _Stop()

    # ------------------------------------------------------------------ llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._ended_in_piece:  # a request ended inside a piece: its end was not a cut
            raise self._stop(400, "a request ended where none can end")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._current is not None:
            return  # a trailer: skipped (counted in the chunk framing)
        name = name.lower()
        value = value.rstrip(b" \t")
        self._headers.append((name, value))
        if name in _FRAMING_HEADERS:
            self._framing_header(name, value)

    def _framing_header(self, name: bytes, value: bytes) -> None:
        """A header that says how the request is framed or answered."""
        if name == b"content-length":
            self._content_length = int(value)  # llhttp checked it: digits, given once
        elif name == b"transfer-encoding":
            self._transfer_encoding = value
        elif name == b"host":
            self._hosts += 1
        elif name == b"connection":
            if b"close" in value.lower():
                self._keep_alive = False
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True

    def on_headers_complete(self) -> None:
        limits = self._limits
        http10 = self._http10
        if self._hosts > 1 or (self._hosts == 0 and not http10):
            raise self._stop(400, f"expected one host header, got {self._hosts}")
        encoding = self._transfer_encoding
        chunked = encoding is not None
        if encoding is not None and encoding.lower() != b"chunked":
            raise self._stop(501, f"transfer-encoding {encoding[:40]!r} is not supported")
        target = self._target
        request = HttpRequest(
            method=self._method,
            target=target,
            path=target.partition("?")[0],
            headers=self._headers,
            client=self._client,
        )
        current = IncomingRequest(request, self._keep_alive and not http10, http10)
        current.expect_continue = self._expect_continue
        current.head_bytes = self._head_bytes
        self._held_head_bytes += self._head_bytes
        length = self._content_length
        self._current = current
        self.requests.append(current)
        self._reset_head()
        if length > limits.max_body_bytes:
            raise self._stop(413, f"request body exceeds {limits.max_body_bytes} bytes")
        if chunked:
            self._state = _CHUNKED_BODY
            self._chunked_wire_bytes = 0
        elif length > 0:
            self._state = _LENGTH_BODY
            self._remaining = length
        if self._authorize is not None:
            self._check_access(current, request, has_body=chunked or length > 0)

    def _check_access(self, current: IncomingRequest, request: HttpRequest, has_body: bool) -> None:
        """The :data:`~.messages.Authorize` hook on a complete head; a refusal of a request
        with a body stops the parse (its body is never read)."""
        assert self._authorize is not None
        try:
            refusal = self._authorize(request)
        except Exception:
            logger.exception("authorize failed: %s %s", request.method, request.target)
            raise self._stop(500, "internal server error") from None
        if refusal is None:
            return
        if has_body:
            self._refuse(refusal.status, "", refusal)
            raise _Stop
        current.refusal = refusal  # answered in turn; the connection goes on

    def on_body(self, body: bytes) -> None:
        current = self._current
        assert current is not None
        size = len(body)
        current.body_size += size
        if current.body_size > self._limits.max_body_bytes:
            raise self._stop(413, f"request body exceeds {self._limits.max_body_bytes} bytes")
        memory = self._memory
        if memory is not None:
            if not memory.take(size, current.held):
                raise self._stop(503, memory.refusal())
            current.held += size
        current._body_parts.append(body)

    def on_chunk_header(self) -> None:
        current = self._current
        assert current is not None
        current.chunks += 1
        if current.chunks > self._limits.max_body_chunks + 1:  # + the last, empty, chunk
            raise self._stop(
                413, f"request body in more than {self._limits.max_body_chunks} chunks"
            )

    def on_message_complete(self) -> None:
        current = self._current
        if current is None:  # llhttp ends requests without a body after their head
            raise self._stop(400, "a request ended before its head")
        if self._state == _LENGTH_BODY and self._remaining:
            raise self._stop(400, "a request ended before its content-length")
        if self._state == _CHUNKED_BODY and self._chunk_framing_too_large():
            raise self._stop(400, self._framing_message())
        parts = current._body_parts
        if current.request is not None and parts:
            current.request.body = parts[0] if len(parts) == 1 else b"".join(parts)
        current._body_parts = []
        current.complete = True
        self._current = None
        self._state = _START if current.keep_alive else _STOPPED  # nothing follows a close
        self._ended_in_piece = True
        self._tail = b""


def _llhttp_refusal(error: httptools.HttpParserError) -> tuple[int, str]:
    """The status and message for what llhttp refused."""
    reason = str(error) or type(error).__name__
    if reason.startswith("Request has invalid `Transfer-Encoding`"):
        return 501, f"{reason} (only chunked is supported)"
    if reason == "Invalid HTTP version":  # HTTP/x.y, another than 1.0 and 1.1 (as ours)
        return 505, reason
    return 400, reason
