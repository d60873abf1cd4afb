"""One client of the Unix socket (:class:`Connection`): an asyncio protocol whose read callback
decodes frames and dispatches each request, many in flight at once, answered by id (DESIGN §5).

Bytes reach the frame decoder in the event loop's read callback, and answers go to the
transport in the same turn of the event loop, as in the HTTP server core
(:mod:`quotad.daemon.net.http11.connection`): no reader task, no stream wrapper, and no task
at all for a request that can be answered at once (``Status``; ``Settle``; an ``Acquire`` the
gates admit without waiting; ``Cancel``). The rest (``Chat``, ``Embed``, an ``Acquire`` that
waits, ``Spend``, ``Admin``, ``Subscribe``) each run as a task under their own cancel scope,
which ``Cancel(id)`` and the connection's close cancel. Each answer is written as a whole
frame, so frames never interleave; the frames written in one turn of the event loop (the
answers given at once while the frames of one read are answered, the chunks a stream relays
from one read of its provider) go out together, in one ``transport.write``
(:data:`GATHERED_BYTES` at most).

What a connection may cost is bounded: the bytes of one frame (``daemon.max_frame``), requests
in flight plus permits held (``daemon.max_in_flight_per_connection``: one more is answered
``overloaded``), and with every other connection (and the HTTP front door) the bytes of the
frames of requests in flight and of those still arriving (:mod:`quotad.daemon.request_memory`:
past it, a whole frame's request is answered ``overloaded`` and the connection goes on; a
connection whose frame arriving cannot be held is answered ``overloaded`` and closed, see
:meth:`Connection._refuse_unread`), Subscribes
(:attr:`ConnectionLimits.max_subscriptions`), and what it leaves
unread: while the transport's write buffer is over its high-water mark, requests wait for it to
drain before they end (streams and snapshots slow down), and past :data:`MAX_UNREAD_BYTES` the
connection stops reading (no new work from a peer that does not read its answers). One read
callback answers or starts at most :data:`FRAMES_PER_TURN` requests: the frames after them
wait in the decoder, reading paused, until the event loop's next turn (a write holding
thousands of frames held the loop for all of them). A request
holding a value JSON cannot carry is refused (:mod:`.json_values`). A frame that cannot be
decoded is answered with an ``Error`` naming what was wrong and closes this connection only;
permits it still holds are settled as reserved. A frame that has not arrived whole
:attr:`ConnectionLimits.frame_timeout_s` after its first byte (:meth:`Connection.frame_overdue`)
is answered ``Error(timeout)`` and closes the connection. A connection that has held nothing for
:attr:`ConnectionLimits.idle_timeout_s` (no request in flight, no subscription, no permit) is
closed by the listener (:meth:`Connection.idle_past`, :meth:`Connection.close_idle`) without
losing a request the client sends at that instant: its read side is shut first, so that a frame
either was queued before (and is answered) or fails to send at once (EPIPE, and the client sends
it again on a new connection); a client reconnects at its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Protocol, cast

import anyio

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.errors import RequestError, encodable
from quotad.daemon.request_limits import check_name
from quotad.daemon.request_memory import RequestMemory
from quotad.daemon.server.binding import PeerCredentials
from quotad.daemon.server.error_replies import (
    error_reply,
    overloaded,
    oversized,
    unencodable,
    unread_refusal,
)
from quotad.daemon.server.json_values import check_json_values
from quotad.daemon.server.limits import ConnectionLimits
from quotad.daemon.server.snapshots import SnapshotPace, send_snapshots
from quotad.daemon.status import DAEMON_VERSION
from quotad.protocol.framing import HEADER_SIZE as FRAME_HEADER_SIZE
from quotad.protocol.framing import (
    FrameEncoder,
    FrameError,
    FrameTooLarge,
    MessageValidationError,
    request_decoder,
)
from quotad.protocol.messages import (
    Acquire,
    Admin,
    Cancel,
    Chat,
    ChatChunk,
    ChatEnd,
    Embed,
    Error,
    Hello,
    Message,
    Permit,
    Request,
    Settle,
    Spend,
    Status,
    StatusReply,
    Subscribe,
    Welcome,
)

log = logging.getLogger("quotad.server")

FEATURES: Final = ["chat", "stream", "embed", "status", "cancel", "subscribe"]
MAX_UNREAD_BYTES: Final = 1024 * 1024
"""Answers buffered for a peer past which nothing more is read from it (tasks already wait
for the buffer to drain past the transport's high-water mark; this bounds what answers given
at once, such as Status, may pile up). Not at the high-water mark itself: a client busy
sending while its reader lags would then stall on a daemon that reads nothing."""
FRAMES_PER_TURN: Final = 64
"""Frames read from one connection in one turn of the event loop: past them, reading pauses
until the next turn, so that other connections and tasks get theirs in between (one write of
10,000 Status frames held the loop 135 ms; 4,000 cache-hit Chats in one write started 4,000
tasks at once, and other clients waited 0.66 s for a Status)."""
GATHERED_BYTES: Final = 64 * 1024
"""The frames written in a turn of the event loop after its first (which goes at once: a
lone answer waits for nothing) are gathered and written together at the turn's end, up to
this many bytes (then at once): a write each was a system call each, and relaying a
provider's stream of 9,000 events to the socket spent a fifth of the daemon's CPU in them."""
MAX_HELLO_FRAME: Final = 64 * 1024
"""The largest frame read from a connection before its ``Hello`` (a few dozen bytes) is
answered; ``daemon.max_frame`` after. Any process the socket's mode lets connect may send a
first frame: one of 8 MiB of tiny values cost the event loop about a second to scan and decode
before it was refused as no Hello."""
CLOSE_LINGER_S: Final = 2.0
"""How long a closed connection's unsent answers may wait for the peer to read them."""

