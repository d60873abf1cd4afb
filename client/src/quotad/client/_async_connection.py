"""The async client's socket I/O, on anyio (asyncio and trio): one handshaken connection whose
reader task routes replies by id, and the few primitives the client API (``_async.py``,
``_async_stream.py``) needs from its side of the async/blocking divide. ``_connection.py`` is the
blocking twin, written by hand as this one is; each offers the same names (less the ``Async``
prefix), so that the API written once in ``_async.py`` and ``_async_stream.py`` becomes the
blocking one by token replacement (``scripts/unasync.py``). What does not differ between the
two (the handshake's frames, what a connection holds) is in ``_common.py``.

A connection's reader task, started in the client's task group (:class:`AsyncReaderTasks`),
decodes frames and puts each reply in the inbox of the request waiting for it; many tasks may
have requests in flight on the one connection at once. The connection works on its
non-blocking socket directly, waiting with anyio (``wait_readable``, ``wait_writable``) only
when the socket is not ready: one ``send`` per frame, ``recv_into`` one reused buffer, every
complete frame in it decoded at once, and no checkpoint or cancel scope on the common path. A
frame the socket cannot take whole is finished under a lock, until the request's deadline (or
``SEND_STALL_S``); a writer stopped by either, or cancelled, with half its frame sent, loses
the connection (no other frame can follow half of one), never just that request.
"""

from __future__ import annotations

import contextvars
import socket
import threading
from collections import deque
from typing import Final

import anyio
import anyio.abc
from anyio import Lock as Lock
from anyio import current_time as current_time
from anyio import sleep as sleep

from quotad.client._common import (
    CUT_SHORT,
    RECEIVE_SIZE,
    SEND_STALL_S,
    ConnectionBase,
    FrameNotSent,
    Handshake,
    SendTimedOut,
    connect_failure,
)
from quotad.client.exceptions import ConnectionLostError
from quotad.protocol.framing import FrameError
from quotad.protocol.messages import Message, Reply

__all__ = [
    "AsyncConnection",
    "AsyncInbox",
    "AsyncReaderTasks",
    "Lock",
    "current_time",
    "handshake",
    "is_cancellation",
    "shielded",
    "sleep",
]

