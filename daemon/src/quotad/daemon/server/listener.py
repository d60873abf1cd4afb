"""The Unix socket's listener (:class:`SocketServer`): the accept loop, who is let in, how many
at once, the timer that closes connections that never say Hello, draining at shutdown, and the
server's figures in status.

Each accepted socket is checked before anything it sent is read: its peer (SO_PEERCRED)
against ``daemon.allow_uids``/``allow_gids``, then the connection cap
(``daemon.max_connections``), each uid's share of it and whether the daemon is draining. The
operator (the daemon's own uid, and root) may take every connection; the peers of any other uid
together at most :data:`~.limits.MAX_SHARE_PER_UID` of them, and all other uids together not the
last :data:`~.limits.OPERATOR_RESERVE`, kept so that ``quotad status`` and ``reload`` get in
while other users hold the rest. A peer turned away gets one ``Error`` frame (``unauthorized``,
or ``overloaded`` with ``retry_after_s``, naming the bound) and the close; a peer let in
becomes a :class:`~quotad.daemon.server.connection.Connection`, an asyncio protocol on the
loop's transport. A connection refused, closed or dropped (a bad frame, a timeout...) is logged
the first time for each code, then every 1,000th, with the count (:meth:`SocketServer.log_closing`):
any local process may spoil thousands a second.

An ``accept()`` that fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM: the process
or the system is out of descriptors or memory) does not end the loop: it is logged, the loop
pauses (0.1 s, doubling up to 1 s, as asyncio's and nginx's accept loops do) and tries again,
and :attr:`SocketServer.accept_problem` says so until accepting works again. Connections waiting
meanwhile stay in the listen backlog and are served once descriptors free up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from quotad.daemon.access import AccessPolicy
from quotad.daemon.broker import Broker
from quotad.daemon.config import Config
from quotad.daemon.net.log_rate import LOGGED_EVERY, RepeatCounts
from quotad.daemon.request_memory import RequestMemory
from quotad.daemon.server.binding import (
    PeerCredentials,
    bind_unix_socket,
    peer_credentials,
)
from quotad.daemon.server.connection import Connection
from quotad.daemon.server.error_replies import overloaded
from quotad.daemon.server.limits import (
    MAX_SHARE_PER_UID,
    ConnectionLimits,
    most_per_uid,
    operator_reserve,
)
from quotad.daemon.server.snapshots import SnapshotPace
from quotad.protocol.framing import FrameEncoder
from quotad.protocol.messages import Error, StatusReply
from quotad.protocol.paths import display_path

log = logging.getLogger("quotad.server")

RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""``accept()`` failures that mean "out of descriptors or memory for now", not "broken"."""
ACCEPT_PAUSE_S: Final = (0.1, 1.0)
"""The first and the longest pause after an accept that failed for want of resources."""
TURN_AWAY_LINGER_S: Final = 1.0
"""How long a connection turned away stays open after its answer (see _turn_away)."""
MAX_LINGERING: Final = 64
"""Connections turned away that may linger at once."""
WRITE_STALL_S: Final = 60.0
"""A connection whose answers have waited this long for the peer to read them is dropped."""
CLOSE_WAIT_S: Final = 10.0
"""How long a stopping server waits for its cancelled requests to finish."""


