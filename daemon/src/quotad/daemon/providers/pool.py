"""A lean keep-alive HTTP/1.1 connection pool for plain-``http://`` providers (local servers:
Ollama, vLLM, ``quotad sim``), as an ``httpx`` transport.

On a local server the provider call is most of what quotad adds to a request, and httpcore's
general machinery (h11 state machine, pool bookkeeping, per-request locks and traces) costs
several times a raw socket exchange. This transport does what the providers need and no more:
the request (head and body) in one write, the response head parsed by hand, bodies framed by
``content-length``, chunked transfer-encoding or the close, connections kept per host and
reused newest first. ``https://`` and proxied providers keep httpx's own transport.

Limits and failures, as :class:`~quotad.daemon.providers.transport.ProviderHTTP` classifies
them: at most ``max_connections`` requests in flight (a request waits for a slot up to the
``pool`` timeout: ``httpx.PoolTimeout``); connecting is bounded by the ``connect`` timeout
(``httpx.ConnectTimeout``; refused or unreachable: ``httpx.ConnectError``); sending the request
and reading the answer's head together, then each wait for body bytes, by the ``read`` timeout
(``httpx.ReadTimeout``: one deadline per request, not a timer per read; a ``read`` of None
leaves the bound to the caller); a write that fails is
``httpx.WriteError``, a read
that fails ``httpx.ReadError``; an answer that is not HTTP/1.x, a connection closed before the
answer or in its body, is ``httpx.RemoteProtocolError``. An idle connection is dropped after
``keepalive_expiry_s``, or when the server has closed it (checked before reuse).
"""

from __future__ import annotations

import select
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import anyio.abc
import httpx
from anyio.abc import SocketAttribute

MAX_HEAD_BYTES: Final = 65536
"""The longest response head (status line and headers) accepted."""
RECEIVE_SIZE: Final = 65536

_NO_BODY_STATUSES: Final = frozenset({204, 304})
_CRLF: Final = b"\r\n"


