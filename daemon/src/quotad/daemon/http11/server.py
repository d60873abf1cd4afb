"""The HTTP/1.1 server core: connections, keep-alive, limits, timeouts, answers, shutdown.

It owns the connection side of HTTP: accepting, parsing, keep-alive, limits, timeouts,
writing responses and graceful shutdown. What to answer is the handler's business; the
simulated provider (``quotad sim``) and the daemon's HTTP front door both run on it.

API::

    async def handler(request: HttpRequest) -> HttpResponse | StreamingResponse: ...

    server = HttpServer(handler, host="127.0.0.1", port=0, limits=HttpLimits())
    await server.listen()                        # optional: bind now (OSError: port busy)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)      # bound port (port 0 picks a free one)
        ...
        await server.shutdown(deadline_s=10.0)   # serve() returns once it is done

- :class:`HttpRequest` holds the method, target (path + query), path, headers as
  ``(lower-cased name, value)`` byte pairs (``header(name)`` finds one), the whole body and
  the peer address. Bodies are read completely before the handler runs.
- :class:`HttpResponse` is answered in one write with a ``content-length`` the server adds.
  :class:`StreamingResponse` sends its headers at once, then each chunk of ``chunks`` as it
  comes (chunked transfer-encoding), and ``aclose()``\\ s the iterator however it ends.
- A handler (or a streaming iterator) that raises :class:`AbortConnection` gets the connection
  closed without an answer (``reset=True``: with a TCP RST). Any other exception answers 500
  (or, once a stream has started, cuts it) and the server carries on. A response header
  holding a line break is a handler error too (500), never written.
- Error answers of the server itself (400, 408, 413, 431, 500) have a JSON body that both SDK
  families read: ``{"type": "error", "error": {"type", "message", "code"}}``.

Requests are parsed by :mod:`.parser` (one parser per connection, holding what was read
beyond the current request); responses are written directly. Both cost a fraction of h11's
general state machine and per-event validation.
HTTP/1.0 clients get their answer and a close (a streamed body is then close-delimited).

Connections: keep-alive; pipelined requests are read one at a time and answered in order.
A request line + headers over ``max_header_bytes`` is answered 431, a body over
``max_body_bytes`` 413, a malformed request 400; each of these closes the connection. A
request that has started arriving must be complete within ``read_timeout_s`` (else 408 and
close: slowloris); a keep-alive connection waits ``idle_timeout_s`` for its next request. A
task reads each connection all along, so a client that goes away (EOF or reset) while its
request is being handled cancels the handler and stops its stream at once; a half-close from
the client counts as going away. Closes after an answer are lingering (FIN, then read until the
client closes, at most ``LINGER_S``) so that the client reads the answer before the socket goes.
Timeouts are checked by one sweep task per server (no timer per request), so they fire up to
an eighth of the timeout (at most 1 s) late.

Shutdown: stop accepting, close idle keep-alive connections, let requests in flight finish
(answered with ``connection: close``) until the deadline, then cancel what is left.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import anyio
import anyio.abc
import msgspec
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener

from quotad.daemon.http11.parser import (
    CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    BodyData,
    ParseError,
    RequestHead,
    RequestParser,
)

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
"""Bytes asked of the socket per read."""
READ_AHEAD_BYTES = 256 * 1024
"""Bytes read beyond what the parser has consumed before reading pauses (pipelining bound)."""
LINGER_S = 2.0
"""How long a closing connection waits for the client to close its side."""
SINGLE_WRITE_BYTES = 65536
"""Bodies up to this size are joined with the head into one write."""
ACCEPT_ERROR_PAUSE_S = 0.1
"""Pause after a failed accept (e.g. out of file descriptors) before accepting again."""
STREAM_ACLOSE_TIMEOUT_S = 5.0
"""Bound on a streaming iterator's ``aclose()``."""

Headers = list[tuple[str, str]]

_LINGER, _CLOSE, _RESET = 0, 1, 2  # how a connection ends (see _Connection.run)

