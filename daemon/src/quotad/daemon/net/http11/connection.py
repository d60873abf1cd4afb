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
import contextlib
import logging
import math
import socket
import struct
from collections.abc import AsyncIterator
from typing import Protocol, cast

import anyio

from quotad.daemon.net.http11.messages import (
    AbortConnection,
    Authorize,
    BodyMemory,
    ErrorAnswer,
    Handler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    StreamingResponse,
)
from quotad.daemon.net.http11.parser import IncomingRequest, RequestParser
from quotad.daemon.net.http11.wire import (
    NO_BODY_STATUSES,
    closing_answer,
    encode_head,
    trailer_section,
)

logger = logging.getLogger("quotad.daemon.net.http11.server")  # the HTTP core logs as its server

READ_AHEAD_BYTES = 256 * 1024
"""Bytes read beyond what the parser has consumed before reading pauses (pipelining bound)."""
LINGER_S = 2.0
"""How long a closing connection waits for the client to close its side, and a closed one
for its last answer to drain before the socket is dropped."""
LINGER_MAX_BYTES = 1024 * 1024
"""What a closing connection reads (and drops) at most meanwhile, so that a client still
sending a body (one refused before it was read, say) reads its answer before the close;
a client that sends more gets the close (a reset) sooner."""
SINGLE_WRITE_BYTES = 65536
"""Bodies up to this size are joined with the head into one write."""
STREAM_ACLOSE_TIMEOUT_S = 5.0
"""Bound on a streaming iterator's ``aclose()``."""
WRITE_STALL_S = 60.0
"""A connection whose answer has waited this long for the client to read any of it is
dropped (as the Unix socket's are): a stream, ``/metrics`` among them, no key needed, is held
by its reader, and one that never reads held its connection and stream for ever."""

_LINGER, _CLOSE, _RESET = 0, 1, 2  # how a connection ends (see Connection.run)

_LINGER_RESET = struct.pack("ii", 1, 0)


class ClientGone(Exception):
    """The connection was lost (or closed) before an answer could be written."""


