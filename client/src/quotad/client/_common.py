"""What the blocking and the async client share: building requests, checking replies, the
state of a streamed chat, naming the connect failures, and what a connection is on either side
of the async/blocking divide (:class:`Handshake`, :class:`ConnectionBase`), less its I/O.

A request whose frame is over the daemon's ``max_frame`` (its ``Welcome`` says it) is refused
here with :class:`BadFrameError`, unsent: the daemon would answer it ``bad_frame`` and close
the connection, failing every other request in flight on it.

Requests are built with one ``msgspec.convert`` each, so a bad argument raises
:class:`BadRequestError` here, naming the field (``messages[0].role: invalid enum value``),
instead of reaching the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import socket
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec

from quotad.client.exceptions import (
    BadFrameError,
    BadRequestError,
    InternalError,
    error_from_reply,
)
from quotad.protocol.figures import size
from quotad.protocol.framing import (
    HEADER_SIZE,
    MAX_FRAME_CEILING,
    FrameDecoder,
    FrameEncoder,
    describe,
    field_named,
    reply_decoder,
)
from quotad.protocol.messages import (
    CONTINUING_REPLIES,
    Cancel,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    Error,
    Hello,
    Message,
    Reply,
    Welcome,
)

ReplyT = TypeVar("ReplyT")
RequestT = TypeVar("RequestT")

# Keyword arguments of chat() that have a Chat field of their own; the rest go to Chat.extra.
SAMPLING_FIELDS: Final = frozenset({"top_p", "stop", "seed", "tool_choice", "response_format"})
RECEIVE_SIZE: Final = 65536
# A frame the daemon has not taken in this long (from when it began to wait for room) means
# the connection is stuck: it is dropped.
SEND_STALL_S: Final = 30.0
# The longest one wait (a poll, a lock, a condition) lasts: a longer one waits again, as many
# times as its deadline allows (the OS takes no wait much longer than 24 days).
LONGEST_WAIT_S: Final = 3600.0
# The most replies one request may have waiting unread (a stream or a subscription whose reader
# fell behind, or left it without closing it): past it the request is cancelled, and its reader
# gets an ``overloaded`` error after the replies kept.
MAX_UNREAD_REPLIES: Final = 16384
# A send that takes what the socket has room for, without waiting (the socket may block).
SEND_NOW_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0) | socket.MSG_DONTWAIT
# How many times a request is sent in all, on a new connection each time, while its frame does
# not get through (FrameNotSent: the daemon received none of it). Not once only: a connection
# may close for idleness between the handshake and the send of a caller that was descheduled.
SEND_ATTEMPTS: Final = 3
# Connect failures worth retrying while a restarted daemon comes back.
RETRYABLE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})


@functools.cache
def client_name() -> str:
    """``quotad-client/<version>``, as sent in ``Hello.client``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"quotad-client/{version('quotad-client')}"
    except PackageNotFoundError:
        return "quotad-client"


def checked_seconds(client: str, name: str, value: object, *, zero_ok: bool = False) -> float:
    """``value`` of ``client``'s argument ``name``, as seconds: a number above 0 (or 0, if
    ``zero_ok``), ``inf`` for no limit. Else a ``ValueError`` (``TypeError``) naming both."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{client}({name}={value!r}): {name} must be a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an integer past a float's range: as good as inf
        seconds = math.inf if value > 0 else -math.inf
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise ValueError(
            f"{client}({name}={value!r}): {name} must be {least} seconds (inf: no limit)"
        )
    return seconds


def checked_timeout(client: str, value: object) -> float | None:
    """``client``'s ``timeout`` argument: None (or ``inf``) for none, else seconds above 0."""
    if value is None:
        return None
    seconds = checked_seconds(client, "timeout", value)
    return None if math.isinf(seconds) else seconds


def default_app() -> str:
    """``$QUOTAD_APP``, else the name of the running program. Bytes of either that are not
    UTF-8 (Python holds them as lone surrogates, which no frame can carry) become U+FFFD."""
    name = os.environ.get("QUOTAD_APP") or os.path.basename(sys.argv[0] if sys.argv else "")
    name = os.fsencode(name).decode("utf-8", "replace")
    return (name or "python")[:256]