# How long closing waits for the reader task to see the end of its socket.
CLOSE_WAIT_S: Final = 5.0


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` ends a block because it was cancelled (rather than because it failed)."""
    return isinstance(error, (anyio.get_cancelled_exc_class(), KeyboardInterrupt, GeneratorExit))


def shielded(seconds: float) -> anyio.CancelScope:
    """A scope shielded from cancellation for at most ``seconds``: for what a cancelled caller
    still owes the daemon (settling its permit)."""
    return anyio.move_on_after(seconds, shield=True)


class AsyncInbox:
    """The replies that arrived for one request, and a way to wait for the next."""

    __slots__ = ("event", "lost", "replies")

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.event: anyio.Event | None = None
        self.lost: str | None = None

    def __len__(self) -> int:
        return len(self.replies)

    def append(self, reply: Reply) -> None:
        self.replies.append(reply)
        if self.event is not None:
            self.event.set()

    def fail(self, message: str) -> None:
        self.lost = message
        if self.event is not None:
            self.event.set()

    async def get(self) -> Reply:
        replies = self.replies
        while not replies:
            if self.lost is not None:
                raise ConnectionLostError(self.lost)
            event = self.event = anyio.Event()
            await event.wait()
            self.event = None
        return replies.popleft()


class AsyncConnection(ConnectionBase[AsyncInbox]):
    """One handshaken socket: writes requests, routes replies to per-id inboxes.

    It works on the non-blocking socket itself, waiting with anyio only when the socket is not
    ready: a frame goes in one ``send`` (the kernel nearly always takes it whole; the rest, if
    not, is written under the send lock), and the reader receives into one reused buffer and
    decodes every complete frame in it.
    """

    __slots__ = ("_loop_thread", "_send_lock", "closed")

    def __init__(self, sock: socket.socket, handshake: Handshake) -> None:
        super().__init__(sock, handshake)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.closed = anyio.Event()
        self._loop_thread = threading.get_ident()

    async def send(self, request: Message, deadline: float | None) -> AsyncInbox:
        """Give ``request`` the next id and send it; its replies will arrive in the inbox.

        Raises :class:`BadFrameError` when the frame is over the daemon's ``max_frame``
        (nothing sent; the connection goes on), :class:`FrameNotSent` when the frame did not
        get through, and :class:`SendTimedOut` when ``deadline`` passed before it did.
        """
        if self.lost is not None:
            raise FrameNotSent(self.lost)
        request_id = request.id = self._next_id
        self._next_id = request_id + 1
        frame = self._frame(request)
        inbox = self._inboxes[request_id] = AsyncInbox()
        try:
            await self._write(frame, deadline)
        except BaseException:
            self._inboxes.pop(request_id, None)
            raise
        return inbox

    async def _write(self, frame: bytes, deadline: float | None) -> None:
        """Write one whole frame: at once if the socket takes it (and no other frame is half
        written), else the rest under the send lock, until ``deadline`` (:class:`SendTimedOut`)
        or ``SEND_STALL_S`` (the connection is lost: :class:`FrameNotSent`). A frame cut short
        (by either, or by cancellation) loses the connection."""
        sent = 0
        taken = b""
        owned = not self._send_lock.locked()
        if owned:
            if self._unsent:
                taken = self._take_unsent()
                frame = taken + frame
            sent = self._send_now(frame)
            if sent == len(frame):
                return
        stall_at = anyio.current_time() + SEND_STALL_S
        limit = stall_at if deadline is None else min(deadline, stall_at)
        rest = memoryview(frame)[sent:]
        try:
            with anyio.CancelScope(deadline=limit) as scope:
                # the lock is taken without waiting when free: nothing can come between the
                # part sent above and the rest
                async with self._send_lock:
                    if not owned and self._unsent:
                        taken = self._take_unsent()
                        frame = taken + frame
                        rest = memoryview(frame)
                    try:
                        while rest:
                            sent = self._send_now(rest)
                            if not sent:
                                try:
                                    await anyio.wait_writable(self._sock)
                                except anyio.ClosedResourceError:  # the reader closed it
                                    raise FrameNotSent(self.lost or "closed") from None
                            rest = rest[sent:]
                        if self._unsent:  # queued while this frame was being written
                            self._send_unsent_nowait()
                    finally:
                        if 0 < len(rest) < len(frame):
                            self._lose(CUT_SHORT)
        finally:
            if len(rest) == len(frame):  # nothing of it went: what waited stays in line
                self._put_back(taken)
        if not scope.cancelled_caught:
            return
        if limit != stall_at:
            raise SendTimedOut(cut=len(rest) < len(frame))
        self._lose(f"the daemon took no frame for {SEND_STALL_S:g} s")
        raise FrameNotSent(self.lost or "")

    def _send_now(self, data: bytes | memoryview) -> int:
        """What the socket takes of ``data`` without waiting (0 when it is full)."""
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as error:
            self._lose(f"sending failed: {connect_failure(error, 0)}")
            raise FrameNotSent(self.lost or "") from error

    def _send_unsent_now(self) -> None:
        # only in the loop's thread (a finalizer may run in another) and between frames
        if threading.get_ident() == self._loop_thread and not self._send_lock.locked():
            self._send_unsent_nowait()

    async def wait(self, inbox: AsyncInbox, deadline: float | None) -> Reply | None:
        """The next reply in ``inbox``, or ``None`` once ``deadline`` (``current_time()``)
        passes, even with replies in it."""
        replies = inbox.replies
        if replies:
            if deadline is not None and anyio.current_time() >= deadline:
                return None  # a reply that waited past the deadline (a stream read slowly)
            return replies.popleft()
        if deadline is None:
            return await inbox.get()
        with anyio.CancelScope(deadline=deadline):
            return await inbox.get()
        return None

    async def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id``; if it has not finished, ask the daemon to cancel
        it, without a wait that a cancellation could cut short (:meth:`abandon_soon`)."""
        self.abandon_soon(request_id)

    async def read_replies(self) -> None:
        """The reader task: route every reply until the connection ends (the daemon closes
        it, or :meth:`_lose` shuts it down)."""
        reason = "the daemon closed the connection"
        sock = self._sock
        try:
            receive_into = sock.recv_into
            buffer = self._buffer
            view = self._view
            feed = self._decoder.feed
            route = self._route
            while True:
                try:
                    size = receive_into(buffer)
                except BlockingIOError:
                    await anyio.wait_readable(sock)
                    continue
                if not size:
                    break
                for reply in feed(view[:size]):
                    route(reply)
        except anyio.get_cancelled_exc_class():
            reason = "the client was cancelled"
            raise
        except OSError as error:
            reason = connect_failure(error, 0)
        except FrameError as error:
            reason = f"unreadable reply: {error}"
        finally:
            self._lose(reason)
            anyio.notify_closing(sock)  # wakes a writer waiting for room, if any
            sock.close()
            self.closed.set()

    def _lose(self, reason: str) -> None:
        """Mark the connection lost, fail every waiter, and shut the socket down so that the
        reader sees its end (rather than being cancelled mid-wait, which races with a
        socket turning readable on some event loops)."""
        if self.lost is not None:
            return
        self.lost = reason
        message = self._lost_in_flight()
        for inbox in self._inboxes.values():
            inbox.fail(message)
        self._inboxes.clear()
        self._shut_down()

    async def aclose(self, reason: str) -> None:
        """Close the connection; waiters raise :class:`ConnectionLostError` with ``reason``.
        Returns once the reader task has closed the socket (or after ``CLOSE_WAIT_S``)."""
        self._lose(reason)
        with anyio.move_on_after(CLOSE_WAIT_S, shield=True):
            await self.closed.wait()


async def handshake(path: str, app: str, connect_timeout: float) -> AsyncConnection:
    """Connect to ``path``, send ``Hello`` and read the ``Welcome``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with anyio.fail_after(connect_timeout):
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # the listener's backlog is full
                    await anyio.wait_writable(sock)
            shake = Handshake(path, app)
            rest = memoryview(shake.hello_frame)
            while rest:
                try:
                    rest = rest[sock.send(rest) :]
                except BlockingIOError:
                    await anyio.wait_writable(sock)
            while True:
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    await anyio.wait_readable(sock)
                    continue
                if shake.receive(data):
                    break
    except BaseException:
        sock.close()
        raise
    return AsyncConnection(sock, shake)


_OPEN_IN_THIS_TASK: Final[contextvars.ContextVar[tuple[anyio.abc.TaskGroup, ...]]] = (
    contextvars.ContextVar("quotad_clients_open_in_this_task", default=())
)
"""The task groups of the clients the current task has open, in the order it opened them."""


class AsyncReaderTasks:
    """The task group in which an open :class:`AsyncClient` runs its connections' reader
    tasks: entered by the task that opens the client (``async with``) and left by the one
    that closes it, as structured concurrency wants. So an async client must be opened
    before use, and clients opened by one task closed in the reverse order (nested blocks):
    closing one out of order raises a ``RuntimeError`` saying so, and leaves it open."""

    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None

    async def open(self) -> None:
        """Enter the task group."""
        if self._group is not None:
            raise RuntimeError("this AsyncClient is already open")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        _OPEN_IN_THIS_TASK.set((*_OPEN_IN_THIS_TASK.get(), group))

    def check_open(self) -> anyio.abc.TaskGroup:
        """The task group; ``RuntimeError`` unless open."""
        if self._group is None:
            raise RuntimeError("open the client first: `async with AsyncClient(...) as qd:`")
        return self._group

    def check_closing(self) -> None:
        """``RuntimeError`` if another client opened after this one by the same task is still
        open: task groups are left in the reverse order of entering them."""
        opened = _OPEN_IN_THIS_TASK.get()
        group = self._group
        if group is not None and group in opened and opened[-1] is not group:
            raise RuntimeError(
                "AsyncClients opened by one task must be closed in the reverse order (nest "
                "their `async with` blocks): close the one opened after this one first"
            )

    def start(self, connection: AsyncConnection) -> None:
        """Start ``connection``'s reader task."""
        self.check_open().start_soon(connection.read_replies)

    async def aclose(self) -> None:
        """Stop the reader tasks still running and leave the task group."""
        self.check_closing()
        group, self._group = self._group, None
        if group is not None:
            opened = _OPEN_IN_THIS_TASK.get()
            if group in opened:
                _OPEN_IN_THIS_TASK.set(tuple(item for item in opened if item is not group))
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