async def _close_chunks(chunks: AsyncIterator[bytes]) -> None:
    """``aclose()`` a streaming answer's iterator (if it has one), however its answer ended,
    bounded by :data:`STREAM_ACLOSE_TIMEOUT_S`."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with anyio.move_on_after(STREAM_ACLOSE_TIMEOUT_S, shield=True):
            await aclose()


class Serving(Protocol):
    """What a connection needs of the server that accepted it
    (:class:`~quotad.daemon.net.http11.server.HttpServer`)."""

    handler: Handler
    authorize: Authorize | None
    error_answer: ErrorAnswer
    limits: HttpLimits
    request_memory: BodyMemory | None

    @property
    def closing(self) -> bool: ...

    def connection_identified(self, connection: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One client connection: protocol callbacks that feed the parser, and the request loop
    (:meth:`run`, the connection's task).

    The parser queues what was read beyond the current request (pipelining); answers are
    written by hand (a few string joins).
    """

    def __init__(self, server: Serving) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser: RequestParser | None = None
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
        self._lingered = 0
        self._close_mode = _LINGER
        self._answered = 0
        self.deadline = math.inf
        self.identified = False
        """A request of it was let in naming who sends it (see ``HttpLimits.head_timeout_s``)."""
        self.awaiting_head = True
        """Unidentified and waiting for (the rest of) a request head: it may be closed to make
        room (:meth:`evict`) before any other."""
        self.eof = False
        """The client closed its side or the connection is gone."""
        self.lost = False
        """The connection is gone: nothing more can be written."""

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        address = transport.get_extra_info("peername")
        self._client = (address[0], address[1]) if isinstance(address, tuple) else None
        server = self._server
        self._parser = RequestParser(
            self._limits, server.error_answer, server.authorize, self._client, server.request_memory
        )

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        if self._lingering:
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self._pause_reading()
                self.wake()
            return
        self._pending += len(data)
        parser.feed(data)  # once it has stopped (a refusal, a last request), it drops them
        if self._pending > READ_AHEAD_BYTES or parser.backlog:  # what is read waits its turn
            self._pause_reading()
        self.wake()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.lost:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

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
        self.wake()
        if self._responding and self._scope is not None:
            self._close_mode = _CLOSE
            self._scope.cancel()

    @property
    def answers_unread(self) -> bool:
        """Its answers wait for the client to read them (the transport's buffer is past its
        high-water mark): unidentified, it may be dropped to make room (:meth:`abort`) when
        none waits for a head."""
        return self._writing_paused and not self.lost

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

    def evict(self, message: str) -> None:
        """Close now to make room for a new connection (the server's choice while this one is
        unidentified and waits for a head): a 503 with ``message`` if part of a request came,
        else nothing; the request loop then sees the connection gone."""
        transport = self._transport
        parser = self._parser
        self.awaiting_head = False
        self._close_mode = _CLOSE
        if transport is None or self.lost or transport.is_closing():
            return
        if parser is not None and parser.in_request:
            with contextlib.suppress(ValueError):
                transport.write(closing_answer(self._server.error_answer(503, message)))
        transport.close()

    def abort(self) -> None:
        """Drop the connection now, what is unsent with it (the server's last resort at
        shutdown, or to make room, see :attr:`answers_unread`)."""
        if self._transport is not None:
            self._transport.abort()

    async def run(self) -> None:
        """Serve requests until the connection is to close, then close it. Between two
        requests that came together (pipelined), the event loop serves the other tasks: an
        answer that never waits (``/healthz``, a 404) would otherwise follow the one before at
        once, and thousands of them held the loop from every other client (4,000 pipelined
        404s: 370 ms). The body bytes a request holds are given back once its answer is done;
        those of the requests still queued, once the connection closes."""
        parser = self._parser
        assert parser is not None
        try:
            with anyio.CancelScope() as self._scope:  # per connection, not per request
                while True:
                    incoming = await self._next_request()
                    self.awaiting_head = False
                    if incoming is None:
                        break
                    self._answered += 1
                    try:
                        if incoming.refusal is not None:
                            if not await self._refuse(incoming):
                                break
                        elif not await self._respond(incoming):
                            break
                    finally:
                        parser.release(incoming)
                    if parser.requests or parser.backlog:  # pipelined: the others' turn first
                        await asyncio.sleep(0)
                if self._close_mode == _LINGER and not self.eof:
                    await self._linger()
        finally:
            parser.release_all()
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

    async def _wait_idle(self, head_deadline: float) -> bool:
        """Wait for the first bytes of a next request, until ``head_deadline`` at the latest;
        False: close instead (timeout or shutdown: while the server drains, only a new
        connection waits for its first)."""
        if self._server.closing and self._answered:
            return False
        self._idle = True
        try:
            deadline = self._loop.time() + self._limits.idle_timeout_s
            return await self._wait_data(min(deadline, head_deadline))
        finally:
            self._idle = False

    def _identify(self, request: HttpRequest) -> None:
        """Take the connection as identified once a request of it is let in naming who sends
        it (any request, when the server has no authorize hook)."""
        if self._server.authorize is None or request.authorized is not None:
            self.identified = True
            self._server.connection_identified(self)

    async def _next_request(self) -> IncomingRequest | None:
        """The next request, complete or refused (taken from the parser's queue), or None
        when the connection is to close (a 408, if due, already sent)."""
        parser = self._parser
        assert parser is not None
        requests = parser.requests
        deadline = -1.0
        limits = self._limits
        head_deadline = math.inf if self.identified else self._loop.time() + limits.head_timeout_s
        while True:
            if not requests and parser.backlog:  # the requests read beyond the last taken
                parser.parse_backlog()
            if requests:
                incoming = requests[0]
                if not self.identified and incoming.refusal is None and incoming.request:
                    self._identify(incoming.request)
                if incoming.complete or incoming.refusal is not None:
                    requests.popleft()
                    return incoming
                if incoming.waits_for_100_continue:  # its turn has come: ask for the body
                    incoming.continue_sent = True
                    try:
                        await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    except ClientGone:
                        self._close_mode = _CLOSE
                        return None
            if self.eof:  # gone between requests, or in the middle of one
                return None
            head_pending = not self.identified and (not requests or requests[0].request is None)
            self.awaiting_head = head_pending
            if deadline < 0:
                if not requests and not parser.in_request:
                    if not await self._wait_idle(head_deadline):
                        self._close_mode = _CLOSE
                        return None
                    continue
                deadline = self._loop.time() + limits.read_timeout_s
            head_first = head_pending and head_deadline < deadline
            if not await self._wait_data(head_deadline if head_first else deadline):
                if not self.eof:
                    await self._send_error(
                        408,
                        f"request head not complete within {limits.head_timeout_s:g} s (no "
                        "request on this connection has named who sends it yet)"
                        if head_first
                        else f"request not complete within {limits.read_timeout_s:g} s",
                    )
                return None

    # ------------------------------------------------------------------ answering

    async def _respond(self, incoming: IncomingRequest) -> bool:
        """Run the handler and send its answer; True when the connection takes another request.
        A client that leaves meanwhile cancels the connection's scope: the handler (or the
        stream) stops at its next await and the connection closes."""
        if self.eof:  # gone (or half-closed, which counts as gone) before its answer
            return False
        request = incoming.request
        assert request is not None
        keep_alive = incoming.keep_alive
        chunked = not incoming.http10
        self._responding = True
        response: HttpResponse | StreamingResponse | None = None
        try:
            try:
                response = await self._server.handler(request)
                keep_alive = keep_alive and not self._server.closing
                head = encode_head(response, keep_alive=keep_alive, chunked=chunked)
            except AbortConnection:
                raise
            except Exception:
                logger.exception("handler failed: %s %s", request.method, request.target)
                if isinstance(response, StreamingResponse):  # its head could not be written
                    await _close_chunks(response.chunks)
                response = self._server.error_answer(500, "internal server error")
                head = encode_head(response, keep_alive=keep_alive, chunked=chunked)
            no_body = request.method == "HEAD" or response.status in NO_BODY_STATUSES
            if isinstance(response, HttpResponse):
                await self._send_response(head, response.body, no_body)
            else:
                await self._send_stream(head, response, no_body, raw=not chunked)
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

    async def _refuse(self, incoming: IncomingRequest) -> bool:
        """Send a refusal (the parser's, or the authorize hook's) instead of running the
        handler; True when the connection takes another request."""
        response = incoming.refusal
        assert response is not None
        keep_alive = incoming.keep_alive and not incoming.closes and not self._server.closing
        try:
            head = encode_head(response, keep_alive=keep_alive, chunked=True)
        except ValueError:
            logger.exception("a refusal could not be written")
            response = self._server.error_answer(500, "internal server error")
            keep_alive = False
            head = encode_head(response, keep_alive=False, chunked=True)
        request = incoming.request
        no_body = (request is not None and request.method == "HEAD") or (
            response.status in NO_BODY_STATUSES
        )
        try:
            await self._send_response(head, response.body, no_body)
        except ClientGone:
            self._close_mode = _CLOSE
            return False
        return keep_alive and not self.eof

    async def _send_response(self, head: bytes, body: bytes, no_body: bool) -> None:
        if no_body or not body:
            await self._send(head)
        elif len(body) <= SINGLE_WRITE_BYTES:
            await self._send(head + body)
        else:
            await self._send(head)
            await self._send(body)

    async def _send_stream(
        self, head: bytes, response: StreamingResponse, no_body: bool, *, raw: bool
    ) -> None:
        """Send the head now, then each chunk as it comes: chunked (then the trailers), or
        (``raw``, HTTP/1.0) as they are until the close."""
        chunks = response.chunks
        stall_s = response.write_stall_s
        # Chunks made since the last write are written together at the loop's next pass (or
        # once they reach SINGLE_WRITE_BYTES): the many small chunks a stream makes of one
        # read of its source (a big answer: ~40 events a read) cost one system call, not one
        # each. A chunk made after its source waited is written at the next pass, as before.
        held: list[bytes] = []
        held_bytes = 0

        def write_held() -> None:
            nonlocal held_bytes
            transport = self._transport
            if held and transport is not None and not self.lost and not transport.is_closing():
                transport.write(held[0] if len(held) == 1 else b"".join(held))
            held.clear()
            held_bytes = 0

        try:
            await self._send(head, stall_s)
            if not no_body:
                async for chunk in chunks:
                    if chunk:
                        if self.lost or self._transport is None or self._transport.is_closing():
                            raise ClientGone
                        data = chunk if raw else b"%x\r\n%b\r\n" % (len(chunk), chunk)
                        if not held:
                            self._loop.call_soon(write_held)
                        held.append(data)
                        held_bytes += len(data)
                        if held_bytes >= SINGLE_WRITE_BYTES:
                            write_held()
                        await self._drained(stall_s)
                write_held()
                if not raw:
                    await self._send(b"0\r\n%b\r\n" % trailer_section(response), stall_s)
        finally:  # what the stream made before it ended, however it ended, is sent, as made
            write_held()
            await _close_chunks(chunks)

    async def _send_error(self, status: int, message: str) -> None:
        """Answer a request we will not serve (the server's error answer); the connection
        closes after."""
        response = self._server.error_answer(status, message)
        try:
            head = encode_head(response, keep_alive=False, chunked=True)
            await self._send_response(head, response.body, no_body=False)
        except ClientGone:
            self._close_mode = _CLOSE

    # ------------------------------------------------------------------ closing

    async def _send(self, data: bytes, stall_s: float | None = None) -> None:
        """Write ``data``; when the transport's buffer is full, wait until it drains (a
        client that reads slowly slows a stream down instead of growing the buffer), at most
        ``stall_s`` (None: :data:`WRITE_STALL_S`): a client that reads nothing for that long
        is dropped."""
        transport = self._transport
        assert transport is not None
        if self.lost or transport.is_closing():
            raise ClientGone
        transport.write(data)
        await self._drained(stall_s)

    async def _drained(self, stall_s: float | None) -> None:
        """Return once the transport's buffer is under its high-water mark: at once when it
        is, else when it drains, at most ``stall_s`` (see :meth:`_send`)."""
        if self._writing_paused:
            drain = self._drain = self._loop.create_future()
            try:
                await asyncio.wait_for(drain, WRITE_STALL_S if stall_s is None else stall_s)
            except TimeoutError:
                if self._transport is not None:
                    self._transport.abort()
                raise ClientGone from None
            finally:
                self._drain = None
            if self.lost:
                raise ClientGone

    # ------------------------------------------------------------------ closing

    async def _linger(self) -> None:
        """Half-close, then read (and drop) until the client closes, ``LINGER_S`` passes or
        ``LINGER_MAX_BYTES`` came."""
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
        while not self.eof and self._lingered <= LINGER_MAX_BYTES:
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
