"""A lean keep-alive HTTP/1.1 connection pool for plain-``http://`` providers (local servers:
Ollama, vLLM, ``quotad sim``), as an ``httpx`` transport.

On a local server the provider call is most of what quotad adds to a request, and httpcore's
general machinery (h11 state machine, pool bookkeeping, per-request locks and traces) costs
several times a raw socket exchange. This transport does what the providers need and no more:
each connection is an asyncio protocol (bytes land in its buffer from the loop's read callback,
with no stream object or reader task between), the request (head and body) goes out in one
write (a body past :data:`WHOLE_WRITE_BYTES` in a second one, as it is), the response head is
parsed by hand, bodies are framed by ``content-length``, chunked transfer-encoding or the
close, and connections are kept per host and reused newest first.
``https://`` and proxied providers keep httpx's own transport.

Limits and failures, as :class:`~quotad.daemon.providers.transport.ProviderHTTP` classifies
them: at most ``max_connections`` requests in flight (a request waits for a slot up to the
``pool`` timeout: ``httpx.PoolTimeout``); connecting is bounded by the ``connect`` timeout
(``httpx.ConnectTimeout``; refused or unreachable: ``httpx.ConnectError``); each wait for
bytes of the answer by the ``read`` timeout (``httpx.ReadTimeout``; a ``read`` of None leaves
the bound to the caller); writing on a connection already gone is ``httpx.WriteError``, a
connection that breaks (a reset) ``httpx.ReadError``; an answer that is not HTTP/1.x, a
connection closed before the answer or in its body, is ``httpx.RemoteProtocolError``. An idle
connection is dropped after ``keepalive_expiry_s``, or when the server has closed it (the loop
has told its protocol; checked before reuse). What the pool buffers ahead of a reader is
bounded (:data:`READ_AHEAD_BYTES`); the bound of a whole answer is its reader's.

It is reached only as an httpx transport (``handle_async_request``), as httpx's own is. A small
answer that came whole with its head is returned already read, its connection back in the pool
before the caller looks at it: that is most of a local request's answers, and the way an
answer read whole costs no more than the pool's own reads.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final, cast

import anyio
import httpx

from quotad.daemon.net.httpx_messages import PreparedRequest, ReadResponse, request_head

MAX_HEAD_BYTES: Final = 65536
"""The longest response head (status line and headers) accepted."""
WHOLE_WRITE_BYTES: Final = 64 * 1024
"""A request body up to this size goes out in one write with its head (one packet, one system
call); a larger one is written after the head as it is, not copied onto it (a 13 MB chat's copy
took ~9 ms of the event loop's CPU)."""
HELD_CHUNKS: Final = 512
"""The most chunks of a chunked body, whole in the buffer, passed on as one piece."""
READ_AHEAD_BYTES: Final = 256 * 1024
"""Bytes of an answer buffered ahead of its reader before reading from the server pauses (a
stream read slowly holds the provider back instead of growing the buffer)."""

_NO_BODY_STATUSES: Final = frozenset({204, 304})
_NO_TIMEOUTS: Final[dict[str, Any]] = {}
_HEX_DIGITS: Final = re.compile(rb"[0-9a-fA-F]{1,16}")
_CHUNK_SIZE_LINE: Final = re.compile(rb"([0-9a-fA-F]{1,16})(?:;[^\r\n]*)?\r\n")
"""A chunk's size line as servers write it (:func:`_take_whole_chunks`)."""
_CRLF: Final = b"\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive connection: an asyncio protocol that gathers what the server sends into
    ``buffer`` (a waiting read is woken from the loop's read callback, with no stream or
    reader task between), and the reads of the exchange."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._closed_by_server = False
        self._lost: Exception | None = None
        """Why the connection broke (a reset, say), when it did."""
        self._reading_paused = False

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_AHEAD_BYTES and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._closed_by_server = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_by_server = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ the exchange

    def resume_reading(self) -> None:
        """Read from the server again (a wait for more of the answer, or the connection going
        idle, where the server's close must be noticed)."""
        if self._reading_paused:
            self._reading_paused = False
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def reusable(self) -> bool:
        """False once the server has closed an idle connection (or sent bytes it should
        not have): the loop has already told the protocol, no system call needed."""
        transport = self.transport
        return not (
            self._closed_by_server or self.buffer or transport is None or transport.is_closing()
        )

    def send(self, pieces: tuple[bytes, ...]) -> None:
        """Write the request's ``pieces`` in order (the transport sends what the socket does
        not take at once); raises WriteError on a connection already gone."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._closed_by_server:
            raise httpx.WriteError(str(self._lost or "the connection is closed"))
        for piece in pieces:
            transport.write(piece)

    async def receive(self, timeout_s: float | None) -> None:
        """Wait until more bytes are in :attr:`buffer`, at most ``timeout_s`` (None: no bound
        here); raises ReadTimeout, ReadError, or RemoteProtocolError at the close."""
        if not self._closed_by_server:
            self.resume_reading()
            loop = self._loop
            waiter = self._waiter = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, self._wake)
            size = len(self.buffer)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if len(self.buffer) > size:
                return
            if not self._closed_by_server:
                raise httpx.ReadTimeout(f"no data within {timeout_s:g} s")
        if self._lost is not None:
            raise httpx.ReadError(str(self._lost) or type(self._lost).__name__)
        raise httpx.RemoteProtocolError("the server closed the connection")

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes off the front of :attr:`buffer`, copied once (a slice of the
        bytearray, then bytes of it, was two copies: of a 13 MB answer, ~4 ms of the event
        loop); all of it, when that is no more, leaves it empty without moving anything."""
        buffer = self.buffer
        if len(buffer) <= size:
            data = bytes(buffer)
            buffer.clear()
            return data
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
        return data

    async def read_until(self, marker: bytes, limit: int, timeout_s: float | None) -> bytes:
        """Bytes up to and including ``marker`` (taken from the buffer)."""
        buffer = self.buffer
        start = 0
        while (end := buffer.find(marker, start)) < 0:
            if len(buffer) > limit:
                raise httpx.RemoteProtocolError(f"a line or head longer than {limit} bytes")
            start = max(0, len(buffer) - len(marker) + 1)
            await self.receive(timeout_s)
        return self.take(end + len(marker))

    async def read_exactly(self, size: int, timeout_s: float | None) -> bytes:
        buffer = self.buffer
        while len(buffer) < size:
            await self.receive(timeout_s)
        return self.take(size)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Body(httpx.AsyncByteStream):
    """A response body read off its connection; closing it returns the connection to the
    pool when the body was read whole and the connection may be kept, else closes it."""

    def __init__(
        self,
        pool: LeanHTTPTransport,
        key: tuple[str, int],
        connection: _Connection,
        framing: str,
        length: int,
        keep_alive: bool,
        read_timeout_s: float | None,
    ) -> None:
        self._pool = pool
        self._key = key
        self._connection: _Connection | None = connection
        self._framing = framing  # "length", "chunked", "close" or "none"
        self._remaining = length
        self._keep_alive = keep_alive
        self._timeout_s = read_timeout_s
        self._complete = framing == "none" or (framing == "length" and length == 0)

    def take_whole(self) -> bytes | None:
        """The whole body when it is already in (none at all, or a small answer framed by
        ``content-length`` that came with its head), its connection then given back; None
        when it is still to read (see :meth:`__aiter__`)."""
        connection = self._connection
        if self._complete:
            data = b""
        elif (
            connection is not None
            and self._framing == "length"
            and len(connection.buffer) >= self._remaining
        ):
            data = connection.take(self._remaining)
            self._remaining = 0
            self._complete = True
        else:
            return None
        self._release()
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None or self._complete:
            return
        timeout_s = self._timeout_s
        if self._framing == "length":
            while self._remaining > 0:
                if not connection.buffer:
                    await connection.receive(timeout_s)
                data = connection.take(self._remaining)
                self._remaining -= len(data)
                yield data
        elif self._framing == "chunked":
            async for data in _chunked(connection, timeout_s):
                yield data
        else:  # until the close
            if connection.buffer:
                yield connection.take(len(connection.buffer))
            while True:
                try:
                    await connection.receive(timeout_s)
                except httpx.RemoteProtocolError:  # the close ends the body
                    break
                yield connection.take(len(connection.buffer))
        self._complete = True

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        """Give the connection back (kept when its body was read whole and it may be kept,
        else closed) and the slot."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete and self._keep_alive:
            self._pool.put_back(self._key, connection)
        else:
            connection.close()
        self._pool.release_slot()


async def _chunked(connection: _Connection, timeout_s: float | None) -> AsyncIterator[bytes]:
    """The data of a chunked body. The chunks whole in the buffer are read in one pass and
    passed on as one piece (:func:`_take_whole_chunks`), other tasks running between pieces;
    any other chunk is passed on as it comes, however large it says it is. Trailers are read
    up to :data:`MAX_HEAD_BYTES` in all. (One read ahead of 1-byte chunks, six bytes each on
    the wire, was 43,000 pieces through every layer above, one at a time: 0.8 s of the event
    loop held, 5 s of CPU per MB of body.)"""
    held: list[bytes] = []
    while True:
        _take_whole_chunks(connection.buffer, held)
        if held:
            yield b"".join(held)
            held.clear()
            await anyio.lowlevel.checkpoint()
        line = await connection.read_until(_CRLF, MAX_HEAD_BYTES, timeout_s)
        digits = line.split(b";", 1)[0].strip()
        if not _HEX_DIGITS.fullmatch(digits):
            raise httpx.RemoteProtocolError(f"bad chunk size line {line[:100]!r}")
        size = int(digits, 16)
        if size == 0:
            break
        while size > 0:
            if not connection.buffer:
                await connection.receive(timeout_s)
            data = connection.take(size)
            size -= len(data)
            yield data
        if await connection.read_exactly(2, timeout_s) != _CRLF:
            raise httpx.RemoteProtocolError("a chunk not followed by CRLF")
    trailers = 0
    while (line := await connection.read_until(_CRLF, MAX_HEAD_BYTES, timeout_s)) != _CRLF:
        trailers += len(line)
        if trailers > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError(f"trailers longer than {MAX_HEAD_BYTES} bytes")


def _take_whole_chunks(buffer: bytearray, held: list[bytes]) -> None:
    """Move the data of the chunks whole at the start of ``buffer`` (a size line as servers
    write it, the data, CRLF), up to :data:`HELD_CHUNKS`, to ``held``; the last chunk, and
    one written otherwise, are left to the caller, who reads them one at a time."""
    position = 0
    with memoryview(buffer) as view:
        while len(held) < HELD_CHUNKS and (head := _CHUNK_SIZE_LINE.match(buffer, position)):
            start = head.end()
            end = start + int(head[1], 16)
            if end == start or not buffer.startswith(_CRLF, end):
                break  # the last chunk, one not whole in the buffer or not ended by CRLF
            held.append(bytes(view[start:end]))
            position = end + 2
    if position:
        del buffer[:position]


class LeanHTTPTransport(httpx.AsyncBaseTransport):
    """The pool (see the module docstring)."""

    def __init__(self, *, max_connections: int, keepalive_expiry_s: float) -> None:
        self._max = max_connections
        self._expiry_s = keepalive_expiry_s
        self._in_use = 0
        self._waiters: deque[anyio.Event] = deque()
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._closed = False

    # ------------------------------------------------------------------ slots

    async def _acquire_slot(self, timeout_s: float | None) -> None:
        """Take a slot, waiting up to ``timeout_s`` (PoolTimeout)."""
        if self._in_use < self._max and not self._waiters:
            self._in_use += 1
            return
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            with anyio.fail_after(timeout_s):
                await granted.wait()  # a releaser hands its slot over
        except BaseException as error:
            if granted.is_set():
                self.release_slot()  # handed over, but we are leaving
            else:
                self._waiters.remove(granted)
            if isinstance(error, TimeoutError):
                raise httpx.PoolTimeout(f"no free connection within {timeout_s:g} s") from None
            raise

    def release_slot(self) -> None:
        """A request is done with its connection: hand the slot to a waiter, or free it."""
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self._in_use -= 1

    # ------------------------------------------------------------------ connections

    def put_back(self, key: tuple[str, int], connection: _Connection) -> None:
        """Keep a connection whose exchange is complete for the next request to the host."""
        if self._closed:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        connection.resume_reading()
        self._idle.setdefault(key, []).append(connection)

    async def _checkout(self, key: tuple[str, int], connect_timeout_s: float | None) -> _Connection:
        """An idle connection to ``key`` still good to use, or a new one (connecting within
        ``connect_timeout_s``: ConnectTimeout)."""
        idle = self._idle.get(key)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()  # the newest: the least likely to have been closed
                if now - connection.idle_since < self._expiry_s and connection.reusable():
                    return connection
                connection.close()
        host, port = key
        try:
            with anyio.fail_after(connect_timeout_s):
                loop = asyncio.get_running_loop()
                _, connection = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting timed out after {connect_timeout_s:g} s"
            ) from None
        except OSError as error:
            raise httpx.ConnectError(str(error) or type(error).__name__) from None
        assert connection.transport is not None
        raw_socket = connection.transport.get_extra_info("socket")
        if raw_socket is not None:
            raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    # ------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection; its response once the head is in.

        A body that came whole with its head (a small answer, framed by ``content-length``)
        is taken at once and the connection goes back to the pool: the response is returned
        already read (``response.content``), with no stream left to iterate. Otherwise its
        ``stream`` is the body, read as it comes (each wait bounded by the ``read`` timeout);
        closing the response releases the connection."""
        timeouts: dict[str, Any] = request.extensions.get("timeout", _NO_TIMEOUTS)
        head = request.head() if isinstance(request, PreparedRequest) else request_head(request)
        body = request.content
        pieces = (head + body,) if len(body) <= WHOLE_WRITE_BYTES else (head, body)
        answer = await self._exchange(request, pieces, timeouts)
        extensions = {"http_version": answer.version, "reason_phrase": answer.reason}
        content = answer.body.take_whole() if answer.identity_encoded else None
        if content is not None:
            return ReadResponse(answer.status, answer.headers, content, request, extensions)
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=answer.body,
            request=request,
            extensions=extensions,
        )

    async def _exchange(
        self, request: httpx.Request, request_pieces: tuple[bytes, ...], timeouts: dict[str, Any]
    ) -> _Answer:
        """Send a request on a pooled connection; its answer's head, and its body to read
        (the body's ``aclose`` gives the slot back). A :class:`PreparedRequest` is marked
        ``handed_over`` once written: what comes before (a free slot, a connection) never
        reaches the server."""
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"this pool speaks http://, not {url.scheme}://")
        if self._closed:
            raise httpx.ConnectError("the pool is closed")
        read_timeout_s = timeouts.get("read")
        key = (url.host, url.port or 80)
        await self._acquire_slot(timeouts.get("pool"))
        connection: _Connection | None = None
        try:
            connection = await self._checkout(key, timeouts.get("connect"))
            connection.send(request_pieces)
            if isinstance(request, PreparedRequest):
                request.handed_over = True
            answer = await _read_answer(connection, request.method == "HEAD", read_timeout_s)
        except BaseException:
            if connection is not None:
                connection.close()
            self.release_slot()
            raise
        framing, length, keep_alive = answer.framing
        answer.body = _Body(self, key, connection, framing, length, keep_alive, read_timeout_s)
        return answer

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


