"""One client connection of the HTTP/1.1 server (:class:`Connection`): an asyncio protocol
whose callbacks feed the parser as bytes arrive and notice the client leaving, and the
request loop (one task per connection) with its limits and timeouts, running the handler and
writing its answer (plain, streamed or an error of the server's own), keep-alive, and the
lingering or resetting close.

The connection is an :class:`asyncio.Protocol`, not an anyio stream read by a task of its
own: bytes reach the parser in the event loop's read callback, which wakes the request loop
only when it waits for them, and answers go straight to the transport (measured: a
``/healthz`` took 260 µs of the daemon's CPU through anyio streams and a reader task, 190 µs
this way). It also means the server runs on asyncio (with or without uvloop) only, as the
daemon does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import anyio
import msgspec

from quotad.daemon.net.http11.messages import (
    AbortConnection,
    HttpRequest,
    HttpResponse,
    StreamingResponse,
)
from quotad.daemon.net.http11.parser import (
    CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    BodyData,
    ParseError,
    RequestHead,
    RequestParser,
)

if TYPE_CHECKING:
    from quotad.daemon.net.http11.server import HttpServer

logger = logging.getLogger("quotad.daemon.net.http11.server")  # the HTTP core logs as its server

READ_AHEAD_BYTES = 256 * 1024
"""Bytes read beyond what the parser has consumed before reading pauses (pipelining bound)."""
LINGER_S = 2.0
"""How long a closing connection waits for the client to close its side, and a closed one
for its last answer to drain before the socket is dropped."""
SINGLE_WRITE_BYTES = 65536
"""Bodies up to this size are joined with the head into one write."""
STREAM_ACLOSE_TIMEOUT_S = 5.0
"""Bound on a streaming iterator's ``aclose()``."""

_LINGER, _CLOSE, _RESET = 0, 1, 2  # how a connection ends (see Connection.run)

_REASON_TEXT: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
_LINGER_RESET = struct.pack("ii", 1, 0)
_json = msgspec.json.Encoder()


class ClientGone(Exception):
    """The connection was lost (or closed) before an answer could be written."""