def hello(app: str) -> Hello:
    """The first frame of every connection."""
    return Hello(app=app[:256], client=client_name())


def _convert(fields: dict[str, Any], kind: type[RequestT]) -> RequestT:
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as error:
        described = describe(error)
        field = field_named(described)
        raise BadRequestError(described, details={"field": field} if field else None) from None


def chat_request(
    model: str,
    messages: Iterable[Mapping[str, Any] | ChatMessage],
    *,
    stream: bool,
    max_tokens: int | None,
    temperature: float | None,
    tools: list[dict[str, Any]] | None,
    priority: str | None,
    max_wait_s: float | None,
    cache: str,
    user: str,
    tags: list[str] | None,
    extra: dict[str, Any],
) -> Chat:
    """A validated :class:`Chat`; known sampling params in ``extra`` get their own fields."""
    fields: dict[str, Any] = {
        "model": model,
        "messages": messages if isinstance(messages, list) else list(messages),
        "stream": stream,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "tools": tools,
        "priority": priority,
        "max_wait_s": max_wait_s,
        "cache": cache,
        "user": user,
        "tags": tags or [],
    }
    passthrough: dict[str, Any] = {}
    for key, value in extra.items():
        if key in SAMPLING_FIELDS:
            fields[key] = [value] if key == "stop" and isinstance(value, str) else value
        else:
            passthrough[key] = value
    fields["extra"] = passthrough
    return _convert(fields, Chat)


def build(kind: type[RequestT], **fields: Any) -> RequestT:
    """A validated ``kind`` request from its fields (each named as the message names it)."""
    return _convert(fields, kind)


def cancel_frame(request_id: int) -> bytes:
    """The frame of ``Cancel(id=request_id)``, made without a connection's encoder (whose
    buffer only the holder of its send lock may use), so that a finalizer can make one."""
    body = msgspec.msgpack.encode(Cancel(id=request_id))
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def frame_over_max_frame(request: Message, payload_size: int, max_frame: int) -> BadFrameError:
    """The error of a ``request`` whose frame holds ``payload_size`` bytes, over the daemon's
    ``max_frame``: raised before anything of it is sent."""
    return BadFrameError(
        f"the {type(request).__name__} is {payload_size:,} bytes ({size(payload_size)}) as a "
        f"frame, over the daemon's max_frame of {max_frame:,} bytes ({size(max_frame)}, "
        "daemon.max_frame): nothing was sent (send less, or raise daemon.max_frame)",
        details={"frame_bytes": payload_size, "max_frame": max_frame},
    )


def expect(reply: Reply, kind: type[ReplyT], source: str = "the daemon") -> ReplyT:
    """``reply`` if it is a ``kind``; the mapped exception if it is an ``Error``; else an
    :class:`InternalError` naming ``source`` (the socket, during the handshake)."""
    if type(reply) is kind:
        return reply
    if type(reply) is Error:
        raise error_from_reply(reply)
    raise InternalError(f"{source} answered {type(reply).__name__} where {kind.__name__} was due")


def connect_failure(error: BaseException, connect_timeout: float) -> str:
    """Why connecting to one socket failed, in words for :class:`DaemonUnavailableError`."""
    if isinstance(error, FileNotFoundError):
        return "no such socket"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing is listening"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, TimeoutError):
        return f"no answer within {connect_timeout:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def is_retryable(error: BaseException) -> bool:
    """Whether a connect failure looks like a daemon that is (re)starting."""
    return isinstance(error, OSError) and error.errno in RETRYABLE_ERRNOS


class StreamedChat:
    """What a streamed chat has produced so far: its text, and its ``ChatEnd`` once ended.
    (No slots: the clients' streams also derive from their reply-reading base, which has
    them.)"""

    finished: bool

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.end: ChatEnd | None = None

    @property
    def content(self) -> str:
        """The whole content once ended; until then (or after an error), the text so far."""
        end = self.end
        if end is not None and end.content is not None:
            return end.content
        return "".join(self._parts)

    def _absorb(self, reply: Reply) -> ChatChunk | None:
        """The chunk ``reply`` is, or ``None`` at the end; raises the error it carries."""
        if type(reply) is ChatChunk:
            if reply.delta:
                self._parts.append(reply.delta)
            return reply
        self.finished = True
        if type(reply) is ChatEnd:
            self.end = reply
            return None
        if type(reply) is Error:
            raise error_from_reply(reply)
        raise InternalError(f"the daemon answered {type(reply).__name__} inside a chat stream")