_REASON_TEXT: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
_LINGER_RESET = struct.pack("ii", 1, 0)
_json = msgspec.json.Encoder()


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


def _error_body(status: int, message: str, code: str) -> bytes:
    """A JSON error body both SDK families understand: ``error.message`` for OpenAI's,
    ``type: "error"`` + ``error.type`` for Anthropic's."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    return _json.encode(
        {"type": "error", "error": {"type": kind, "message": message, "code": code}}
    )


def _raw_error(status: int, message: str, code: str) -> bytes:
    body = _error_body(status, message, code)
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
    _error_body(500, "internal server error", "internal"),
)


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on ``host:port`` (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HttpLimits | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or HttpLimits()
        self._host = host
        self._port = port
        self._closing = False
        self._drain_deadline_s = 10.0
        self._connections: set[_Connection] = set()
        self._listener: MultiListener[anyio.abc.SocketStream] | None = None
        self._accept_scope: anyio.CancelScope | None = None
        self._drained: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @property
    def port(self) -> int:
        """The bound port (valid once :meth:`serve` has started)."""
        return self._port

    @property
    def closing(self) -> bool:
        """True once :meth:`shutdown` has been called."""
        return self._closing

    async def listen(self) -> int:
        """Bind and listen now rather than in :meth:`serve`, so that an address in use is
        reported (``OSError``) before anything else starts; returns the bound port."""
        if self._listener is None:
            listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
            self._port = listener.extra(SocketAttribute.local_port)
            self._listener = listener
        return self._port

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen (unless :meth:`listen` did) and serve until :meth:`shutdown` (or
        cancellation); reports the bound port."""
        self._drained = anyio.Event()
        self._stopped = anyio.Event()
        try:
            await self.listen()
            listener = self._listener
            assert listener is not None
            async with listener, anyio.create_task_group() as connections:
                connections.start_soon(self._sweep_timeouts)
                with anyio.CancelScope() as accept_scope:
                    self._accept_scope = accept_scope
                    if self._closing:
                        accept_scope.cancel()
                    task_status.started(self._port)
                    async with anyio.create_task_group() as acceptors:
                        for socket_listener in listener.listeners:
                            acceptors.start_soon(
                                self._accept_loop,
                                cast(anyio.abc.SocketListener, socket_listener),
                                connections,
                            )
                await listener.aclose()
                if self._connections:
                    with anyio.move_on_after(self._drain_deadline_s):
                        await self._drained.wait()
                connections.cancel_scope.cancel()
        finally:
            self._listener = None
            self._stopped.set()

    async def shutdown(self, deadline_s: float = 10.0) -> None:
        """Stop accepting, close idle connections, give requests in flight ``deadline_s`` to
        finish, then cancel the rest; returns when :meth:`serve` has returned."""
        self._closing = True
        self._drain_deadline_s = deadline_s
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for connection in list(self._connections):
            connection.close_if_idle()
        if self._stopped is not None:
            await self._stopped.wait()
        elif self._listener is not None:  # listening, never served
            listener, self._listener = self._listener, None
            await listener.aclose()

    async def _sweep_timeouts(self) -> None:
        """Wake every connection wait whose deadline has passed. One timer for the server
        instead of one per wait; a timeout fires up to one sweep interval late."""
        limits = self.limits
        interval = min(1.0, limits.read_timeout_s / 8, limits.idle_timeout_s / 8, LINGER_S / 8)
        while True:
            await anyio.sleep(interval)
            now = anyio.current_time()
            for connection in self._connections:
                if connection.deadline <= now:
                    connection.wake()

    async def _accept_loop(
        self,
        listener: anyio.abc.SocketListener,
        connections: anyio.abc.TaskGroup,
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:  # e.g. EMFILE: keep serving who is connected
                logger.warning("accept failed: %s", error)
                await anyio.sleep(ACCEPT_ERROR_PAUSE_S)
                continue
            connections.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: anyio.abc.SocketStream) -> None:
        connection = _Connection(self, stream)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            if self._closing and not self._connections and self._drained is not None:
                self._drained.set()


