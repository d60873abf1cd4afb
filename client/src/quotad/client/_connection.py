"""The blocking client's socket I/O, over a plain Unix ``socket`` with no event loop: one
handshaken connection read by whichever waiting thread holds its read turn, and the few
primitives the generated client API (``_sync.py``, ``_sync_stream.py``) needs from its side of
the async/blocking divide. The async twin is ``_async_connection.py``; each offers the same
names (less the ``Async`` prefix), so that the API written once in ``_async.py`` and
``_async_stream.py`` becomes this side's by token replacement (``scripts/unasync.py``). What
does not differ between the two (the handshake's frames, what a connection holds) is in
``_common.py``.

Each request gets the next id of the connection and an inbox; whichever waiting thread holds
the read turn receives frames and routes every reply to the inbox of its id
(leader/followers), so threads sharing a client never see each other's replies and a stream
can be read while other calls are made. Replies for ids nobody waits for any more (a closed
stream, a timed-out call) are dropped. The hot path is one ``send`` per frame, one
``recv_into`` a reused buffer per read, every complete frame in it decoded at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import threading
import time
import weakref
from collections import deque
from time import sleep as sleep
from typing import Final, Protocol

from quotad.client._common import (
    CUT_SHORT,
    LONGEST_WAIT_S,
    RECEIVE_SIZE,
    SEND_NOW_FLAGS,
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
    "Connection",
    "Inbox",
    "Lock",
    "ReaderTasks",
    "current_time",
    "handshake",
    "is_cancellation",
    "shielded",
    "sleep",
]

Inbox = deque[Reply]


current_time: Final = time.monotonic


def _wait_s(deadline: float) -> float:
    """How long one wait may last to end by ``deadline`` (0 once it passed), at most
    ``LONGEST_WAIT_S``."""
    return min(max(deadline - time.monotonic(), 0.0), LONGEST_WAIT_S)


class _RenewedAtFork(Protocol):
    def _renew_after_fork(self) -> None: ...


_RENEWED_AT_FORK: Final[weakref.WeakSet[_RenewedAtFork]] = weakref.WeakSet()
"""The connections and locks of this process that a forked child must renew before use."""


def _renew_all_after_fork() -> None:
    for item in list(_RENEWED_AT_FORK):
        item._renew_after_fork()


os.register_at_fork(after_in_child=_renew_all_after_fork)


class Lock:
    """A thread lock (``with lock:``) that a forked child gets anew, free: the thread that may
    have held it at the fork does not exist in the child, which would wait for it forever."""

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _RENEWED_AT_FORK.add(self)

    def _renew_after_fork(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` ends a block because it was cancelled (rather than because it failed)."""
    return isinstance(error, KeyboardInterrupt | GeneratorExit)


def shielded(seconds: float) -> contextlib.nullcontext[None]:
    """Nothing cancels a blocking call from outside, so there is nothing to shield against."""
    return contextlib.nullcontext()


