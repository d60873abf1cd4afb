"""The async client: :class:`AsyncClient`, on anyio, so it runs under asyncio and trio.

``async with AsyncClient() as qd`` connects and starts one reader task, in a task group the
client owns, that decodes frames and routes each reply by id to the inbox of the request
waiting for it. Many tasks may have requests in flight on the one connection at once; frames
are written whole under a lock (shielded, so a cancelled writer never leaves half a frame).
A task cancelled while waiting sends ``Cancel(id)`` (shielded) and forgets the id.

When the connection drops, every waiter fails with :class:`ConnectionLostError` and the next
call reconnects (retrying for ``reconnect_s`` while the socket is absent or refusing).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self

import anyio
import anyio.abc

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

__all__ = ["AsyncChatStream", "AsyncClient", "AsyncHeldPermit", "AsyncSubscription"]

# A frame the daemon has not taken in this long means the connection is stuck.
SEND_STALL_S: Final = 30.0


class _Inbox:
    """The replies that arrived for one request, and a way to wait for the next."""

    __slots__ = ("event", "lost", "replies")

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.event: anyio.Event | None = None
        self.lost: str | None = None

    def put(self, reply: Reply) -> None:
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


class _AsyncConnection:
    """One handshaken socket stream: writes requests, routes replies to per-id inboxes."""

    __slots__ = (
        "_decoder",
        "_encoder",
        "_inboxes",
        "_next_id",
        "_raw_socket",
        "_send_lock",
        "_stream",
        "closed",
        "lost",
        "path",
        "welcome",
    )

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        path: str,
        welcome: Welcome,
        encoder: FrameEncoder,
        decoder: FrameDecoder[Reply],
    ) -> None:
        self._stream = stream
        self.path = path
        self.welcome = welcome
        self._encoder = encoder
        self._decoder = decoder
        self._raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.closed = anyio.Event()
        self._inboxes: dict[int, _Inbox] = {}
        self._next_id = 1
        self.lost: str | None = None

    async def send(self, request: Message) -> _Inbox:
        """Give ``request`` the next id and send it; its replies will arrive in the inbox.

        Raises :class:`FrameNotSent` when the frame did not get through.
        """
        if self.lost is not None:
            raise FrameNotSent(self.lost)
        request_id = request.id = self._next_id
        self._next_id = request_id + 1
        inbox = self._inboxes[request_id] = _Inbox()
        try:
            await self._write(self._encoder.encode(request))
        except BaseException:
            self._inboxes.pop(request_id, None)
            raise
        return inbox

    async def _write(self, frame: bytes) -> None:
        """Write one whole frame, shielded from cancellation so it is never cut short."""
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + SEND_STALL_S
            try:
                async with self._send_lock:
                    await self._stream.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
                self.lose(f"sending failed: {connect_failure(error, 0)}")
                raise FrameNotSent(self.lost or "") from error
        if scope.cancelled_caught:
            self.lose(f"the daemon took no frame for {SEND_STALL_S:g} s")
            raise ConnectionLostError(f"lost the connection to quotad at {self.path} ({self.lost})")

    async def abandon(self, request_id: int) -> None:
        """Stop waiting for ``request_id``; if it has not finished, ask the daemon to cancel it."""
        if self._inboxes.pop(request_id, None) is None or self.lost is not None:
            return
        with contextlib.suppress(FrameNotSent, ConnectionLostError):
            await self._write(self._encoder.encode(Cancel(id=request_id)))

    async def read_replies(self) -> None:
        """The reader task: route every reply until the connection ends (the daemon closes
        it, or :meth:`lose` shuts it down)."""
        reason = "the daemon closed the connection"
        try:
            receive = self._stream.receive
            feed = self._decoder.feed
            route = self._route
            while True:
                data = await receive(RECEIVE_SIZE)
                for reply in feed(data):
                    route(reply)
        except anyio.EndOfStream:
            pass
        except anyio.get_cancelled_exc_class():
            reason = "the client was cancelled"
            raise
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as error:
            reason = connect_failure(error, 0)
        except FrameError as error:
            reason = f"unreadable reply: {error}"
        finally:
            self.lose(reason)
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
            self.closed.set()

    def _route(self, reply: Reply) -> None:
        inbox = self._inboxes.get(reply.id)
        if inbox is None:
            if reply.id == 0 and type(reply) is Error:
                self.lose(f"the daemon ended the connection: {reply.code}: {reply.message}")
            return
        if not isinstance(reply, CONTINUING_REPLIES):
            del self._inboxes[reply.id]
        inbox.put(reply)

    def lose(self, reason: str) -> None:
        """Mark the connection lost, fail every waiter, and shut the socket down so that the
        reader sees its end (rather than being cancelled mid-wait, which races with a
        socket turning readable on some event loops)."""
        if self.lost is not None:
            return
        self.lost = reason
        message = (
            f"lost the connection to quotad at {self.path} ({reason}) with a request in "
            "flight; it may or may not have run"
        )
        for inbox in self._inboxes.values():
            inbox.fail(message)
        self._inboxes.clear()
        with contextlib.suppress(OSError):
            self._raw_socket.shutdown(socket.SHUT_RDWR)


async def _handshake(path: str, app: str, connect_timeout: float) -> _AsyncConnection:
    """Connect to ``path``, send ``Hello`` and read the ``Welcome``."""
    with anyio.fail_after(connect_timeout):
        stream = await anyio.connect_unix(path)
        try:
            encoder = FrameEncoder()
            decoder = reply_decoder()
            await stream.send(encoder.encode(hello(app)))
            replies: list[Reply] = []
            while not replies:
                try:
                    data = await stream.receive(RECEIVE_SIZE)
                except anyio.EndOfStream:
                    raise ConnectionResetError(
                        "closed the connection during the handshake"
                    ) from None
                replies.extend(decoder.feed(data))
            welcome = expect(replies[0], Welcome, str(path))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
    return _AsyncConnection(stream, path, welcome, encoder, decoder)


class AsyncClient:
    """An async connection to the quotad daemon: the API of :class:`Client`, awaited.

    Use it as ``async with AsyncClient(...) as qd:``; any number of tasks may share it, with
    their requests in flight at once on its one connection. The arguments mean what they
    mean for :class:`Client`.
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
        self._connection: _AsyncConnection | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connect_lock: anyio.Lock | None = None

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AsyncClient:
        if self._task_group is not None:
            raise RuntimeError("this AsyncClient is already open")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._connect_lock = anyio.Lock()
        try:
            await self._connected()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and stop the reader (the task that opened the client must
        call this; ``async with`` does)."""
        task_group, self._task_group = self._task_group, None
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.lose("the client was closed")
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + self.connect_timeout
                await connection.closed.wait()
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    async def _connected(self) -> _AsyncConnection:
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        if self._task_group is None or self._connect_lock is None:
            raise RuntimeError("open the client first: `async with AsyncClient(...) as qd:`")
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and connection.lost is None:
                return connection
            # after a first connection, a lost one is retried while the daemon restarts
            retry_s = self.reconnect_s if self.welcome is not None else 0.0
            connection = await self._connect(retry_s)
            self._task_group.start_soon(connection.read_replies)
            self._connection = connection
            self.welcome = connection.welcome
            return connection

    async def _connect(self, retry_s: float) -> _AsyncConnection:
        """Handshake with the first socket that answers, retrying for ``retry_s`` while
        they are absent or refusing."""
        deadline = anyio.current_time() + retry_s
        delay = 0.02
        while True:
            tried: list[tuple[str, str]] = []
            retryable = False
            for path in self.sockets:
                try:
                    return await _handshake(str(path), self.app, self.connect_timeout)
                except (OSError, FrameError) as error:
                    tried.append((str(path), connect_failure(error, self.connect_timeout)))
                    retryable = retryable or is_retryable(error)
            if not retryable or anyio.current_time() + delay > deadline:
                raise DaemonUnavailableError.after_trying(tried)
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.25)

    # ----------------------------------------------------------------- request plumbing

    async def _start(self, request: Message) -> tuple[_AsyncConnection, _Inbox]:
        """Send ``request``, reconnecting once if its frame did not get through."""
        connection = await self._connected()
        try:
            return connection, await connection.send(request)
        except FrameNotSent:
            connection = await self._connected()
            try:
                return connection, await connection.send(request)
            except FrameNotSent as error:
                raise ConnectionLostError(
                    f"could not send to quotad at {connection.path}: {error}"
                ) from None

    def _deadline(self) -> float | None:
        return None if self.timeout is None else anyio.current_time() + self.timeout

    async def _await_reply(
        self,
        connection: _AsyncConnection,
        inbox: _Inbox,
        request_id: int,
        deadline: float | None,
    ) -> Reply:
        """The next reply for ``request_id``; cancels the request if the wait ends otherwise."""
        if inbox.replies:
            return inbox.replies.popleft()
        try:
            if deadline is None:
                return await inbox.get()
            with anyio.CancelScope(deadline=deadline):
                return await inbox.get()
        except BaseException:
            await connection.abandon(request_id)
            raise
        await connection.abandon(request_id)
        raise RequestTimeoutError(f"no reply from quotad within {self.timeout:g} s")

    async def _call(self, request: Message, kind: type[ReplyT]) -> ReplyT:
        connection, inbox = await self._start(request)
        reply = await self._await_reply(connection, inbox, request.id, self._deadline())
        return expect(reply, kind)

    # ----------------------------------------------------------------- the API

    async def chat(
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
        """One chat completion (see :meth:`Client.chat`)."""
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
        return await self._call(request, ChatReply)

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
    ) -> AsyncChatStream:
        """A streamed chat completion: ``async for`` it for ``ChatChunk``s; ``.end`` holds
        the ``ChatEnd`` afterwards. The request is sent when iteration (or ``async with``)
        begins."""
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
        return AsyncChatStream(self, request)

    async def embed(
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
        return await self._call(request, EmbedReply)

    async def status(self) -> StatusReply:
        """The daemon's state: targets, gates, breakers, queues, cache, budgets."""
        return await self._call(Status(), StatusReply)

    async def spend(
        self,
        period: SpendPeriod = "day",
        by: SpendKey = "app",
    ) -> SpendReply:
        """A ledger report for ``period``, grouped ``by`` one key."""
        return await self._call(build(Spend, period=period, by=by), SpendReply)

    async def admin(self, action: str, target: str = "", **args: Any) -> Ok:
        """An operator action (``enable``, ``disable``, ``reset``, ``reload``, ``key_*``)."""
        return await self._call(build(Admin, action=action, target=target, args=args), Ok)

    async def acquire(
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
        return await self._call(request, Permit)

    async def settle(
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
        return await self._call(request, Ok)

    @contextlib.asynccontextmanager
    async def permit(
        self,
        target: str,
        tokens: int = 0,
        *,
        priority: Priority | None = None,
        max_wait_s: float | None = None,
        lease_s: float | None = None,
    ) -> AsyncIterator[AsyncHeldPermit]:
        """``acquire`` now, settle exactly once on leaving: as the block settled it, else
        with the reserved ``tokens`` (status ``error``/``cancelled`` if the block raised)."""
        granted = await self.acquire(
            target, tokens, priority=priority, max_wait_s=max_wait_s, lease_s=lease_s
        )
        held = AsyncHeldPermit(self, granted, tokens)
        try:
            yield held
        except BaseException as error:
            if not held.settled:
                cancelled = isinstance(
                    error, (anyio.get_cancelled_exc_class(), KeyboardInterrupt, GeneratorExit)
                )
                with (
                    anyio.move_on_after(self.connect_timeout, shield=True),
                    contextlib.suppress(QuotadError),
                ):
                    await held.settle(status="cancelled" if cancelled else "error")
            raise
        if not held.settled:
            await held.settle()

    def subscribe(self, interval_s: float = 1.0, *, requests: bool = True) -> AsyncSubscription:
        """Snapshots of the daemon's state every ``interval_s`` (with the requests finished
        since the previous one, unless ``requests`` is false) until closed."""
        return AsyncSubscription(self, build(Subscribe, interval_s=interval_s, requests=requests))


class AsyncHeldPermit:
    """A granted permit inside ``AsyncClient.permit()``: settle it once with what was used."""

    __slots__ = ("_client", "permit", "reserved_tokens", "settled")

    def __init__(self, client: AsyncClient, permit: Permit, reserved_tokens: int) -> None:
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

    async def settle(
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
        return await self._client.settle(
            self.permit_id,
            self.reserved_tokens if tokens is None else tokens,
            status=status,
            headers=headers,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )


class _AsyncReplies:
    """The replies of one request that continues (a chat stream, a subscription): sent on
    entering its ``async with`` block or at the first read; closing it before its end
    cancels the request, and later replies to it are dropped."""

    __slots__ = ("_client", "_connection", "_deadline", "_inbox", "_request", "finished")
    _bounded: ClassVar[bool]
    """Whether the client's timeout bounds the whole request (from when it is sent)."""

    def _begin(self, client: AsyncClient, request: Message) -> None:
        self._client = client
        self._request = request
        self._connection: _AsyncConnection | None = None
        self._inbox: _Inbox | None = None
        self._deadline: float | None = None
        self.finished = False

    async def _start(self) -> tuple[_AsyncConnection, _Inbox]:
        started = await self._client._start(self._request)
        self._connection, self._inbox = started
        self._deadline = self._client._deadline() if self._bounded else None
        return started

    async def _next_reply(self) -> Reply:
        """The request's next reply (sending it first if not yet sent); ends it on failure."""
        if self._connection is None or self._inbox is None:
            connection, inbox = await self._start()
        else:
            connection, inbox = self._connection, self._inbox
        try:
            return await self._client._await_reply(
                connection, inbox, self._request.id, self._deadline
            )
        except BaseException:
            self.finished = True
            raise

    async def __aenter__(self) -> Self:
        if self._inbox is None:
            await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        """Cancel the request if it has not ended; later replies to it are dropped."""
        if not self.finished:
            self.finished = True
            if self._connection is not None:
                await self._connection.abandon(self._request.id)


class AsyncChatStream(StreamedChat, _AsyncReplies):
    """The chunks of one streamed chat; ``.end`` and ``.content`` once it ends.

    Closing it (or leaving its ``async with`` block) before the end cancels the request.
    """

    __slots__ = ()
    _bounded = True

    def __init__(self, client: AsyncClient, request: Message) -> None:
        super().__init__()
        self._begin(client, request)

    async def __anext__(self) -> ChatChunk:
        if self.finished:
            raise StopAsyncIteration
        chunk = self._absorb(await self._next_reply())
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class AsyncSubscription(_AsyncReplies):
    """Snapshots from ``AsyncClient.subscribe()``; closing it ends the subscription."""

    __slots__ = ()
    _bounded = False

    def __init__(self, client: AsyncClient, request: Message) -> None:
        self._begin(client, request)

    async def __anext__(self) -> Snapshot:
        if self.finished:
            raise StopAsyncIteration
        reply = await self._next_reply()
        try:
            return expect(reply, Snapshot)
        except BaseException:
            self.finished = True
            raise