class _Connection:
    """One client connection: a reader task feeding the parser, and the request loop.

    The parser keeps what was read beyond the current request (pipelining); answers are
    written by hand (a few string joins).
    """

    __slots__ = (
        "_client",
        "_close_mode",
        "_handler_scope",
        "_http10",
        "_idle",
        "_keep_alive",
        "_limits",
        "_lingering",
        "_parser",
        "_pending",
        "_resume",
        "_server",
        "_stream",
        "_wakeup",
        "deadline",
        "eof",
    )

    def __init__(self, server: HttpServer, stream: anyio.abc.SocketStream) -> None:
        self._server = server
        self._stream = stream
        self._limits = server.limits
        self._parser = RequestParser(self._limits.max_header_bytes)
        try:
            address = stream.extra(SocketAttribute.remote_address)
        except (anyio.TypedAttributeLookupError, OSError):
            address = None
        self._client = (address[0], address[1]) if isinstance(address, tuple) else None
        self._wakeup: anyio.Event | None = None
        self._resume: anyio.Event | None = None
        self._pending = 0
        self._handler_scope: anyio.CancelScope | None = None
        self._idle = False
        self._lingering = False
        self._close_mode = _LINGER
        self._keep_alive = True
        self._http10 = False
        self.deadline = math.inf
        self.eof = False

    def close_if_idle(self) -> None:
        """Server shutdown: end the wait for a next request, if that is what we are doing."""
        if self._idle:
            self.wake()

    def wake(self) -> None:
        """End the current wait for data (the server's timeout sweep calls this once
        :attr:`deadline` has passed)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as reader:
                reader.start_soon(self._read_loop)
                try:
                    while True:
                        request = await self._read_request()
                        if request is None or not await self._respond(request):
                            break
                        self._parser.start_next()
                    if self._close_mode == _LINGER and not self.eof:
                        await self._linger()
                finally:
                    reader.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self._close_mode == _RESET:
                    self._set_linger_reset()
                await self._stream.aclose()

    # ------------------------------------------------------------------ reading

    async def _read_loop(self) -> None:
        """Read the socket all along; wake the request loop; notice the client leaving."""
        stream = self._stream
        try:
            while True:
                if self._pending > READ_AHEAD_BYTES and not self._lingering:
                    resume = self._resume = anyio.Event()
                    await resume.wait()
                data = await stream.receive(RECEIVE_SIZE)
                if self._lingering:
                    continue
                self._pending += len(data)
                self._parser.receive_data(data)
                if self._wakeup is not None:
                    self._wakeup.set()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        self.eof = True
        if not self._lingering:
            self._parser.receive_data(b"")
        if self._wakeup is not None:
            self._wakeup.set()
        if self._handler_scope is not None:
            self._handler_scope.cancel()

    async def _wait_data(self, deadline: float) -> bool:
        """Wait for more bytes (or the client's EOF) until ``deadline``; False when it passed
        first. No timer per wait: the server's sweep wakes waits whose deadline has passed."""
        self._pending = 0
        if self._resume is not None:
            self._resume.set()
            self._resume = None
        wakeup = self._wakeup = anyio.Event()
        self.deadline = deadline
        try:
            await wakeup.wait()
        finally:
            self.deadline = math.inf
            self._wakeup = None
        return self._pending > 0 or self.eof

    async def _wait_idle(self) -> bool:
        """Wait for the first bytes of a next request; False: close instead (timeout or
        shutdown)."""
        if self._server.closing:
            return False
        self._idle = True
        try:
            return await self._wait_data(anyio.current_time() + self._limits.idle_timeout_s)
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
                        await self._send_error(
                            error.error_status_hint, f"bad request: {error}", "bad_request"
                        )
                return None
            if event is NEED_DATA:
                if deadline < 0:
                    if head is None and not parser.has_data:
                        if not await self._wait_idle():
                            self._close_mode = _CLOSE
                            return None
                        continue
                    deadline = anyio.current_time() + limits.read_timeout_s
                if not await self._wait_data(deadline):
                    if not self.eof:
                        await self._send_error(
                            408,
                            f"request not complete within {limits.read_timeout_s:g} s",
                            "request_timeout",
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
        the headers as a list, or None when an error answer was sent instead."""
        limits = self._limits
        header_bytes = len(head.method) + len(head.target) + 12
        declared = 0
        keep_alive = head.http_version == b"1.1"
        headers = list(head.headers)
        for name, value in headers:
            header_bytes += len(name) + len(value) + 4
            if name == b"content-length":
                declared = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        self._keep_alive = keep_alive
        self._http10 = head.http_version != b"1.1"
        if header_bytes > limits.max_header_bytes:
            await self._headers_too_large()
            return None
        if declared > limits.max_body_bytes:
            await self._body_too_large()
            return None
        if self._parser.client_is_waiting_for_100_continue:
            await self._stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return headers

    async def _headers_too_large(self) -> None:
        await self._send_error(
            431,
            f"request line and headers exceed {self._limits.max_header_bytes} bytes",
            "headers_too_large",
        )

    async def _body_too_large(self) -> None:
        await self._send_error(
            413, f"request body exceeds {self._limits.max_body_bytes} bytes", "body_too_large"
        )

    # ------------------------------------------------------------------ answering

    async def _respond(self, request: HttpRequest) -> bool:
        """Run the handler and send its answer; True when the connection takes another request."""
        scope = self._handler_scope = anyio.CancelScope()
        if self.eof:
            scope.cancel()
        keep_alive = self._keep_alive
        chunked = not self._http10
        try:
            with scope:
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
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._close_mode = _CLOSE
            return False
        except Exception:
            logger.exception("stream failed: %s %s", request.method, request.target)
            self._close_mode = _CLOSE
            return False
        finally:
            self._handler_scope = None
        return keep_alive and not (scope.cancelled_caught or self.eof)

    async def _send_response(self, head: bytes, body: bytes, no_body: bool) -> None:
        if no_body or not body:
            await self._stream.send(head)
        elif len(body) <= SINGLE_WRITE_BYTES:
            await self._stream.send(head + body)
        else:
            await self._stream.send(head)
            await self._stream.send(body)

    async def _send_stream(self, head: bytes, chunks: AsyncIterator[bytes], no_body: bool) -> None:
        """Send the head now, then each chunk as it comes: chunked, or (HTTP/1.0) raw until
        the close."""
        raw = self._http10
        try:
            await self._stream.send(head)
            if not no_body:
                async for chunk in chunks:
                    if chunk:
                        await self._stream.send(
                            chunk if raw else b"%x\r\n%b\r\n" % (len(chunk), chunk)
                        )
                if not raw:
                    await self._stream.send(b"0\r\n\r\n")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with anyio.move_on_after(STREAM_ACLOSE_TIMEOUT_S, shield=True):
                    await aclose()

    async def _send_error(self, status: int, message: str, code: str) -> None:
        """Answer a request we will not serve; the connection closes after."""
        try:
            await self._stream.send(_raw_error(status, message, code))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._close_mode = _CLOSE

    # ------------------------------------------------------------------ closing

    async def _linger(self) -> None:
        """Half-close, then read (and drop) until the client closes or ``LINGER_S`` passes."""
        self._lingering = True
        if self._resume is not None:
            self._resume.set()
        try:
            await self._stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        deadline = anyio.current_time() + LINGER_S
        while not self.eof:
            if not await self._wait_data(deadline):
                return

    def _set_linger_reset(self) -> None:
        """Make the coming close send a TCP RST."""
        try:
            raw_socket = self._stream.extra(SocketAttribute.raw_socket)
            raw_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except (anyio.TypedAttributeLookupError, OSError):
            logger.debug("could not set SO_LINGER for a reset")