class _Connection:
    """One keep-alive connection and the bytes read beyond what was consumed."""

    __slots__ = ("buffer", "idle_since", "raw", "stream")

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
        self.buffer = bytearray()
        self.idle_since = 0.0

    def closed_by_peer(self) -> bool:
        """True when an idle connection has something to read: the server's close (or bytes
        it should not have sent), either way not reusable."""
        try:
            readable, _, _ = select.select([self.raw], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    async def receive(self, timeout_s: float | None) -> bytes:
        """More bytes within ``timeout_s`` (None: no bound here); raises ReadTimeout,
        ReadError, or RemoteProtocolError at the close."""
        try:
            if timeout_s is None:
                return await self.stream.receive(RECEIVE_SIZE)
            with anyio.fail_after(timeout_s):
                return await self.stream.receive(RECEIVE_SIZE)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no data within {timeout_s:g} s") from None
        except anyio.EndOfStream:
            raise httpx.RemoteProtocolError("the server closed the connection") from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            raise httpx.ReadError(str(error) or type(error).__name__) from None

    async def read_until(self, marker: bytes, limit: int, timeout_s: float | None) -> bytes:
        """Bytes up to and including ``marker`` (taken from the buffer)."""
        buffer = self.buffer
        start = 0
        while (end := buffer.find(marker, start)) < 0:
            if len(buffer) > limit:
                raise httpx.RemoteProtocolError(f"a line or head longer than {limit} bytes")
            start = max(0, len(buffer) - len(marker) + 1)
            buffer += await self.receive(timeout_s)
        end += len(marker)
        data = bytes(buffer[:end])
        del buffer[:end]
        return data

    async def read_exactly(self, size: int, timeout_s: float | None) -> bytes:
        buffer = self.buffer
        while len(buffer) < size:
            buffer += await self.receive(timeout_s)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


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

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None or self._complete:
            return
        timeout_s = self._timeout_s
        if self._framing == "length":
            while self._remaining > 0:
                if not connection.buffer:
                    connection.buffer += await connection.receive(timeout_s)
                data = bytes(connection.buffer[: self._remaining])
                del connection.buffer[: len(data)]
                self._remaining -= len(data)
                yield data
        elif self._framing == "chunked":
            while True:
                line = await connection.read_until(_CRLF, MAX_HEAD_BYTES, timeout_s)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad chunk size line {line!r}") from None
                if size == 0:
                    while await connection.read_until(_CRLF, MAX_HEAD_BYTES, timeout_s) != _CRLF:
                        pass  # trailers
                    break
                data = await connection.read_exactly(size + 2, timeout_s)
                yield data[:-2]
        else:  # until the close
            if connection.buffer:
                data = bytes(connection.buffer)
                connection.buffer.clear()
                yield data
            while True:
                try:
                    yield await connection.receive(timeout_s)
                except httpx.RemoteProtocolError:  # the close ends the body
                    break
        self._complete = True

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete and self._keep_alive:
            await self._pool.put_back(self._key, connection)
        else:
            await connection.aclose()
        self._pool.release_slot()


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

    async def put_back(self, key: tuple[str, int], connection: _Connection) -> None:
        """Keep a connection whose exchange is complete for the next request to the host."""
        if self._closed:
            await connection.aclose()
            return
        connection.idle_since = anyio.current_time()
        self._idle.setdefault(key, []).append(connection)

    async def _checkout(self, key: tuple[str, int], connect_timeout_s: float | None) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            now = anyio.current_time()
            while idle:
                connection = idle.pop()  # the newest: the least likely to have been closed
                if now - connection.idle_since < self._expiry_s and not connection.closed_by_peer():
                    return connection
                await connection.aclose()
        host, port = key
        try:
            with anyio.fail_after(connect_timeout_s):
                stream = await anyio.connect_tcp(host, port)
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting timed out after {connect_timeout_s:g} s"
            ) from None
        except OSError as error:
            raise httpx.ConnectError(str(error) or type(error).__name__) from None
        return _Connection(stream)

    # ------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        head = _request_head(request)
        answer = await self._exchange(url, head + request.content, request.method, timeouts)
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=answer.body,
            request=request,
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
        )

    async def fetch(
        self,
        method: str,
        url: httpx.URL,
        header_lines: bytes,
        body: bytes,
        timeouts: dict[str, Any],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A whole exchange without httpx's models: ``header_lines`` are the request's
        ``name: value\\r\\n`` lines but ``content-length`` (host included); the answer's
        status, headers and body. Failures raise as :meth:`handle_async_request`'s do."""
        head = _head(method, url, header_lines, len(body))
        answer = await self._exchange(url, head + body, method, timeouts)
        try:
            content = b"".join([part async for part in answer.body])
        finally:
            await answer.body.aclose()
        return answer.status, answer.headers, content

    async def open_stream(
        self,
        method: str,
        url: httpx.URL,
        header_lines: bytes,
        body: bytes,
        timeouts: dict[str, Any],
    ) -> httpx.Response:
        """An exchange whose body is left to read, from the same parts as :meth:`fetch`
        (without an ``httpx.Request``): the response once its head is in, its ``stream`` the
        body (each read bounded by the ``read`` timeout; closing it releases the connection).
        Failures raise as :meth:`handle_async_request`'s do."""
        head = _head(method, url, header_lines, len(body))
        answer = await self._exchange(url, head + body, method, timeouts)
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=answer.body,
            extensions={"http_version": answer.version, "reason_phrase": answer.reason},
        )

    async def _exchange(
        self, url: httpx.URL, request_bytes: bytes, method: str, timeouts: dict[str, Any]
    ) -> _Answer:
        """Send a request on a pooled connection; its answer's head, and its body to read
        (the body's ``aclose`` gives the slot back)."""
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
            if read_timeout_s is None:  # the caller bounds the whole exchange
                await _send(connection, request_bytes)
                answer = await _read_answer(connection, method == "HEAD")
            else:  # one deadline for sending the request and reading the answer's head
                try:
                    with anyio.fail_after(read_timeout_s):
                        await _send(connection, request_bytes)
                        answer = await _read_answer(connection, method == "HEAD")
                except TimeoutError:
                    raise httpx.ReadTimeout(f"no answer within {read_timeout_s:g} s") from None
        except BaseException:
            if connection is not None:
                await connection.aclose()
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
                await connection.aclose()


async def _send(connection: _Connection, data: bytes) -> None:
    try:
        await connection.stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
        raise httpx.WriteError(str(error) or type(error).__name__) from None


def _head(method: str, url: httpx.URL, header_lines: bytes, content_length: int) -> bytes:
    """A request head from ``name: value\\r\\n`` lines without ``content-length``."""
    return b"%s %s HTTP/1.1\r\n%bcontent-length: %d\r\n\r\n" % (
        method.encode("ascii"),
        url.raw_path,
        header_lines,
        content_length,
    )


def _request_head(request: httpx.Request) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    lines.extend(name + b": " + value + _CRLF for name, value in request.headers.raw)
    lines.append(_CRLF)
    return b"".join(lines)


class _Answer:
    """A response head, and its body once the pool has wrapped it."""

    __slots__ = ("body", "framing", "headers", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        version: bytes,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: tuple[str, int, bool],
    ) -> None:
        self.status = status
        self.version = version
        self.reason = reason
        self.headers = headers
        self.framing = framing  # (how the body ends, its length, whether to keep the connection)
        self.body: _Body


async def _read_answer(connection: _Connection, head_request: bool) -> _Answer:
    """Read a response head (the caller bounds the time)."""
    while True:
        head = await connection.read_until(b"\r\n\r\n", MAX_HEAD_BYTES, None)
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
    return _Answer(status, version, reason, headers, (framing, max(length, 0), keep_alive))
