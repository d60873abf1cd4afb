"""The HTTP/1.1 server's listener (:class:`HttpServer`): binding, the accept loops, one
:class:`~quotad.daemon.net.http11.connection.Connection` (an asyncio protocol on the loop's
transport) and its task per client, the timeout sweep that
wakes connections whose deadline has passed, and graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from typing import cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from anyio.streams.stapled import MultiListener

from quotad.daemon.net.http11.connection import LINGER_S, Connection
from quotad.daemon.net.http11.messages import (
    Authorize,
    ErrorAnswer,
    Handler,
    HttpLimits,
    default_error_answer,
)

logger = logging.getLogger(__name__)

ACCEPT_ERROR_PAUSE_S = 0.1
"""Pause after a failed accept (e.g. out of file descriptors) before accepting again."""


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on ``host:port`` (see :mod:`quotad.daemon.net.http11`).

    ``authorize`` sees each request's head before its body is read; ``error_answer`` makes
    the server's own error answers (see :mod:`.messages`).
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
    ) -> None:
        self.handler = handler
        self.authorize = authorize
        self.error_answer = error_answer
        self.limits = limits or HttpLimits()
        self._host = host
        self._port = port
        self._closing = False
        self._drain_deadline_s = 10.0
        self._connections: set[Connection] = set()
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
            for connection in list(self._connections):  # accepted, cancelled before serving
                connection.abort()
            self._connections.clear()
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
        instead of one per wait; a timeout fires up to one sweep interval late. The interval
        follows :attr:`limits` (a reload may replace them)."""
        loop = asyncio.get_running_loop()
        while True:
            limits = self.limits
            await anyio.sleep(
                min(1.0, limits.read_timeout_s / 8, limits.idle_timeout_s / 8, LINGER_S / 8)
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
        the loop's transport, served by a task of ``connections``."""
        loop = asyncio.get_running_loop()
        listening_socket = listener.extra(SocketAttribute.raw_socket)
        while True:
            try:
                client_socket, _ = await loop.sock_accept(listening_socket)
            except OSError as error:  # e.g. EMFILE: keep serving who is connected
                logger.warning("accept failed: %s", error)
                await anyio.sleep(ACCEPT_ERROR_PAUSE_S)
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
            connections.start_soon(self._run_connection, connection)

    async def _run_connection(self, connection: Connection) -> None:
        try:
            await connection.run()
        finally:
            self._connection_ended(connection)

    def _connection_ended(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if self._closing and not self._connections and self._drained is not None:
            self._drained.set()
