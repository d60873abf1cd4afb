"""The HTTP/1.1 server's listener (:class:`HttpServer`): binding, the accept loops (which
survive running out of file descriptors, cap the connections open at once, and keep
unidentified connections to their share, see :class:`~.messages.HttpLimits`), one
:class:`~quotad.daemon.net.http11.connection.Connection` (an asyncio protocol on the loop's
transport) and its task per client, the timeout sweep that wakes connections whose deadline has
passed, and graceful shutdown."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
from typing import cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener

from quotad.daemon.net.http11.connection import LINGER_S, Connection
from quotad.daemon.net.http11.messages import (
    Authorize,
    BodyMemory,
    ErrorAnswer,
    Handler,
    HttpLimits,
    default_error_answer,
)
from quotad.daemon.net.http11.wire import closing_answer
from quotad.daemon.net.log_rate import log_due

logger = logging.getLogger(__name__)

ACCEPT_ERROR_PAUSE_S = 0.1
"""Pause after a failed accept (e.g. out of file descriptors) before accepting again."""
ACCEPT_ERROR_LOG_EVERY_S = 30.0
"""While accepting keeps failing, a warning this often (not one per try)."""
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Accept failures that say the process or the system is out of something: they last until
something is freed, so they are reported (:attr:`HttpServer.accept_problem`)."""
OVER_CAPACITY_MESSAGE = "too many connections are open; retry shortly"
"""What a connection beyond ``max_connections`` is answered (503, then a close)."""
EVICTED_MESSAGE = (
    "too many connections without a key are open: this one, the oldest still sending its "
    "request head, was closed to make room; retry shortly"
)
"""What an unidentified connection closed to make room is answered, if it had sent part of a
request head (503, then a close); one dropped for its unread answers is told nothing more."""


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on ``host:port`` (see :mod:`quotad.daemon.net.http11`).

    ``authorize`` sees each request's head before its body is read; ``error_answer`` makes
    the server's own error answers (see :mod:`.messages`). ``request_memory``, when given,
    bounds the body bytes buffered by all connections together, with whatever else shares it
    (a body part past it is answered 503 and its connection closed, see :mod:`.parser`).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HttpLimits | None = None,
        authorize: Authorize | None = None,
        error_answer: ErrorAnswer = default_error_answer,
        request_memory: BodyMemory | None = None,
    ) -> None:
        self.handler = handler
        self.request_memory = request_memory
        self.authorize = authorize
        self.error_answer = error_answer
        self.limits = limits or HttpLimits()
        self._host = host
        self._port = port
        self._closing = False
        self._drain_deadline_s = 10.0
        self._connections: set[Connection] = set()
        self._unidentified: dict[Connection, None] = {}
        """Connections not identified yet (see ``HttpLimits.head_timeout_s``), oldest first."""
        self._draining: set[Connection] = set()
        """The connections open when shutdown began: the drain waits for these only."""
        self._listener: MultiListener[anyio.abc.SocketStream] | None = None
        self._drained: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._accept_failing_since: float | None = None
        self._accept_failure = ""
        self._accept_failure_logged = -ACCEPT_ERROR_LOG_EVERY_S
        self.refused_connections = 0
        """Connections answered 503 and closed because ``max_connections`` were open."""
        self.evicted_connections = 0
        """Unidentified connections closed to make room for new ones."""

    @property
    def port(self) -> int:
        """The bound port (valid once :meth:`serve` has started)."""
        return self._port

    @property
    def closing(self) -> bool:
        """True once :meth:`shutdown` has been called."""
        return self._closing

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def unidentified_connections(self) -> int:
        """Connections open now that no request has identified yet."""
        return len(self._unidentified)

    @property
    def accept_problem(self) -> str | None:
        """None while accepting works; else what fails and since when, e.g. ``accept
        failing: EMFILE (too many open files) since 12 s``."""
        since = self._accept_failing_since
        if since is None:
            return None
        seconds = asyncio.get_running_loop().time() - since
        return f"accept failing: {self._accept_failure} since {seconds:.0f} s"

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
        """Listen (unless :meth:`listen` did) and serve until :meth:`shutdown` has drained
        (or cancellation); reports the bound port. While it drains it still accepts, so
        that new requests get an answer (the handler sees :attr:`closing`) rather than a
        refused connection."""
        self._drained = anyio.Event()
        self._stopped = anyio.Event()
        try:
            await self.listen()
            listener = self._listener
            assert listener is not None
            async with listener, anyio.create_task_group() as connections:
                connections.start_soon(self._sweep_timeouts)
                for socket_listener in listener.listeners:
                    connections.start_soon(
                        self._accept_loop,
                        cast(anyio.abc.SocketListener, socket_listener),
                        connections,
                    )
                task_status.started(self._port)
                await self._drained.wait()
                connections.cancel_scope.cancel()
        finally:
            for connection in list(self._connections):  # accepted, cancelled before serving
                connection.abort()
            self._connections.clear()
            self._listener = None
            self._stopped.set()

    async def shutdown(self, deadline_s: float = 10.0) -> None:
        """Close idle connections, give requests in flight ``deadline_s`` to finish (new
        requests meanwhile are answered with ``connection: close``), then cancel the rest
        and stop accepting; returns when :meth:`serve` has returned."""
        self._closing = True
        self._drain_deadline_s = deadline_s
        self._draining = set(self._connections)
        for connection in list(self._connections):
            connection.close_if_idle()
        if self._stopped is not None:
            if not self._draining and self._drained is not None:
                self._drained.set()
            with anyio.move_on_after(deadline_s):
                if self._drained is not None:
                    await self._drained.wait()
            if self._drained is not None:
                self._drained.set()
            await self._stopped.wait()
        elif self._listener is not None:  # listening, never served
            listener, self._listener = self._listener, None
            await listener.aclose()

    async def _sweep_timeouts(self) -> None:
        """Wake every connection wait whose deadline has passed. One timer for the server
        instead of one per wait; a timeout fires up to one sweep interval late. The interval
        follows :attr:`limits` (a reload may replace them)."""
        loop = asyncio.get_running_loop()
        while True:
            limits = self.limits
            await anyio.sleep(
                min(
                    1.0,
                    limits.read_timeout_s / 8,
                    limits.idle_timeout_s / 8,
                    limits.head_timeout_s / 8,
                    LINGER_S / 8,
                )
            )
            now = loop.time()
            for connection in self._connections:
                if connection.deadline <= now:
                    connection.wake()

    async def _accept_loop(
        self,
        listener: anyio.abc.SocketListener,
        connections: anyio.abc.TaskGroup,
    ) -> None:
        """Accept clients on ``listener``'s socket, each as a :class:`Connection` protocol on
        the loop's transport, served by a task of ``connections``. A failed accept (out of
        file descriptors, say) pauses and tries again; a client beyond ``max_connections``, or
        beyond the unidentified connections' share, closes the oldest unidentified connection
        waiting for a head (else the oldest whose answers wait unread), or is answered 503 and
        closed at once when there is none."""
        loop = asyncio.get_running_loop()
        listening_socket = listener.extra(SocketAttribute.raw_socket)
        while True:
            try:
                client_socket, _ = await loop.sock_accept(listening_socket)
            except OSError as error:  # e.g. EMFILE: keep serving who is connected
                self._accept_failed(error, loop.time())
                await anyio.sleep(ACCEPT_ERROR_PAUSE_S)
                continue
            if self._accept_failing_since is not None:
                self._accept_recovered(loop.time())
            limits = self.limits
            if (
                len(self._connections) >= limits.max_connections
                or len(self._unidentified) >= limits.max_unidentified
            ) and not self._evict_one():
                self._refuse(client_socket)
                continue
            try:
                client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _, connection = await loop.connect_accepted_socket(
                    functools.partial(Connection, self), client_socket
                )
            except OSError as error:  # the client left at once
                logger.debug("could not set up an accepted connection: %s", error)
                client_socket.close()
                continue
            self._connections.add(connection)
            self._unidentified[connection] = None
            connections.start_soon(self._run_connection, connection)

    def _evict_one(self) -> bool:
        """Close the oldest unidentified connection waiting for a head, to make room for a new
        one; when none is, drop the oldest whose answers wait unread (a peer that pipelined
        requests without a key and reads none of their answers held its connections until
        ``WRITE_STALL_S``, 60 s, and kept a key holder out meanwhile). False when there is
        neither."""
        unidentified = self._unidentified
        evicted = next((each for each in unidentified if each.awaiting_head), None)
        unread = evicted is None
        if evicted is None:
            evicted = next((each for each in unidentified if each.answers_unread), None)
            if evicted is None:
                return False
        del unidentified[evicted]
        self.evicted_connections += 1
        if log_due(self.evicted_connections):
            logger.warning(
                "%d connection(s) open, %d not identified: closed %d so far that had sent no "
                "whole request head or left their answers unread, to make room",
                len(self._connections),
                len(unidentified),
                self.evicted_connections,
            )
        if unread:
            evicted.abort()
        else:
            evicted.evict(EVICTED_MESSAGE)
        return True

    def connection_identified(self, connection: Connection) -> None:
        """A request of ``connection`` named who sends it: it no longer counts in the share."""
        self._unidentified.pop(connection, None)

    def _refuse(self, client_socket: socket.socket) -> None:
        """Answer a connection beyond ``max_connections`` with a 503 in one non-blocking
        send, and close it: no protocol, no task, no read."""
        self.refused_connections += 1
        if log_due(self.refused_connections):
            logger.warning(
                "%d connection(s) open (http.max_connections): refused %d so far",
                len(self._connections),
                self.refused_connections,
            )
        try:
            answer = closing_answer(self.error_answer(503, OVER_CAPACITY_MESSAGE))
            client_socket.setblocking(False)
            client_socket.send(answer)
        except (OSError, ValueError):
            pass
        client_socket.close()

    def _accept_failed(self, error: OSError, now: float) -> None:
        """Note (and log, at most every :data:`ACCEPT_ERROR_LOG_EVERY_S`) a failed accept;
        one for want of a resource makes :attr:`accept_problem` say so."""
        code = error.errno
        name = errno.errorcode.get(code, str(code)) if code is not None else "error"
        described = f"{name} ({os.strerror(code).lower()})" if code is not None else str(error)
        if code in RESOURCE_ERRORS:
            if self._accept_failing_since is None:
                self._accept_failing_since = now
            self._accept_failure = described
        if now - self._accept_failure_logged >= ACCEPT_ERROR_LOG_EVERY_S:
            self._accept_failure_logged = now
            logger.warning(
                "accept failed on the HTTP listener: %s; %d connection(s) open, retrying "
                "every %g s",
                described,
                len(self._connections),
                ACCEPT_ERROR_PAUSE_S,
            )

    def _accept_recovered(self, now: float) -> None:
        since = self._accept_failing_since
        assert since is not None
        self._accept_failing_since = None
        self._accept_failure_logged = -ACCEPT_ERROR_LOG_EVERY_S
        logger.warning("the HTTP listener accepts again (it failed for %.0f s)", now - since)

    async def _run_connection(self, connection: Connection) -> None:
        try:
            await connection.run()
        finally:
            self._connection_ended(connection)

    def _connection_ended(self, connection: Connection) -> None:
        self._connections.discard(connection)
        self._unidentified.pop(connection, None)
        if self._closing and connection in self._draining:
            self._draining.discard(connection)
            if not self._draining and self._drained is not None:
                self._drained.set()