class SocketServer:
    """Accepts connections on the daemon's Unix socket and serves each one."""

    def __init__(
        self,
        broker: Broker,
        path: Path,
        *,
        limits: ConnectionLimits | None = None,
        access: AccessPolicy | None = None,
        request_memory: RequestMemory | None = None,
    ) -> None:
        self.broker = broker
        self.path = path
        self.request_memory = request_memory or RequestMemory()
        """The bound on request bytes held in memory (shared with the HTTP front door): here,
        the frames of the requests in flight and those arriving."""
        self.limits = limits or ConnectionLimits()
        """For connections accepted from now on (a reload replaces it)."""
        self.access = access or AccessPolicy()
        self.encoder = FrameEncoder()
        """Shared by every connection: encoding is synchronous and copies out the frame."""
        self.connections: set[Connection] = set()
        self.operator_uids = frozenset({os.getuid(), 0})
        """Peers of these uids (the daemon's own, root) may take every connection."""
        self.connections_per_uid: Counter[int | None] = Counter()
        """Connections open by peer uid (None: a peer SO_PEERCRED could not name)."""
        self.requests_in_flight = 0
        self.closed_connections: RepeatCounts[str] = RepeatCounts()
        """Connections refused, closed or dropped by the daemon since the start, by the code
        they were answered (``dropped``: no answer) (:meth:`log_closing`)."""
        self.http_address = ""
        """``host:port`` of the HTTP front door, when one runs (for status)."""
        self.draining = False
        self.snapshots = SnapshotPace(self.status)
        """What every Subscribe on this socket shares: the pace and the status."""
        self._idle = anyio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        """Set once :meth:`serve` has closed everything (None: it is not running)."""
        self._sock: socket.socket | None = None
        self._owns_path = False
        self._accept_error: OSError | None = None
        self._accept_failing_since = 0.0
        self._turned_away_logged = 0.0
        self._lingering: set[socket.socket] = set()

    # ------------------------------------------------------------------ serving

    def bind(self, sock: socket.socket | None = None) -> None:
        """Create the listening socket (or adopt one passed in, e.g. by systemd)."""
        if sock is None:
            sock = bind_unix_socket(self.path)
            self._owns_path = True
        self._sock = sock

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and serve connections until :meth:`shutdown` (or cancellation); then every
        connection is closed and its requests cancelled, and their tasks have ended."""
        if self._sock is None:
            self.bind()
        listening = self._sock
        assert listening is not None
        listening.setblocking(False)
        self._stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as timers:
                timers.start_soon(self._close_silent_connections)
                with anyio.CancelScope() as self._accepting:
                    task_status.started()
                    await self._accept_loop(listening)
                timers.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_all()  # the accept loop has ended: its reader is removed
            self._stopped.set()

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pause = ACCEPT_PAUSE_S[0]
        while True:
            try:
                if self._accept_error is None:
                    client, _ = await loop.sock_accept(listening)
                else:  # after a failure: whether accepting works again, without waiting
                    client, _ = listening.accept()
            except BlockingIOError:
                self._accepting_again()  # nothing was waiting to be accepted, nothing failed
                continue
            except OSError as error:
                if listening.fileno() < 0:
                    return  # closed under us: the server is stopping
                if error.errno in RESOURCE_ERRNOS:
                    self._accept_failed(error)
                    await anyio.sleep(pause)
                    pause = min(2 * pause, ACCEPT_PAUSE_S[1])
                else:  # the peer left before we took it (ECONNABORTED...), or worse
                    log.warning("accept on %s failed: %s", self.path, error)
                    await anyio.sleep(ACCEPT_PAUSE_S[0])
                continue
            pause = ACCEPT_PAUSE_S[0]
            if self._accept_error is not None:
                self._accepting_again()
            try:
                await self._take(loop, client)
            except Exception:  # a bug setting one connection up must not end the listener
                log.exception("setting up a connection on %s failed", self.path)
                client.close()

    async def _take(self, loop: asyncio.AbstractEventLoop, client: socket.socket) -> None:
        """Check an accepted socket and serve it, or turn it away; nothing it sent is read."""
        client.setblocking(False)
        try:
            peer = peer_credentials(client)
        except OSError:  # gone already
            client.close()
            return
        refusal = self._refusal(peer, client)
        if refusal is not None:
            self.log_closing(peer, "unauthorized", refusal)
            self._turn_away(client, Error(code="unauthorized", message=refusal))
            return
        if self.draining:
            self._turn_away(client, overloaded("quotad is shutting down; retry shortly"))
            return
        limits = self.limits
        full = self._full(peer, limits.max_connections)
        if full is not None:
            now = time.monotonic()
            if now - self._turned_away_logged > 10:
                self._turned_away_logged = now
                log.warning("turning connections away: %s", full)
            self._turn_away(client, overloaded(f"{full}; retry shortly"))
            return
        connection = Connection(self, peer, limits)
        try:
            await loop.connect_accepted_socket(lambda: connection, client)
        except OSError as error:  # the peer left at once, or no room for the transport
            log.debug("could not set up an accepted connection: %s", error)
            connection.connection_lost(error)
            client.close()

    def _full(self, peer: PeerCredentials | None, max_connections: int) -> str | None:
        """Why no more connections of ``peer`` are taken now (``max_connections`` reached, its
        uid holding its share, or only the operator's reserve left), if so."""
        open_now = len(self.connections)
        if open_now >= max_connections:
            return f"quotad already serves {open_now} connections (daemon.max_connections)"
        uid = peer.uid if peer is not None else None
        if uid in self.operator_uids:
            return None
        held = self.connections_per_uid[uid]
        most = most_per_uid(max_connections)
        if held >= most:
            who = f"uid {uid}" if uid is not None else "peers of no known uid"
            return (
                f"{who} already holds {held} connections, the most one uid may "
                f"({MAX_SHARE_PER_UID:.0%} of daemon.max_connections, {max_connections})"
            )
        reserve = operator_reserve(max_connections)
        if open_now >= max_connections - reserve:
            return (
                f"quotad serves {open_now} connections; the last {reserve} of "
                f"daemon.max_connections ({max_connections}) are kept for the operator "
                f"(uid {os.getuid()}, root)"
            )
        return None

    def _refusal(self, peer: PeerCredentials | None, client: socket.socket) -> str | None:
        """Why this peer may not use the daemon (``daemon.allow_uids``/``allow_gids``), if so."""
        access = self.access
        if not access.restricted:
            return None
        if peer is None:
            return "the peer cannot be identified (no SO_PEERCRED) and daemon.allow_uids is set"
        return access.refusal(peer.uid, peer.gid, client)

    def _turn_away(self, client: socket.socket, answer: Error) -> None:
        """Answer ``answer`` (one small frame: the socket's buffer takes it whole), end our
        side, and close the socket :data:`TURN_AWAY_LINGER_S` later: closed at once, the peer's
        first ``send`` (its Hello) would fail with EPIPE before it could read why. Nothing it
        sends meanwhile is read. At most :data:`MAX_LINGERING` linger; the rest close at once."""
        try:
            client.send(self.encoder.encode(answer))
            client.shutdown(socket.SHUT_WR)
        except OSError:
            client.close()
            return
        if len(self._lingering) >= MAX_LINGERING:
            client.close()
            return
        self._lingering.add(client)
        asyncio.get_running_loop().call_later(TURN_AWAY_LINGER_S, self._end_linger, client)

    def _end_linger(self, client: socket.socket) -> None:
        self._lingering.discard(client)
        client.close()

    def _accept_failed(self, error: OSError) -> None:
        if self._accept_error is None:
            self._accept_failing_since = time.monotonic()
            log.error(
                "accept on %s failing: %s; connections wait until it works again "
                "(raise LimitNOFILE, or lower daemon.max_connections)",
                self.path,
                error,
            )
        self._accept_error = error

    def _accepting_again(self) -> None:
        if self._accept_error is not None:
            log.warning(
                "accept on %s works again after %.1f s",
                self.path,
                time.monotonic() - self._accept_failing_since,
            )
        self._accept_error = None

    @property
    def accept_problem(self) -> str | None:
        """None while accepting works; else what fails and since when, in a few words
        ("accept failing: EMFILE (too many open files) since 12 s")."""
        error = self._accept_error
        if error is None:
            return None
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        reason = os.strerror(error.errno or 0).lower()
        since = time.monotonic() - self._accept_failing_since
        return f"accept failing: {name} ({reason}) since {since:.0f} s"

    async def _close_silent_connections(self) -> None:
        """Close connections that have not said Hello within ``hello_timeout_s``, whose frame
        has not arrived whole ``frame_timeout_s`` after its first byte, or that have held
        nothing for ``idle_timeout_s``, and drop those that have left their answers
        unread for :data:`WRITE_STALL_S` (one timer for the server, not one per connection; a
        deadline may pass by up to a quarter of itself)."""
        while True:
            limits = self.limits
            await anyio.sleep(
                min(
                    1.0,
                    limits.hello_timeout_s / 4,
                    limits.idle_timeout_s / 4,
                    limits.frame_timeout_s / 4,
                    WRITE_STALL_S / 4,
                )
            )
            now = time.monotonic()
            for connection in list(self.connections):
                if not connection.greeted:
                    if now - connection.accepted_at > connection.limits.hello_timeout_s:
                        connection.refuse(
                            "timeout",
                            f"no Hello within {connection.limits.hello_timeout_s:g} s of "
                            "connecting",
                        )
                elif (
                    connection.stalled_since is not None
                    and now - connection.stalled_since > WRITE_STALL_S
                ):
                    connection.abort(f"its answers went unread for {WRITE_STALL_S:g} s")
                elif (overdue := connection.frame_overdue(now)) is not None:
                    connection.refuse("timeout", overdue)
                elif connection.idle_past(now, connection.limits.idle_timeout_s):
                    connection.close_idle(
                        f"closed after {connection.limits.idle_timeout_s:g} s holding nothing "
                        "(no request in flight, no subscription, no permit)",
                    )

    # ------------------------------------------------------------------ bookkeeping

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a request's task until it ends (the loop holds tasks weakly)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_started(self) -> None:
        """A request began somewhere on this server."""
        self.requests_in_flight += 1

    def request_finished(self) -> None:
        """A request ended; wake a draining shutdown when none is left."""
        self.requests_in_flight -= 1
        if self.requests_in_flight == 0 and self.draining:
            self._idle.set()

    def connection_started(self, connection: Connection) -> None:
        """A connection has its transport (its peer checked, the cap respected)."""
        self.connections.add(connection)
        self.connections_per_uid[_uid(connection)] += 1

    def log_closing(self, peer: PeerCredentials | None, code: str, reason: str) -> None:
        """Log that a connection of ``peer`` is refused or closed, answered ``code``, for
        ``reason``: the first time for each code, then every
        :data:`~quotad.daemon.net.log_rate.LOG_EVERY`-th, with the count (any local process
        may open thousands of connections a second and spoil each: 20,000 with a bad frame
        wrote 20,000 lines)."""
        if count := self.closed_connections.count(code):
            log.info(
                "closing connection from pid %s: %s (%d closed %s so far; %s)",
                peer and peer.pid,
                reason,
                count,
                code,
                LOGGED_EVERY,
            )

    def connection_ended(self, connection: Connection) -> None:
        """A connection is gone."""
        if connection in self.connections:
            self.connections.remove(connection)
            uid = _uid(connection)
            self.connections_per_uid[uid] -= 1
            if not self.connections_per_uid[uid]:
                del self.connections_per_uid[uid]

    # ------------------------------------------------------------------ stopping

    async def shutdown(self, drain_s: float) -> None:
        """Drain: new connections and new requests are answered ``overloaded`` while the
        requests in flight get ``drain_s`` to finish; then stop accepting and close."""
        self.draining = True
        if self.requests_in_flight:
            log.info("draining %d request(s), up to %.0f s", self.requests_in_flight, drain_s)
            with anyio.move_on_after(drain_s):
                await self._idle.wait()
        if self.requests_in_flight:
            log.warning("cancelling %d request(s) still in flight", self.requests_in_flight)
        if self._stopped is None:  # never served: nothing to wait for
            await self._close_all()
            return
        if self._accepting is not None:
            self._accepting.cancel()
        await self._stopped.wait()

    async def _close_all(self) -> None:
        """Close the listener and every connection (their requests cancelled), wait for the
        requests' tasks to end, and remove the socket file if it is ours."""
        if self._sock is not None and self._sock.fileno() >= 0:
            self._sock.close()
        for lingering in self._lingering:
            lingering.close()
        self._lingering.clear()
        for connection in list(self.connections):
            connection.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT_S)
            if pending:
                log.warning("%d request(s) did not end within %.0f s", len(pending), CLOSE_WAIT_S)
        if self._owns_path:
            self._owns_path = False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # ------------------------------------------------------------------ configuration, status

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config: the frame bound, the limits and the allow lists hold for
        connections made from now on (connections already let in stay as they are)."""
        self.limits = ConnectionLimits.from_config(config.daemon)
        self.access = AccessPolicy.from_config(config.daemon)

    @property
    def problems(self) -> list[str]:
        """What keeps this server from serving fully now (for status and /healthz)."""
        problem = self.accept_problem
        return [f"unix socket {display_path(self.path)}: {problem}"] if problem is not None else []

    def status(self) -> StatusReply:
        """The broker's status with this server's own figures."""
        reply = self.broker.reports.status()
        reply.socket = display_path(self.path)
        reply.http = self.http_address
        reply.connections = len(self.connections)
        reply.problems = [*self.problems, *reply.problems]  # the broker's: the fleet's
        return reply


def _uid(connection: Connection) -> int | None:
    """The uid of ``connection``'s peer (None: SO_PEERCRED could not name it)."""
    return connection.peer.uid if connection.peer is not None else None