Handler = Callable[[Any], Awaitable[None]]


class Listener(Protocol):
    """What a connection needs of the server that accepted it
    (:class:`~quotad.daemon.server.listener.SocketServer`)."""

    @property
    def broker(self) -> Broker: ...

    @property
    def encoder(self) -> FrameEncoder: ...

    @property
    def draining(self) -> bool: ...

    @property
    def request_memory(self) -> RequestMemory: ...

    def connection_started(self, connection: Connection) -> None: ...

    def connection_ended(self, connection: Connection) -> None: ...

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...

    def log_closing(self, peer: PeerCredentials | None, code: str, reason: str) -> None: ...

    def track(self, task: asyncio.Task[None]) -> None: ...

    def status(self) -> StatusReply: ...

    @property
    def snapshots(self) -> SnapshotPace: ...


class InFlight:
    """A request answered by a task: its cancel scope, once the task has entered it, and the
    bytes of its frame it holds (given back when the task ends)."""

    __slots__ = ("cancelled", "held", "scope")

    def __init__(self, held: int) -> None:
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False
        self.held = held

    def cancel(self) -> None:
        """Cancel the request (before its task has started, it starts cancelled)."""
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Connection(asyncio.Protocol):
    """One client connection: frames in, requests answered (many in flight), replies out by id."""

    def __init__(
        self, server: Listener, peer: PeerCredentials | None, limits: ConnectionLimits
    ) -> None:
        self.server = server
        self.broker = server.broker
        self.peer = peer
        self.limits = limits
        self.accepted_at = time.monotonic()
        self.active_at = self.accepted_at
        """When the peer last sent something or a request of it ended."""
        self.app = ""
        self.greeted = False
        self.closing = False
        """No more frames are read nor answers written; what is in flight is cancelled (set
        once the transport is lost too)."""
        self.lost = False
        """The transport is gone: nothing more can be written."""
        self.in_flight: dict[int, InFlight] = {}
        self.permits: set[str] = set()
        """Permits granted on this connection, until settled here (a permit settled through
        another connection, or expired, is dropped from here when the count matters)."""
        self.subscriptions = 0
        self.reading_shut = False
        """The daemon shut the read side to close this idle connection (:meth:`close_idle`):
        no frame can arrive any more, beyond those queued before."""
        self.read_to_end = False
        """Everything queued before the read side was shut has been read."""
        self._decoder = request_decoder(min(limits.max_frame, MAX_HELLO_FRAME))
        self._memory = server.request_memory
        self._unread_held = 0
        """Bytes left in the decoder after a read (a frame arriving, frames waiting for the
        next turn) held in the request memory: given back at the next read, which may make
        them whole frames, each then held as its request's (:meth:`_start`)."""
        self._encode = server.encoder.encode
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._writing_paused = False
        self._reading_paused = False
        """Reading waits for the peer to read its answers (:data:`MAX_UNREAD_BYTES`)."""
        self._turn_pending = False
        """Reading waits for the loop's next turn (:data:`FRAMES_PER_TURN`)."""
        self.frame_begun_at: float | None = None
        """When the frame the decoder holds a part of began to arrive (None: it holds none)."""
        self.stalled_since: float | None = None
        """Since when answers have waited for the peer to read them (None: they do not)."""
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._answers: list[bytes] | None = None
        """The frames gathered since the last write to the transport, in order, written at the
        end of the read that answers them or of the loop's turn (None: none)."""
        self._answered_bytes = 0
        """The bytes of :attr:`_answers`."""
        self._wrote_this_turn = False
        """A frame went to the transport at once in this turn of the event loop: those after
        it wait for the turn's end (:meth:`_write_gathered`)."""
        self._own_caller = Caller(app="", via="socket")
        """The peer as its Hello names it (set then)."""

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connection_started(self)

    def data_received(self, data: bytes) -> None:
        self.active_at = time.monotonic()
        if not self.closing:
            self._process(data)

    def _process(self, data: bytes) -> None:
        """Read the frames received (:meth:`_read_frames`); the answers given at once go to the
        transport together, in one write, at the end (a write each cost a system call each
        once the loop took turns: 80,000 Status frames in one write took 30% more CPU)."""
        if self._answers is None:  # else written in this turn before: they go first
            self._answers = []
        if self._unread_held:  # they may end as whole frames now, held by their requests
            self._memory.give(self._unread_held)
            self._unread_held = 0
        try:
            self._read_frames(data)
        finally:
            if not self.closing and self._decoder.pending:
                self._hold_unread()
            self._write_answers()

    def _read_frames(self, data: bytes) -> None:
        """Decode and answer the whole frames received, :data:`FRAMES_PER_TURN` at most; stop
        early when the connection closes or reading pauses (the rest waits in the decoder). A
        frame that is no valid message but whose id can be read costs only its request (see
        :meth:`_invalid`)."""
        frames = 0
        while True:
            try:
                for message in self._decoder.feed(data):
                    frames += 1
                    if not self._receive(message) or self._waits():
                        return
                    if frames >= FRAMES_PER_TURN:
                        self._end_turn()
                        return
                self._time_partial_frame(frames)
                return
            except MessageValidationError as error:
                frames += 1
                if not self._invalid(error):
                    self.refuse(error.code, str(error))
                    return
                if self.closing or self._waits():
                    return
                if frames >= FRAMES_PER_TURN:
                    self._end_turn()
                    return
                data = b""  # read on: the frames after it wait in the decoder
            except FrameError as error:  # the peer may be sending it still: let it read why
                reason = str(error)
                if isinstance(error, FrameTooLarge) and not self.greeted:
                    reason += " before a Hello (a connection's first frame is its Hello)"
                self.server.log_closing(self.peer, error.code, reason)
                self.write(Error(code=error.code, message=reason))
                self._close_reading_on()
                return
            except Exception:  # a bug: it costs this connection only
                log.exception("reading a frame from pid %s failed", self.peer and self.peer.pid)
                self.refuse("internal", "internal error in quotad reading this connection")
                return

    def _hold_unread(self) -> None:
        """Hold the bytes left in the decoder in the request memory; past its bound, refuse
        the connection (:meth:`_refuse_unread`)."""
        unread = self._decoder.pending
        if self._memory.take(unread):
            self._unread_held = unread
        else:
            self._refuse_unread(unread)

    def _refuse_unread(self, unread: int) -> None:
        """Answer ``overloaded`` (id 0) for the ``unread`` bytes the request memory cannot
        hold, drop them, and close the connection (:meth:`_close_reading_on`); its request's
        id is in the part not come yet, so only the connection can be refused."""
        reason = unread_refusal(self._memory, unread)
        self.server.log_closing(self.peer, "overloaded", reason)
        self.write(overloaded(reason))
        self._close_reading_on()

    def _close_reading_on(self) -> None:
        """Close the connection, its requests cancelled: its writing side now, after what is
        written (the peer reads the end), the rest once the peer is done or
        :data:`CLOSE_LINGER_S` have passed, reading and dropping meanwhile what the peer
        still sends: a client sends a frame whole before it reads, and closed at once, its
        send would fail (EPIPE) before it could read why (the blocking client's did)."""
        self._stop()
        transport = self._transport
        if transport is not None and not self.lost and not transport.is_closing():
            self._write_answers()
            if transport.can_write_eof():
                transport.write_eof()
            transport.resume_reading()  # paused for a turn or for the peer: read on
        self._loop.call_later(CLOSE_LINGER_S, self.close)

    def _time_partial_frame(self, frames: int) -> None:
        """Note when the part of a frame left in the decoder began to arrive: now, if it is
        the first part, or if ``frames`` whole frames were read before it."""
        if not self._decoder.pending:
            self.frame_begun_at = None
        elif frames or self.frame_begun_at is None:
            self.frame_begun_at = time.monotonic()

    def frame_overdue(self, now: float) -> str | None:
        """Why the frame arriving is overdue (begun over ``frame_timeout_s`` ago, and not
        whole while this connection was being read), if it is."""
        begun = self.frame_begun_at
        timeout_s = self.limits.frame_timeout_s
        if begun is None or now - begun <= timeout_s or self._waits() or self.closing:
            return None
        return (
            f"a frame begun {now - begun:.0f} s ago is not whole yet ({self._decoder.pending} "
            f"bytes of it came; a frame must arrive within {timeout_s:g} s)"
        )

    def _waits(self) -> bool:
        """Whether reading is paused (for the peer to read, or for the loop's next turn)."""
        return self._reading_paused or self._turn_pending

    def _end_turn(self) -> None:
        """Read nothing more in this turn of the loop: pause reading, and go on at the next
        turn with the frames waiting in the decoder."""
        transport = self._transport
        if transport is None or self.closing:
            return
        self._turn_pending = True
        if not self._reading_paused:
            transport.pause_reading()
        self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_pending = False
        if self.closing or self._reading_paused or self._transport is None:
            return  # closed; or resume_writing reads on
        self._transport.resume_reading()
        self._process(b"")

    def _invalid(self, error: MessageValidationError) -> bool:
        """Answer a request that is no valid message (a field out of range, a missing one)
        ``bad_request`` by its id, as any refused request; False when it cannot be (no id
        could be read, or it is 0, which an answer uses for the connection; the connection
        has not said Hello; the id is one in flight): then it is about the connection."""
        request_id = error.request_id
        if not request_id or not self.greeted or request_id in self.in_flight:
            return False
        details = {"field": error.field} if error.field else {}
        self.write(Error(id=request_id, code=error.code, message=str(error), details=details))
        return True

    def eof_received(self) -> bool:
        if self.reading_shut:  # our own shutdown: what came before it is answered first
            self.read_to_end = True
            return True
        self.close()  # the client is done: what it asked for is no longer wanted
        return True  # closed by close(), which bounds how long unread answers may linger

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self._stop()
        self._end_drain()
        if self.permits:  # the holder is gone; it may have called the provider
            self.broker.permits.settle_abandoned(self.permits)
            self.permits.clear()
        self.server.connection_ended(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.stalled_since = None
        if self.frame_begun_at is not None:  # not read meanwhile: its time starts again
            self.frame_begun_at = time.monotonic()
        if self._reading_paused and not self.closing and self._transport is not None:
            self._reading_paused = False
            if not self._turn_pending:  # else the next turn reads on
                self._transport.resume_reading()
                self._process(b"")  # what was received before the pause
        self._end_drain()

    def idle_past(self, now: float, timeout_s: float) -> bool:
        """Whether the connection has held nothing for more than ``timeout_s``: no request in
        flight (a subscription is one), no permit held (one settled elsewhere, or past its
        lease, no longer counts: idle from then on), and nothing received unread (a request
        on its way is no idleness). Once its read side is shut (:meth:`close_idle`), whether
        it has read all that came before and holds nothing, however recently it was busy."""
        if self.in_flight or (not self.reading_shut and now - self.active_at <= timeout_s):
            return False
        if self.permits:
            held = self.broker.permits.holds
            self.permits = {permit_id for permit_id in self.permits if held(permit_id)}
            if not self.permits:
                self.active_at = now
            return False
        if self.reading_shut:
            return self.read_to_end
        return not self._unread()

    def _unread(self) -> bool:
        """Whether the socket holds bytes not read yet (or the peer's end)."""
        transport = self._transport
        if transport is None or self.lost:
            return False
        poller = select.poll()
        poller.register(transport.get_extra_info("socket").fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def close_idle(self, reason: str) -> None:
        """Close this connection, found :meth:`idle_past`, answering ``Error(timeout)`` with
        ``reason``, so that no request is lost: first its read side is shut, after which a
        peer's send fails at once (EPIPE, on Linux under the same lock that queues a frame:
        nothing of it was received, and the client sends it again on a new connection). If
        nothing came before that, it closes now; else it answers what came, and the listener
        closes it once it has read it all and holds nothing (:meth:`idle_past`)."""
        transport = self._transport
        if self.reading_shut or transport is None or self.lost:
            self.refuse("timeout", reason)
            return
        self.reading_shut = True
        if not _shut_reading(transport.get_extra_info("socket").fileno()):
            self.refuse("timeout", reason)
        # else the transport reads what came, then the end (eof_received)

    # ------------------------------------------------------------------ closing

    def _stop(self) -> None:
        """Read nothing more (what the decoder holds goes), write nothing more, and cancel
        everything in flight."""
        self.closing = True
        if self._unread_held:
            self._memory.give(self._unread_held)
            self._unread_held = 0
        if self._decoder.pending:
            self._decoder = request_decoder(self.limits.max_frame)
        for record in list(self.in_flight.values()):
            record.cancel()

    def close(self) -> None:
        """Cancel everything in flight and close: what is already written is still sent, for
        :data:`CLOSE_LINGER_S` at most (a peer that does not read must not hold its socket)."""
        self._stop()
        self._write_answers()
        transport = self._transport
        if transport is not None and not self.lost and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                self._loop.call_later(CLOSE_LINGER_S, transport.abort)

    def abort(self, reason: str) -> None:
        """Drop the connection now, unsent answers and all."""
        self.server.log_closing(self.peer, "dropped", reason)
        self._stop()
        if self._transport is not None and not self.lost:
            self._transport.abort()

    def refuse(self, code: str, message: str) -> None:
        """Answer a protocol error (id 0: about the connection) and close the connection."""
        self.server.log_closing(self.peer, code, message)
        self.write(Error(code=code, message=message))
        self.close()

    # ------------------------------------------------------------------ writing

    def write(self, message: Message) -> None:
        """Write one whole frame: the first of a turn of the event loop at once, those after
        it in that turn together at its end (:data:`GATHERED_BYTES`); buffered by the transport
        if the socket is full; nothing once the connection is closing. Past
        :data:`MAX_UNREAD_BYTES` buffered, stop reading the peer until it reads its answers."""
        transport = self._transport
        if transport is not None and not self.closing and not transport.is_closing():
            try:
                frame = self._encode(message)
            except (ValueError, TypeError, OverflowError) as error:  # a bug: still an answer
                frame = self._encode(unencodable(message, error))
                log.error(  # not its traceback: what it chains to may not be encodable either
                    "could not encode a %s of request %s: %s",
                    type(message).__name__,
                    message.id,
                    encodable(str(error)),
                )
            if len(frame) - FRAME_HEADER_SIZE > self.limits.max_frame:
                frame = self._encode(oversized(message, len(frame), self.limits.max_frame))
            if self._answers is None and not self._wrote_this_turn:  # the first: at once
                transport.write(frame)
                self._check_unread(transport)
                self._wrote_this_turn = True
                self._loop.call_soon(self._write_gathered)
                return
            if self._answers is None:  # the others of this turn: at its end, together
                self._answers = []
            self._answers.append(frame)
            self._answered_bytes += len(frame)
            if self._answered_bytes >= GATHERED_BYTES:
                self._write_answers()

    def _write_gathered(self) -> None:
        """The turn of the event loop in which a frame was written has ended: write the
        frames gathered since it."""
        self._wrote_this_turn = False
        self._write_answers()

    def _write_answers(self) -> None:
        """Write the frames gathered (:attr:`_answers`), in one write."""
        answers, self._answers = self._answers, None
        self._answered_bytes = 0
        transport = self._transport
        if answers and transport is not None and not self.lost and not transport.is_closing():
            transport.write(answers[0] if len(answers) == 1 else b"".join(answers))
            self._check_unread(transport)

    def _check_unread(self, transport: asyncio.Transport) -> None:
        """Past :data:`MAX_UNREAD_BYTES` buffered, stop reading the peer until it reads its
        answers."""
        if (
            self._writing_paused
            and not self._reading_paused
            and transport.get_write_buffer_size() > MAX_UNREAD_BYTES
        ):
            self._reading_paused = True
            if not self._turn_pending:  # else paused already
                transport.pause_reading()

    async def send(self, message: Message) -> None:
        """Write one frame; then, while the transport's buffer is over its high-water mark,
        wait for it to drain (a client that reads slowly slows its streams down)."""
        self.write(message)
        if self._writing_paused and not self.lost:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._drain_waiters.remove(waiter)

    def _end_drain(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ dispatch

    def _receive(self, message: Request) -> bool:
        """Answer ``message`` now, or start the task that will; False once the connection is
        closing (nothing more is to be read)."""
        self._answer(message)
        return not self.closing

    def _answer(self, message: Request) -> None:
        if not self.greeted:
            self._greet(message)
            return
        kind = type(message)
        request_id = message.id
        if kind is Cancel:
            record = self.in_flight.get(request_id)
            if record is not None:
                record.cancel()
            return
        if request_id in self.in_flight:
            self.write(
                error_reply(
                    request_id, "bad_request", f"request id {request_id} is already in flight"
                )
            )
            return
        try:
            if kind is Status:
                reply = self.server.status()
                reply.id = request_id
                self.write(reply)
            elif kind is Settle:
                self.write(self.broker.permits.settle(cast(Settle, message), self._caller("")))
                self.permits.discard(cast(Settle, message).permit_id)
            elif kind is Hello:
                self.write(
                    error_reply(
                        request_id, "bad_request", "Hello was already received on this connection"
                    )
                )
            elif self.server.draining:
                self.write(overloaded("quotad is shutting down; retry shortly", request_id))
            elif (refusal := self._over_limits(message)) is not None:
                self.write(overloaded(refusal, request_id))
            elif kind is Acquire:
                self._acquire(cast(Acquire, message))
            else:
                self._start(message, self._handler(message))
        except RequestError as error:
            self.write(error.to_reply(request_id))
        except Exception:
            log.exception("internal error answering %s", kind.__name__)
            self.write(error_reply(request_id, "internal", "internal error in quotad"))

    def _greet(self, message: Request) -> None:
        if not isinstance(message, Hello):
            self.refuse(
                "bad_request", f"the first frame must be Hello, got {type(message).__name__}"
            )
            return
        try:
            check_name("Hello.app", message.app)
        except RequestError as error:
            self.refuse(error.code, error.message)
            return
        self.greeted = True
        self._decoder.max_frame = self.limits.max_frame  # the frames after it
        self.app = message.app
        peer = self.peer
        self._own_caller = Caller(
            app=message.app,
            via="socket",
            pid=peer.pid if peer else None,
            uid=peer.uid if peer else None,
            gid=peer.gid if peer else None,
        )
        self.write(
            Welcome(
                id=message.id,
                daemon_version=DAEMON_VERSION,
                features=list(FEATURES),
                max_frame=self.limits.max_frame,
            )
        )

    def _over_limits(self, message: Request) -> str | None:
        """Why this connection may not start ``message`` now, if it may not."""
        limit = self.limits.max_in_flight
        if len(self.in_flight) + len(self.permits) >= limit:
            held = self.broker.permits.holds
            self.permits = {permit_id for permit_id in self.permits if held(permit_id)}
            if len(self.in_flight) + len(self.permits) >= limit:
                return (
                    f"{len(self.in_flight)} requests in flight and {len(self.permits)} permits "
                    f"held on this connection (daemon.max_in_flight_per_connection is {limit})"
                )
        if type(message) is Subscribe and self.subscriptions >= self.limits.max_subscriptions:
            return f"{self.subscriptions} subscriptions are open on this connection already"
        return None

    def _acquire(self, request: Acquire) -> None:
        """A permit now if the gates admit it at once, else a task that waits for one."""
        permit = self.broker.permits.acquire_now(request, self._caller(request.app))
        if permit is None:
            self._start(request, self._answer_acquire)
            return
        self.permits.add(permit.permit_id)
        self.write(permit)

    def _handler(self, message: Request) -> Handler:
        match message:
            case Chat(stream=True):
                return self._stream_chat
            case Chat():
                return self._answer_chat
            case Embed():
                return self._answer_embed
            case Subscribe():
                return self._send_snapshots
            case Spend():
                return self._answer_spend
            case Admin():
                return self._answer_admin
        raise AssertionError(f"no handler for {type(message).__name__}")

    def _start(self, message: Request, handler: Handler) -> None:
        """Run ``handler(message)`` as a task, registered under the request's id now (so a
        second request with the same id, even in the same read, is refused), holding its
        frame's bytes in the request memory until it ends; past the bound, it is answered
        ``overloaded`` instead."""
        size = self._decoder.frame_size
        if not self._memory.take(size):
            self.write(overloaded(self._memory.refusal(), message.id))
            return
        record = self.in_flight[message.id] = InFlight(size)
        subscription = type(message) is Subscribe
        if subscription:  # not counted in flight: it never ends by itself
            self.subscriptions += 1
        else:
            self.server.request_started()
        task = self._loop.create_task(self._run(message, handler, record, subscription))
        self.server.track(task)

    async def _run(
        self, message: Request, handler: Handler, record: InFlight, subscription: bool
    ) -> None:
        """Run one request under its own cancel scope; every outcome answers the request."""
        request_id = message.id
        try:
            with anyio.CancelScope() as scope:
                record.scope = scope
                if record.cancelled:
                    scope.cancel()
                try:
                    await handler(message)
                except RequestError as error:
                    await self.send(error.to_reply(request_id))
                except Exception:
                    log.exception("internal error answering %s", type(message).__name__)
                    await self.send(error_reply(request_id, "internal", "internal error in quotad"))
            if scope.cancelled_caught:
                self.write(error_reply(request_id, "cancelled", "the request was cancelled"))
        finally:
            self.active_at = time.monotonic()
            self._memory.give(record.held)
            if self.in_flight.get(request_id) is record:
                del self.in_flight[request_id]
            if subscription:
                self.subscriptions -= 1
            else:
                self.server.request_finished()

    def _caller(self, app: str) -> Caller:
        """Who asks: the peer, as the app its request names (else its Hello's)."""
        if not app or app == self.app:
            return self._own_caller
        peer = self.peer
        return Caller(
            app=app,
            via="socket",
            pid=peer.pid if peer else None,
            uid=peer.uid if peer else None,
            gid=peer.gid if peer else None,
        )

    # ------------------------------------------------------------------ handlers (tasks)

    async def _answer_chat(self, request: Chat) -> None:
        check_json_values(request)
        await self.send(await self.broker.chat(request, self._caller(request.app)))

    async def _stream_chat(self, request: Chat) -> None:
        check_json_values(request)
        chunks: AsyncIterator[ChatChunk | ChatEnd] = self.broker.chat_stream(
            request, self._caller(request.app)
        )
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                await self.send(chunk)

    async def _answer_embed(self, request: Embed) -> None:
        check_json_values(request)
        await self.send(await self.broker.embed(request, self._caller(request.app)))

    async def _answer_acquire(self, request: Acquire) -> None:
        permit: Permit = await self.broker.permits.acquire(request, self._caller(request.app))
        if self.lost:  # granted as the holder left: it will never settle it
            self.broker.permits.settle_abandoned([permit.permit_id])
            return
        self.permits.add(permit.permit_id)
        await self.send(permit)

    async def _answer_spend(self, request: Spend) -> None:
        await self.send(await self.broker.reports.spend(request))

    async def _answer_admin(self, request: Admin) -> None:
        await self.send(await self.broker.admin.run(request, self._caller("")))

    async def _send_snapshots(self, request: Subscribe) -> None:
        await send_snapshots(request, self.broker.tail, self.server.snapshots, self.send)


def _shut_reading(descriptor: int) -> bool:
    """Shut the read side of the socket ``descriptor`` (the peer can send nothing more:
    its sends fail with EPIPE from now on); whether bytes sent before wait unread."""
    sock = socket.socket(fileno=descriptor)  # the transport's own may not offer shutdown
    try:
        sock.shutdown(socket.SHUT_RD)
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # the peer is gone: nothing of it can be answered
        return False
    finally:
        sock.detach()