class FrameNotSent(Exception):
    """A request's frame did not wholly reach the daemon, so the daemon never ran it: the
    caller may reconnect and send it again."""


class SendTimedOut(Exception):
    """A request's deadline passed before its frame was wholly sent (the daemon stopped
    reading). If part of the frame went out (``cut``), its connection is lost too: no other
    frame can follow half of one."""

    def __init__(self, *, cut: bool) -> None:
        self.cut = cut
        super().__init__(
            "the daemon took only part of it (is it reading?), so the connection was dropped"
            if cut
            else "the daemon took none of it (is it reading?)"
        )


CUT_SHORT: Final = "a frame was cut short (its sender timed out or was cancelled mid-frame)"
"""Why a connection is lost when a frame could not be sent whole."""


class Handshake:
    """A connection's handshake less its I/O: the ``Hello`` frame to send, then the bytes read
    back until they hold the daemon's ``Welcome``. Its codec then serves the connection."""

    __slots__ = ("decoder", "encoder", "hello_frame", "path", "welcome")

    welcome: Welcome
    """The daemon's ``Welcome``, once :meth:`receive` has said it came."""

    def __init__(self, path: str, app: str) -> None:
        self.path = path
        self.encoder = FrameEncoder()
        self.decoder = reply_decoder()
        self.hello_frame = self.encoder.encode(hello(app))

    def receive(self, data: bytes) -> bool:
        """Take ``data`` read from the socket (empty: the daemon closed it); whether the
        ``Welcome`` has come. Raises the error the daemon answered instead."""
        if not data:
            raise ConnectionResetError("closed the connection during the handshake")
        replies = list(self.decoder.feed(data))
        if not replies:
            return False
        welcome = self.welcome = expect(replies[0], Welcome, self.path)
        if welcome.max_frame > 0:  # replies as large as the daemon may send, up to a ceiling
            bound = min(welcome.max_frame, MAX_FRAME_CEILING)
            self.decoder.max_frame = max(self.decoder.max_frame, bound)
        return True


class ReplyInbox(Protocol):
    """Where the replies to one request are put as they arrive (a ``deque`` will do)."""

    def append(self, reply: Reply, /) -> None: ...

    def __len__(self) -> int: ...


InboxT = TypeVar("InboxT", bound=ReplyInbox)