class _Answer:
    """A response head, and its body once the pool has wrapped it."""

    __slots__ = ("body", "framing", "headers", "identity_encoded", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        version: bytes,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: tuple[str, int, bool],
        identity_encoded: bool,
    ) -> None:
        self.status = status
        self.version = version
        self.reason = reason
        self.headers = headers
        self.framing = framing  # (how the body ends, its length, whether to keep the connection)
        self.identity_encoded = identity_encoded  # no content-encoding (or identity)
        self.body: _Body


async def _read_answer(
    connection: _Connection, head_request: bool, timeout_s: float | None
) -> _Answer:
    """Read a response head, each wait for its bytes within ``timeout_s``."""
    while True:
        head = await connection.read_until(b"\r\n\r\n", MAX_HEAD_BYTES, timeout_s)
        status_line, *lines = head[:-4].split(_CRLF)
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x answer: {status_line[:100]!r}")
        status = int(code)
        if status >= 200:
            break  # skip 1xx interim answers (100 Continue, 103 Early Hints)
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    chunked = False
    keep_alive = version == b"HTTP/1.1"
    identity_encoded = True
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise httpx.RemoteProtocolError(f"bad header line {line[:100]!r}")
        value = value.strip()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            if not value.isdigit():
                raise httpx.RemoteProtocolError(f"bad content-length {value[:20]!r}")
            length = int(value)
        elif lowered == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lowered == b"content-encoding":
            identity_encoded = value.lower() in (b"", b"identity")
        elif lowered == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if head_request or status in _NO_BODY_STATUSES:
        framing = "none"
    elif chunked:
        framing = "chunked"
    elif length >= 0:
        framing = "length"
    else:
        framing = "close"
        keep_alive = False
    framing_of_body = (framing, max(length, 0), keep_alive)
    return _Answer(status, version, reason, headers, framing_of_body, identity_encoded)