def _error_body(status: int, message: str) -> bytes:
    """A JSON error body both SDK families understand: ``error.message`` for OpenAI's,
    ``type: "error"`` + ``error.type`` for Anthropic's. Its ``code`` is one of the wire
    protocol's (DESIGN §5): ``internal`` for the server's own failure, else ``bad_request``
    (the status tells which: 400, 408, 413, 431, 501, 505)."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    code = "internal" if status == 500 else "bad_request"
    return _json.encode(
        {"type": "error", "error": {"type": kind, "message": message, "code": code}}
    )


def _raw_error(status: int, message: str) -> bytes:
    body = _error_body(status, message)
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        _REASON_TEXT.get(status, "").encode(),
        len(body),
    )
    return head + b"connection: close\r\n\r\n" + body


def _encode_head(
    response: HttpResponse | StreamingResponse, *, keep_alive: bool, chunked: bool
) -> bytes:
    """Status line and headers; raises ValueError on a header that would split the head."""
    status = response.status
    parts = [f"HTTP/1.1 {status} {_REASON_TEXT.get(status, '')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    if isinstance(response, HttpResponse):
        if status not in _NO_BODY_STATUSES:
            parts.append(f"content-length: {len(response.body)}\r\n")
    elif chunked:
        parts.append("transfer-encoding: chunked\r\n")
    if not keep_alive:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    lines = len(parts)
    if head.count("\n") != lines or head.count("\r") != lines:
        raise ValueError(f"a response header holds a line break: {response.headers!r}")
    return head.encode("latin-1")


_INTERNAL_ERROR = HttpResponse(
    500,
    [("content-type", "application/json")],
    _error_body(500, "internal server error"),
)


class Connection(asyncio.Protocol):
    """One client connection: protocol callbacks that feed the parser, and the request loop
    (:meth:`run`, the connection's task).

    The parser keeps what was read beyond the current request (pipelining); answers are
    written by hand (a few string joins).
    """

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = RequestParser(self._limits.max_header_bytes)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._waiter: asyncio.Future[None] | None = None
        """The request loop's wait for bytes (or the client's leaving), when it waits."""
        self._drain: asyncio.Future[None] | None = None
        """A write's wait for the transport's buffer to drain, when it waits."""
        self._pending = 0
        self._reading_paused = False
        self._writing_paused = False
        self._scope: anyio.CancelScope | None = None
        """Around the request loop: cancelled when the client leaves during an answer."""
        self._responding = False
        self._idle = False
        self._lingering = False
        self._close_mode = _LINGER
        self._keep_alive = True
        self._http10 = False
        self.deadline = math.inf
        self.eof = False
        """The client closed its side or the connection is gone."""
        self.lost = False
        """The connection is gone: nothing more can be written."""

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        address = transport.get_extra_info("peername")
        self._client = (address[0], address[1]) if isinstance(address, tuple) else None

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        self._pending += len(data)
        self._parser.receive_data(data)
        if self._pending > READ_AHEAD_BYTES and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool:
        self._client_left()
        return True  # keep the transport open: run() closes it, after a reset if it must

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._client_left()
        self._end_drain()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._end_drain()

    def _end_drain(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _client_left(self) -> None:
        """EOF or a lost connection: end the request loop's wait, cancel the handler."""
        if self.eof:
            return
        self.eof = True
        if not self._lingering:
            self._parser.receive_data(b"")
        self.wake()
        if self._responding and self._scope is not None:
            self._close_mode = _CLOSE
            self._scope.cancel()

    # ------------------------------------------------------------------ server side

    def close_if_idle(self) -> None:
        """Server shutdown: end the wait for a next request, if that is what we are doing."""
        if self._idle:
            self.wake()

    def wake(self) -> None:
        """End the current wait for data (the server's timeout sweep calls this once
        :attr:`deadline` has passed)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        """Drop the connection now (the server's last resort at shutdown)."""
        if self._transport is not None:
            self._transport.abort()

    async def run(self) -> None:
        """Serve requests until the connection is to close, then close it."""
        try:
            with anyio.CancelScope() as self._scope:  # per connection, not per request
                while True:
                    request = await self._read_request()
                    if request is None or not await self._respond(request):
                        break
                    self._parser.start_next()
                if self._close_mode == _LINGER and not self.eof:
                    await self._linger()
        finally:
            self._close()

    # ------------------------------------------------------------------ reading

    async def _wait_data(self, deadline: float) -> bool:
        """Wait for more bytes (or the client's EOF) until ``deadline``; False when it passed
        first. No timer per wait: the server's sweep wakes waits whose deadline has passed."""
        self._pending = 0
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        if self.eof:
            return True
        waiter = self._waiter = self._loop.create_future()
        self.deadline = deadline
        try:
            await waiter
        finally:
            self.deadline = math.inf
            self._waiter = None
        return self._pending > 0 or self.eof

    async def _wait_idle(self) -> bool:
        """Wait for the first bytes of a next request; False: close instead (timeout or
        shutdown)."""
        if self._server.closing:
            return False
        self._idle = True
        try:
            return await self._wait_data(self._loop.time() + self._limits.idle_timeout_s)
        finally:
            self._idle = False

    async def _read_request(self) -> HttpRequest | None:
        """The next complete request, or None when the connection is to close (an error
        answer, if any, already sent)."""
        parser = self._parser
        limits = self._limits
        deadline = -1.0
        head: RequestHead | None = None
        headers: list[tuple[bytes, bytes]] = []
        body_parts: list[bytes] = []
        body_size = 0
        while True:
            try:
                event = parser.next_event()
            except ParseError as error:
                if not self.eof:
                    if error.error_status_hint == 431:
                        await self._headers_too_large()
                    else:
                        await self._send_error(error.error_status_hint, f"bad request: {error}")
                return None
            if event is NEED_DATA:
                if deadline < 0:
                    if head is None and not parser.has_data:
                        if not await self._wait_idle():
                            self._close_mode = _CLOSE
                            return None
                        continue
                    deadline = self._loop.time() + limits.read_timeout_s
                if not await self._wait_data(deadline):
                    if not self.eof:
                        await self._send_error(
                            408, f"request not complete within {limits.read_timeout_s:g} s"
                        )
                    return None
                continue
            if isinstance(event, BodyData):
                body_size += len(event.data)
                if body_size > limits.max_body_bytes:
                    await self._body_too_large()
                    return None
                body_parts.append(event.data)
            elif isinstance(event, RequestHead):
                head = event
                checked = await self._check_head(head)
                if checked is None:
                    return None
                headers = checked
            elif event is END_OF_MESSAGE and head is not None:
                target = head.target.decode("latin-1")
                path, _, _ = target.partition("?")
                return HttpRequest(
                    method=head.method.decode("ascii"),
                    target=target,
                    path=path,
                    headers=headers,
                    body=b"".join(body_parts) if body_parts else b"",
                    client=self._client,
                )
            else:  # CLOSED: the client left between requests
                assert event is CLOSED
                return None

    async def _check_head(self, head: RequestHead) -> list[tuple[bytes, bytes]] | None:
        """Apply the header and declared-body limits, note keep-alive, say 100 Continue;
        the headers, or None when an error answer was sent instead."""
        limits = self._limits
        self._keep_alive = head.keep_alive
        self._http10 = head.http_version != b"1.1"
        if head.size > limits.max_header_bytes:
            await self._headers_too_large()
            return None
        if head.content_length > limits.max_body_bytes:
            await self._body_too_large()
            return None
        if self._parser.client_is_waiting_for_100_continue:
            await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return head.headers

    async def _headers_too_large(self) -> None:
        await self._send_error(
            431, f"request line and headers exceed {self._limits.max_header_bytes} bytes"
        )

    async def _body_too_large(self) -> None:
        await self._send_error(413, f"request body exceeds {self._limits.max_body_bytes} bytes")

    # ------------------------------------------------------------------ answering

    async def _respond(self, request: HttpRequest) -> bool:
        """Run the handler and send its answer; True when the connection takes another request.
        A client that leaves meanwhile cancels the connection's scope: the handler (or the
        stream) stops at its next await and the connection closes."""
        if self.eof:  # gone (or half-closed, which counts as gone) before its answer
            return False
        keep_alive = self._keep_alive
        chunked = not self._http10
        self._responding = True
        try:
            try:
                response = await self._server.handler(request)
                keep_alive = keep_alive and not self._server.closing
                head = _encode_head(response, keep_alive=keep_alive, chunked=chunked)
            except AbortConnection:
                raise
            except Exception:
                logger.exception("handler failed: %s %s", request.method, request.target)
                response = _INTERNAL_ERROR
                head = _encode_head(response, keep_alive=keep_alive, chunked=chunked)
            no_body = request.method == "HEAD" or response.status in _NO_BODY_STATUSES
            if isinstance(response, HttpResponse):
                await self._send_response(head, response.body, no_body)
            else:
                await self._send_stream(head, response.chunks, no_body)
        except AbortConnection as abort:
            self._close_mode = _RESET if abort.reset else _CLOSE
            return False
        except ClientGone:
            self._close_mode = _CLOSE
            return False
        except Exception:
            logger.exception("stream failed: %s %s", request.method, request.target)
            self._close_mode = _CLOSE
            return False
        finally:
            self._responding = False
        return keep_alive and not self.eof

    async def _send_response(self, head: bytes, body: bytes, no_body: bool) -> None:
        if no_body or not body:
            await self._send(head)
        elif len(body) <= SINGLE_WRITE_BYTES:
            await self._send(head + body)
        else:
            await self._send(head)
            await self._send(body)

    async def _send_stream(self, head: bytes, chunks: AsyncIterator[bytes], no_body: bool) -> None:
        """Send the head now, then each chunk as it comes: chunked, or (HTTP/1.0) raw until
        the close."""
        raw = self._http10
        try:
            await self._send(head)
            if not no_body:
                async for chunk in chunks:
                    if chunk:
                        await self._send(chunk if raw else b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if not raw:
                    await self._send(b"0\r\n\r\n")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(STREAM_ACLOSE_TIMEOUT_S, shield=True):
                    await aclose()

    async def _send_error(self, status: int, message: str) -> None:
        """Answer a request we will not serve; the connection closes after."""
        try:
            await self._send(_raw_error(status, message))
        except ClientGone:
            self._close_mode = _CLOSE

    # ------------------------------------------------------------------ closing

    async def _send(self, data: bytes) -> None:
        """Write ``data``; when the transport's buffer is full, wait until it drains (a
        client that reads slowly slows a stream down instead of growing the buffer)."""
        transport = self._transport
        assert transport is not None
        if self.lost or transport.is_closing():
            raise ClientGone
        transport.write(data)
        if self._writing_paused:
            drain = self._drain = self._loop.create_future()
            try:
                await drain
            finally:
                self._drain = None
            if self.lost:
                raise ClientGone

    # ------------------------------------------------------------------ closing

    async def _linger(self) -> None:
        """Half-close, then read (and drop) until the client closes or ``LINGER_S`` passes."""
        self._lingering = True
        transport = self._transport
        assert transport is not None
        if self.lost or transport.is_closing():
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        try:
            transport.write_eof()
        except OSError:
            return
        deadline = self._loop.time() + LINGER_S
        while not self.eof:
            if not await self._wait_data(deadline):
                return

    def _close(self) -> None:
        """Close the socket: with a reset if the handler asked for one; otherwise after what
        is still buffered is written, or ``LINGER_S`` at most."""
        transport = self._transport
        assert transport is not None
        if self._close_mode == _RESET:
            raw_socket = transport.get_extra_info("socket")
            try:
                raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except (AttributeError, OSError):
                logger.debug("could not set SO_LINGER for a reset")
            transport.abort()
            return
        transport.close()
        if transport.get_write_buffer_size():
            self._loop.call_later(LINGER_S, transport.abort)
