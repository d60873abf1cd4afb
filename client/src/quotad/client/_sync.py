"""The blocking client: :class:`Client`, over a plain Unix ``socket`` with no event loop.

One connection per client. Each request gets the next id of that connection and an inbox;
whichever waiting thread holds the read turn receives frames and routes every reply to the
inbox of its id (leader/followers), so threads sharing a client never see each other's
replies and a stream can be read while other calls are made. Replies for ids nobody waits
for any more (a closed stream, a timed-out call) are dropped.

After the daemon restarts, the next call reconnects (retrying for ``reconnect_s`` while the
socket is absent or refusing). A request whose frame never reached the daemon is sent again on
the new connection; a request in flight when the connection drops raises
:class:`ConnectionLostError`, since it may have run (and cost money).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self

from quotad.client._common import (
    CONTINUING_REPLIES,
    RECEIVE_SIZE,
    FrameNotSent,
    ReplyT,
    StreamedChat,
    acquire_request,
    build,
    chat_request,
    connect_failure,
    default_app,
    embed_request,
    expect,
    hello,
    is_retryable,
    settle_request,
)
from quotad.client.exceptions import (
    ConnectionLostError,
    DaemonUnavailableError,
    QuotadError,
    RequestTimeoutError,
)
from quotad.protocol.framing import FrameDecoder, FrameEncoder, FrameError, reply_decoder
from quotad.protocol.messages import (
    Admin,
    CacheMode,
    Cancel,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    EmbedReply,
    Error,
    Message,
    Ok,
    Permit,
    Priority,
    Reply,
    SettleStatus,
    Snapshot,
    Spend,
    SpendKey,
    SpendPeriod,
    SpendReply,
    Status,
    StatusReply,
    Subscribe,
    Welcome,
)
from quotad.protocol.paths import client_socket_candidates

__all__ = ["ChatStream", "Client", "HeldPermit", "Subscription"]

Inbox = deque[Reply]

_SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0)


class _Connection:
    """One handshaken socket: sends requests and routes replies to per-id inboxes."""

    __slots__ = (
        "_buffer",
        "_decoder",
        "_encoder",
        "_inboxes",
        "_next_id",
        "_poller",
        "_reading",
        "_send_lock",
        "_sock",
        "_state",
        "_view",
        "lost",
        "path",
        "welcome",
    )

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        welcome: Welcome,
        encoder: FrameEncoder,
        decoder: FrameDecoder[Reply],
    ) -> None:
        self._sock = sock
        self.path = path
        self.welcome = welcome
        self._encoder = encoder
        self._decoder = decoder
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._send_lock = threading.Lock()
        self._state = threading.Condition(threading.Lock())
        self._reading = False
        self._inboxes: dict[int, Inbox] = {}
        self._next_id = 1
        self.lost: str | None = None

    def send(self, request: Message) -> Inbox:
        """Give ``request`` the next id and send it; its replies will arrive in the inbox.

        Raises :class:`FrameNotSent` when the frame did not get through.
        """
        with self._send_lock:
            if self.lost is not None:
                raise FrameNotSent(self.lost)
            request_id = request.id = self._next_id
            self._next_id = request_id + 1
            frame = self._encoder.encode(request)
            inbox: Inbox = deque()
            with self._state:
                self._inboxes[request_id] = inbox
            self._send_frame(frame, request_id)
        return inbox

    def _send_frame(self, frame: bytes, request_id: int | None = None) -> None:
        """Send one whole frame (the send lock is held). If it does not get through, however
        it fails (an ``OSError``, a ``KeyboardInterrupt`` mid-send), the connection is lost and
        ``request_id`` (if given) forgotten; an ``OSError`` raises :class:`FrameNotSent`."""
        try:
            self._sock.sendall(frame, _SEND_FLAGS)
        except BaseException as error:
            with self._state:
                if request_id is not None:
                    self._inboxes.pop(request_id, None)
                self._lose(f"sending failed: {connect_failure(error, 0)}")
                self._state.notify_all()
            if isinstance(error, OSError):
                raise FrameNotSent(str(error)) from error
            raise

    def wait(self, inbox: Inbox, deadline: float | None) -> Reply | None:
        """The next reply in ``inbox``, or ``None`` once ``deadline`` (monotonic) passes."""
        state = self._state
        with state:
            while not inbox:
                if self.lost is not None:
                    raise ConnectionLostError(
                        f"lost the connection to quotad at {self.path} ({self.lost}) with a "
                        "request in flight; it may or may not have run"
                    )
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return None
                if self._reading:
                    state.wait(timeout)
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
                    self._route(received)
                    if failure is not None:
                        self._lose(failure)
                    state.notify_all()
            return inbox.popleft()

    def _receive(self, received: list[Reply], timeout: float | None) -> str | None:
        """Read once (waiting at most ``timeout``) into ``received``; why the connection
        is lost, if it is."""
        if timeout is not None and not self._poller.poll(math.ceil(timeout * 1000)):
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

    def _route(self, replies: list[Reply]) -> None:
        """Put each reply in the inbox of its id (the state lock is held)."""
        inboxes = self._inboxes
        for reply in replies:
            inbox = inboxes.get(reply.id)
            if inbox is None:
                if reply.id == 0 and type(reply) is Error:
                    self._lose(f"the daemon ended the connection: {reply.code}: {reply.message}")
                continue
            inbox.append(reply)
            if not isinstance(reply, CONTINUING_REPLIES):
                del inboxes[reply.id]

    def _lose(self, reason: str) -> None:
        """Mark the connection lost (the state lock is held) and wake whoever reads it."""
        if self.lost is None:
            self.lost = reason
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id``; if it has not finished, ask the daemon to cancel it."""
        with self._state:
            unfinished = self._inboxes.pop(request_id, None) is not None
        if unfinished and self.lost is None:
            with contextlib.suppress(FrameNotSent):
                self.send_cancel(request_id)

    def send_cancel(self, request_id: int) -> None:
        """Send ``Cancel(id=request_id)``."""
        with self._send_lock:
            if self.lost is not None:
                raise FrameNotSent(self.lost)
            self._send_frame(self._encoder.encode(Cancel(id=request_id)))

    def close(self, reason: str) -> None:
        """Close the socket; waiters raise :class:`ConnectionLostError` with ``reason``."""
        with self._state:
            self._lose(reason)
            self._state.notify_all()
        self._sock.close()