class Connection(ConnectionBase[Inbox]):
    """One handshaken socket: sends requests and routes replies to per-id inboxes."""

    __slots__ = ("__weakref__", "_poller", "_reading", "_send_lock", "_state")

    def __init__(self, sock: socket.socket, handshake: Handshake) -> None:
        super().__init__(sock, handshake)
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._send_lock = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._reading = False
        _RENEWED_AT_FORK.add(self)

    def _renew_after_fork(self) -> None:
        """In a forked child: drop this connection, which the parent still uses. Its socket
        is not shut down (that would end the parent's too), only the child's descriptor
        closed; its state is made anew, as no parent thread reads it or holds its locks here."""
        self._send_lock = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._reading = False
        self._inboxes.clear()
        self._unsent.clear()
        self.lost = "inherited from the parent process by os.fork()"
        self._sock.close()

    def send(self, request: Message, deadline: float | None) -> Inbox:
        """Give ``request`` the next id and send it; its replies will arrive in the inbox.

        Raises :class:`BadFrameError` when the frame is over the daemon's ``max_frame``
        (nothing sent; the connection goes on), :class:`FrameNotSent` when the frame did not
        get through, and :class:`SendTimedOut` when ``deadline`` passed before it did.
        """
        send_lock = self._send_lock
        if deadline is None:
            send_lock.acquire()
        elif not (  # free: no clock read; else wait, bounded as the holder's send is
            send_lock.acquire(False) or send_lock.acquire(timeout=_wait_s(deadline))
        ):
            raise SendTimedOut(cut=False)
        try:
            if self.lost is not None:
                raise FrameNotSent(self.lost)
            request_id = request.id = self._next_id
            self._next_id = request_id + 1
            frame = self._frame(request)
            inbox: Inbox = deque()
            with self._state:
                self._inboxes[request_id] = inbox
            self._send_frame(frame, deadline, request_id)
        finally:
            send_lock.release()
        return inbox

    def _send_frame(
        self, frame: bytes, deadline: float | None, request_id: int | None = None
    ) -> None:
        """Send one whole frame (the send lock is held): what the socket takes at once, the
        rest as it makes room, until ``deadline`` (:class:`SendTimedOut`) or ``SEND_STALL_S``
        (:class:`FrameNotSent`). If it does not get through, ``request_id`` (if given) is
        forgotten, and the connection lost unless the deadline passed before any of it went;
        an ``OSError`` raises :class:`FrameNotSent`, an interruption goes on. The frames
        waiting in ``_unsent`` go first."""
        taken = self._take_unsent() if self._unsent else b""
        frame = taken + frame if taken else frame
        try:
            try:
                sent = self._sock.send(frame, SEND_NOW_FLAGS)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                self._send_rest(memoryview(frame)[sent:], len(frame), deadline)
            if self._unsent:  # queued while this frame was being sent
                self._send_unsent_nowait()
        except BaseException as error:
            with self._state:
                if request_id is not None:
                    self._inboxes.pop(request_id, None)
                if isinstance(error, FrameNotSent):
                    self._lose(str(error))
                elif isinstance(error, OSError):
                    self._lose(f"sending failed: {connect_failure(error, 0)}")
                elif not isinstance(error, SendTimedOut) or error.cut:
                    self._lose(CUT_SHORT)
                else:  # nothing of it went: the connection stays, and so does what waited
                    self._put_back(taken)
                self._state.notify_all()
            if isinstance(error, OSError):
                raise FrameNotSent(str(error)) from error
            raise

    def _send_rest(self, rest: memoryview, size: int, deadline: float | None) -> None:
        """Send ``rest`` of a frame of ``size`` bytes as the socket makes room, until
        ``deadline`` or ``SEND_STALL_S`` from now."""
        stall_at = time.monotonic() + SEND_STALL_S
        limit = stall_at if deadline is None else min(deadline, stall_at)
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        while rest:
            left = limit - time.monotonic()
            if left <= 0:
                if limit != stall_at:
                    raise SendTimedOut(cut=len(rest) < size)
                raise FrameNotSent(f"the daemon took no frame for {SEND_STALL_S:g} s")
            if not poller.poll(math.ceil(min(left, LONGEST_WAIT_S) * 1000)):
                continue
            with contextlib.suppress(BlockingIOError):
                rest = rest[self._sock.send(rest, SEND_NOW_FLAGS) :]

    def wait(self, inbox: Inbox, deadline: float | None) -> Reply | None:
        """The next reply in ``inbox``, or ``None`` once ``deadline`` (``current_time()``)
        passes, even with replies in it."""
        state = self._state
        with state:
            if inbox and deadline is not None and time.monotonic() >= deadline:
                return None  # a reply that waited past the deadline (a stream read slowly)
            while not inbox:
                if self.lost is not None:
                    raise ConnectionLostError(self._lost_in_flight())
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return None
                if self._reading:
                    state.wait(None if timeout is None else min(timeout, LONGEST_WAIT_S))
                    continue
                self._reading = True
                received: list[Reply] = []
                failure: str | None = None
                state.release()
                try:
                    failure = self._receive(received, timeout)
                finally:
                    state.acquire()
                    self._reading = False
                    for reply in received:
                        self._route(reply)
                    if failure is not None:
                        self._lose(failure)
                    state.notify_all()
            return inbox.popleft()

    def _receive(self, received: list[Reply], timeout: float | None) -> str | None:
        """Read once (waiting at most ``timeout``) into ``received``; why the connection
        is lost, if it is."""
        if timeout is not None and not self._poller.poll(
            math.ceil(min(timeout, LONGEST_WAIT_S) * 1000)
        ):
            return None
        try:
            size = self._sock.recv_into(self._buffer)
        except OSError as error:
            return connect_failure(error, 0)
        if size == 0:
            return "the daemon closed the connection"
        try:
            received.extend(self._decoder.feed(self._view[:size]))
        except FrameError as error:
            return f"unreadable reply: {error}"
        return None

    def _send_unsent_now(self) -> None:
        if self._send_lock.acquire(blocking=False):  # else its holder sends them first
            try:
                if self._unsent:
                    self._send_unsent_nowait()
            finally:
                self._send_lock.release()

    def _lose(self, reason: str) -> None:
        """Mark the connection lost (the state lock is held) and wake whoever reads it."""
        if self.lost is None:
            self.lost = reason
            self._shut_down()

    def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id``; if it has not finished, ask the daemon to cancel
        it, without waiting for the socket (:meth:`abandon_soon`)."""
        self.abandon_soon(request_id)

    def close(self, reason: str) -> None:
        """Close the socket; waiters raise :class:`ConnectionLostError` with ``reason``."""
        with self._state:
            self._lose(reason)
            self._state.notify_all()
        self._sock.close()


def handshake(path: str, app: str, connect_timeout: float) -> Connection:
    """Connect to ``path``, send ``Hello`` and read the ``Welcome``, all within
    ``connect_timeout`` (not each step: a daemon trickling its ``Welcome`` byte by byte
    cannot stretch it); past it, ``TimeoutError``."""
    deadline = time.monotonic() + connect_timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_time_left(deadline))
        sock.connect(path)
        shake = Handshake(path, app)
        sock.settimeout(_time_left(deadline))
        sock.sendall(shake.hello_frame)
        while True:
            sock.settimeout(_time_left(deadline))
            try:
                data = sock.recv(RECEIVE_SIZE)
            except TimeoutError:
                if time.monotonic() < deadline:  # one wait of LONGEST_WAIT_S ended
                    continue
                raise
            if shake.receive(data):
                break
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return Connection(sock, shake)


def _time_left(deadline: float) -> float:
    """How long the next step of the handshake may wait; ``TimeoutError`` if no time is left."""
    wait_s = _wait_s(deadline)
    if wait_s <= 0:
        raise TimeoutError("timed out")
    return wait_s


class ReaderTasks:
    """The blocking client runs no reader task: whichever thread waits on a connection reads
    it (:meth:`Connection.wait`). So there is nothing to open, start or close, and a
    :class:`Client` may be used without ``with``; these no-ops give the generated client the
    shape of the async one."""

    __slots__ = ()

    def open(self) -> None:
        """Nothing to open."""

    def check_open(self) -> None:
        """Always open."""

    def check_closing(self) -> None:
        """Closes in any order."""

    def start(self, connection: Connection) -> None:
        """Nothing to start: waiting threads read."""

    def close(self) -> None:
        """Nothing to close."""