class ConnectionBase(ABC, Generic[InboxT]):
    """What a handshaken connection holds on either side: its socket, the daemon's ``Welcome``,
    the frame codec and one reused receive buffer, and an inbox (``InboxT``, which differs) for
    each request in flight, by id; how a request is encoded (:meth:`_frame`, which refuses one
    over the daemon's ``max_frame``) and a reply routed to its inbox; and the ``Cancel`` frames
    of requests given up without waiting (:meth:`abandon_soon`), sent before the next frame if
    the socket is busy."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_encoder",
        "_inboxes",
        "_largest_frame",
        "_next_id",
        "_sock",
        "_unsent",
        "_view",
        "lost",
        "path",
        "welcome",
    )

    def __init__(self, sock: socket.socket, handshake: Handshake) -> None:
        self._sock = sock
        self.path = handshake.path
        self.welcome = handshake.welcome
        self._encoder = handshake.encoder
        self._decoder: FrameDecoder[Reply] = handshake.decoder
        max_frame = handshake.welcome.max_frame
        self._largest_frame = max_frame + HEADER_SIZE if max_frame > 0 else sys.maxsize
        """The longest frame (length prefix included) the daemon takes; not said (a daemon
        before ``Welcome.max_frame``): unbounded here, the daemon's own bound applies."""
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._inboxes: dict[int, InboxT] = {}
        self._next_id = 1
        self._unsent: deque[bytes] = deque()
        """Frames (``Cancel``s) to send before the next one; appended to without a lock."""
        self.lost: str | None = None
        """Why the connection was lost; None while it is up."""

    def _frame(self, request: Message) -> bytes:
        """``request``'s frame; :class:`BadFrameError` if it is over the daemon's
        ``max_frame``, before anything is sent, so that the connection and the other requests
        in flight on it go on."""
        frame = self._encoder.encode(request)
        if len(frame) > self._largest_frame:
            raise frame_over_max_frame(request, len(frame) - HEADER_SIZE, self.welcome.max_frame)
        return frame

    def _route(self, reply: Reply) -> None:
        """Put ``reply`` in the inbox of its id, forgetting the id once ``reply`` ends its
        request. A reply nobody waits for any more (a closed stream, a timed-out call) is
        dropped, unless it is an error for no request: the daemon ending the connection. A
        request with ``MAX_UNREAD_REPLIES`` waiting unread is cancelled: its inbox gets an
        ``overloaded`` error in place of the reply."""
        inbox = self._inboxes.get(reply.id)
        if inbox is None:
            if reply.id == 0 and type(reply) is Error:
                self._lose(f"the daemon ended the connection: {reply.code}: {reply.message}")
            elif self._unsent:  # a Cancel given up on its request is still to go
                self._send_unsent_now()
            return
        if not isinstance(reply, CONTINUING_REPLIES):
            self._inboxes.pop(reply.id, None)
        elif len(inbox) >= MAX_UNREAD_REPLIES:
            self._inboxes.pop(reply.id, None)
            self._unsent.append(cancel_frame(reply.id))
            self._send_unsent_now()
            reply = Error(
                id=reply.id,
                code="overloaded",
                message=f"{MAX_UNREAD_REPLIES} replies came that were not read: the request "
                "was cancelled (read a stream as it comes, and close it when done)",
            )
        inbox.append(reply)

    def abandon_soon(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` without waiting nor taking a lock (a finalizer may
        run anywhere): if it has not finished, its ``Cancel`` goes now if the socket is free,
        else before the next frame; its replies are dropped from now on."""
        if self._inboxes.pop(request_id, None) is not None and self.lost is None:
            self._unsent.append(cancel_frame(request_id))
            self._send_unsent_now()

    @abstractmethod
    def _send_unsent_now(self) -> None:
        """Send what the socket takes now of the frames in ``_unsent``, if no frame is being
        sent, without waiting (:meth:`_send_unsent_nowait`)."""

    def _send_unsent_nowait(self) -> None:
        """Send what the socket takes now of the frames in ``_unsent``; the rest stays first
        in line. The caller owns the socket's writing (it holds the send lock, or the lock is
        free and nothing is awaited)."""
        data = self._take_unsent()
        try:
            sent = self._sock.send(data, SEND_NOW_FLAGS)
        except OSError:  # full (or broken: the reader will see that)
            sent = 0
        if sent < len(data):
            self._unsent.appendleft(data[sent:])

    def _take_unsent(self) -> bytes:
        """The frames of ``_unsent``, taken out to be sent (the caller owns the writing)."""
        unsent = self._unsent
        return b"".join([unsent.popleft() for _ in range(len(unsent))])

    def _put_back(self, taken: bytes) -> None:
        """``taken`` (:meth:`_take_unsent`) went ahead of a frame of which nothing was sent:
        first in line again. Dropped, the Cancels among it were lost, and the rest of a frame
        half sent before was too, so that the next frame followed half of one."""
        if taken:
            self._unsent.appendleft(taken)

    @abstractmethod
    def _lose(self, reason: str) -> None:
        """Mark the connection lost for ``reason`` and wake whoever waits on it."""

    def _lost_in_flight(self) -> str:
        """What a request in flight fails with once the connection is lost."""
        return (
            f"lost the connection to quotad at {self.path} ({self.lost}) with a request in "
            "flight; it may or may not have run"
        )

    def _shut_down(self) -> None:
        """Shut the socket down both ways, so that whoever reads it sees its end."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