def _handshake(path: str, app: str, connect_timeout: float) -> _Connection:
    """Connect to ``path``, send ``Hello`` and read the ``Welcome``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        sock.connect(path)
        encoder = FrameEncoder()
        decoder = reply_decoder()
        sock.sendall(encoder.encode(hello(app)))
        replies: list[Reply] = []
        while not replies:
            data = sock.recv(RECEIVE_SIZE)
            if not data:
                raise ConnectionResetError("closed the connection during the handshake")
            replies.extend(decoder.feed(data))
        welcome = expect(replies[0], Welcome, str(path))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return _Connection(sock, path, welcome, encoder, decoder)


class Client:
    """A blocking connection to the quotad daemon (DESIGN §6); safe to share between threads.

    ``socket`` None tries ``$QUOTAD_SOCKET``, the user socket, then the system socket;
    ``app`` None is ``$QUOTAD_APP`` or the program's name. ``timeout`` bounds each call, a
    stream from its start to its end (on expiry the request is cancelled and
    :class:`RequestTimeoutError` raised); subscriptions are not bounded. The first connect
    tries each socket once; after a connection was lost, the next call retries for
    ``reconnect_s`` while the sockets are absent or refusing.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        app: str | None = None,
        *,
        timeout: float | None = None,
        connect_timeout: float = 5.0,
        reconnect_s: float = 5.0,
    ) -> None:
        self.sockets: list[Path] = client_socket_candidates(socket)
        self.app = app if app is not None else default_app()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect_s = reconnect_s
        self.welcome: Welcome | None = None
        self.last_stream_end: ChatEnd | None = None
        self._connection: _Connection | None = None
        self._connect_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Client:
        self._connected()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self._connect_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close("the client was closed")

    def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        with self._connect_lock:
            connection = self._connection
            if connection is not None:
                if connection.lost is None:
                    return connection
                connection.close(connection.lost)
            self._connection = None
            # after a first connection, a lost one is retried while the daemon restarts
            connection = self._connect(self.reconnect_s if self.welcome is not None else 0.0)
            self._connection = connection
            self.welcome = connection.welcome
            return connection

    def _connect(self, retry_s: float) -> _Connection:
        """Handshake with the first socket that answers, retrying for ``retry_s`` while
        they are absent or refusing."""
        deadline = time.monotonic() + retry_s
        delay = 0.02
        while True:
            tried: list[tuple[str, str]] = []
            retryable = False
            for path in self.sockets:
                try:
                    return _handshake(str(path), self.app, self.connect_timeout)
                except (OSError, FrameError) as error:
                    tried.append((str(path), connect_failure(error, self.connect_timeout)))
                    retryable = retryable or is_retryable(error)
            if not retryable or time.monotonic() + delay > deadline:
                raise DaemonUnavailableError.after_trying(tried)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    # ----------------------------------------------------------------- request plumbing

    def _start(self, request: Message) -> tuple[_Connection, Inbox]:
        """Send ``request``, reconnecting once if its frame did not get through."""
        connection = self._connected()
        try:
            return connection, connection.send(request)
        except FrameNotSent:
            connection = self._connected()
            try:
                return connection, connection.send(request)
            except FrameNotSent as error:
                raise ConnectionLostError(
                    f"could not send to quotad at {connection.path}: {error}"
                ) from None

    def _await_reply(
        self, connection: _Connection, inbox: Inbox, request_id: int, deadline: float | None
    ) -> Reply:
        """The next reply for ``request_id``; cancels the request if the wait ends otherwise."""
        try:
            reply = connection.wait(inbox, deadline)
        except BaseException:
            connection.abandon(request_id)
            raise
        if reply is None:
            connection.abandon(request_id)
            raise RequestTimeoutError(f"no reply from quotad within {self.timeout:g} s")
        return reply

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _call(self, request: Message, kind: type[ReplyT]) -> ReplyT:
        connection, inbox = self._start(request)
        reply = self._await_reply(connection, inbox, request.id, self._deadline())
        return expect(reply, kind)

    # ----------------------------------------------------------------- the API

    def chat(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any] | ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        cache: CacheMode = "use",
        user: str = "",
        tags: list[str] | None = None,
        **extra: Any,
    ) -> ChatReply:
        """One chat completion. ``messages`` are OpenAI-shaped dicts (or ``ChatMessage``);
        ``top_p``, ``stop``, ``seed``, ``tool_choice``, ``response_format`` in ``extra`` are
        sampling params, anything else passes through to the provider."""
        request = chat_request(
            model,
            messages,
            stream=False,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
            priority=priority,
            max_wait_s=max_wait_s,
            cache=cache,
            user=user,
            tags=tags,
            extra=extra,
        )
        return self._call(request, ChatReply)

    def chat_stream(
        self,
        model: str,
        messages: Iterable[Mapping[str, Any] | ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        cache: CacheMode = "use",
        user: str = "",
        tags: list[str] | None = None,
        **extra: Any,
    ) -> ChatStream:
        """A streamed chat completion: iterate it for ``ChatChunk``s; ``.end`` holds the
        ``ChatEnd`` afterwards. The request is sent when iteration (or ``with``) begins."""
        request = chat_request(
            model,
            messages,
            stream=True,
            max_tokens=max_tokens,
            temperature=temperature,
            tools=tools,
            priority=priority,
            max_wait_s=max_wait_s,
            cache=cache,
            user=user,
            tags=tags,
            extra=extra,
        )
        return ChatStream(self, request)

    def embed(
        self,
        model: str,
        input: str | list[str],
        *,
        dimensions: int | None = None,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        cache: CacheMode = "use",
        user: str = "",
        tags: list[str] | None = None,
        **extra: Any,
    ) -> EmbedReply:
        """Embeddings of ``input``, one vector per string."""
        request = embed_request(
            model,
            input,
            dimensions=dimensions,
            priority=priority,
            max_wait_s=max_wait_s,
            cache=cache,
            user=user,
            tags=tags,
            extra=extra,
        )
        return self._call(request, EmbedReply)

    def status(self) -> StatusReply:
        """The daemon's state: targets, gates, breakers, queues, cache, budgets."""
        return self._call(Status(), StatusReply)

    def spend(
        self,
        period: SpendPeriod = "day",
        by: SpendKey = "app",
    ) -> SpendReply:
        """A ledger report for ``period``, grouped ``by`` one key."""
        return self._call(build(Spend, period=period, by=by), SpendReply)

    def admin(self, action: str, target: str = "", **args: Any) -> Ok:
        """An operator action (``enable``, ``disable``, ``reset``, ``reload``, ``key_*``)."""
        return self._call(build(Admin, action=action, target=target, args=args), Ok)

    def acquire(
        self,
        target: str,
        tokens: int = 0,
        *,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        lease_s: float | None = None,
    ) -> Permit:
        """Wait for admission on ``target``'s gates for a call made with your own SDK."""
        request = acquire_request(
            target, tokens, priority=priority, max_wait_s=max_wait_s, lease_s=lease_s
        )
        return self._call(request, Permit)

    def settle(
        self,
        permit_id: str,
        tokens_used: int = 0,
        *,
        status: SettleStatus = "ok",
        headers: Mapping[str, str] | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Ok:
        """Report what a permitted call used (``headers``: the provider's rate-limit headers)."""
        request = settle_request(
            permit_id,
            tokens_used,
            status=status,
            headers=headers,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        return self._call(request, Ok)

    @contextlib.contextmanager
    def permit(
        self,
        target: str,
        tokens: int = 0,
        *,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        lease_s: float | None = None,
    ) -> Iterator[HeldPermit]:
        """``acquire`` now, settle exactly once on leaving: as the block settled it, else
        with the reserved ``tokens`` (status ``error``/``cancelled`` if the block raised)."""
        granted = self.acquire(
            target, tokens, priority=priority, max_wait_s=max_wait_s, lease_s=lease_s
        )
        held = HeldPermit(self, granted, tokens)
        try:
            yield held
        except BaseException as error:
            if not held.settled:
                cancelled = isinstance(error, KeyboardInterrupt | GeneratorExit)
                with contextlib.suppress(QuotadError):
                    held.settle(status="cancelled" if cancelled else "error")
            raise
        if not held.settled:
            held.settle()

    def subscribe(self, interval_s: float = 1.0, *, requests: bool = True) -> Subscription:
        """Snapshots of the daemon's state every ``interval_s`` (with the requests finished
        since the previous one, unless ``requests`` is false) until closed."""
        return Subscription(self, build(Subscribe, interval_s=interval_s, requests=requests))


class HeldPermit:
    """A granted permit inside ``Client.permit()``: settle it once with what the call used."""

    __slots__ = ("_client", "permit", "reserved_tokens", "settled")

    def __init__(self, client: Client, permit: Permit, reserved_tokens: int) -> None:
        self._client = client
        self.permit = permit
        self.reserved_tokens = reserved_tokens
        self.settled = False

    @property
    def permit_id(self) -> str:
        """The daemon's id of this permit."""
        return self.permit.permit_id

    @property
    def wait_s(self) -> float:
        """How long admission took."""
        return self.permit.wait_s

    def settle(
        self,
        tokens: int | None = None,
        *,
        status: SettleStatus = "ok",
        headers: Mapping[str, str] | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> Ok:
        """Settle with the tokens really used (default: the reservation)."""
        if self.settled:
            raise RuntimeError(f"permit {self.permit_id} is already settled")
        self.settled = True
        return self._client.settle(
            self.permit_id,
            self.reserved_tokens if tokens is None else tokens,
            status=status,
            headers=headers,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


class _Replies:
    """The replies of one request that continues (a chat stream, a subscription): sent on
    entering its ``with`` block or at the first read; closing it before its end cancels the
    request, and later replies to it are dropped."""

    __slots__ = ("_client", "_connection", "_deadline", "_inbox", "_request", "finished")
    _bounded: ClassVar[bool]
    """Whether the client's timeout bounds the whole request (from when it is sent)."""

    def _begin(self, client: Client, request: Message) -> None:
        self._client = client
        self._request = request
        self._connection: _Connection | None = None
        self._inbox: Inbox | None = None
        self._deadline: float | None = None
        self.finished = False

    def _start(self) -> tuple[_Connection, Inbox]:
        connection, inbox = self._connection, self._inbox = self._client._start(self._request)
        self._deadline = self._client._deadline() if self._bounded else None
        return connection, inbox

    def _next_reply(self) -> Reply:
        """The request's next reply (sending it first if not yet sent); ends it on failure."""
        if self._connection is None or self._inbox is None:
            connection, inbox = self._start()
        else:
            connection, inbox = self._connection, self._inbox
        try:
            return self._client._await_reply(connection, inbox, self._request.id, self._deadline)
        except BaseException:
            self.finished = True
            raise

    def __enter__(self) -> Self:
        if self._inbox is None:
            self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Self:
        return self

    def close(self) -> None:
        """Cancel the request if it has not ended; later replies to it are dropped."""
        if not self.finished:
            self.finished = True
            if self._connection is not None:
                self._connection.abandon(self._request.id)


class ChatStream(StreamedChat, _Replies):
    """The chunks of one streamed chat; ``.end`` and ``.content`` once it ends.

    Closing it (or leaving its ``with`` block) before the end cancels the request.
    """

    __slots__ = ()
    _bounded = True

    def __init__(self, client: Client, request: Message) -> None:
        super().__init__()
        self._begin(client, request)

    def __next__(self) -> ChatChunk:
        if self.finished:
            raise StopIteration
        chunk = self._absorb(self._next_reply())
        if chunk is None:
            self._client.last_stream_end = self.end
            raise StopIteration
        return chunk


class Subscription(_Replies):
    """Snapshots from ``Client.subscribe()``; closing it ends the subscription."""

    __slots__ = ()
    _bounded = False

    def __init__(self, client: Client, request: Message) -> None:
        self._begin(client, request)

    def __next__(self) -> Snapshot:
        if self.finished:
            raise StopIteration
        reply = self._next_reply()
        try:
            return expect(reply, Snapshot)
        except BaseException:
            self.finished = True
            raise
