"""The requests of the client API (DESIGN §6) that continue after their first reply: chat
streams (:class:`AsyncChatStream`) and subscriptions (:class:`AsyncSubscription`), both read
one reply at a time through the client that made them (:class:`_AsyncRequestSender`, which
:class:`~quotad.client.AsyncClient` is); and what the client shares with them, closing at the
end of its ``async with`` block (:class:`AsyncClosing`).

Written once, like the client (see ``_async.py``): the blocking module is generated from the
async one by ``scripts/unasync.py``, and the test suite fails while the two differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from quotad.client._async_connection import AsyncConnection, AsyncInbox
from quotad.client._common import StreamedChat, expect
from quotad.protocol.messages import ChatChunk, ChatEnd, Message, Reply, Snapshot

__all__ = ["AsyncChatStream", "AsyncClosing", "AsyncSubscription"]

ItemT = TypeVar("ItemT")


class AsyncClosing(ABC):
    """What closes at the end of its ``async with`` block: the client, and its requests that
    continue."""

    __slots__ = ()

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _AsyncRequestSender(Protocol):
    """What a continuing request needs of the client that sends it: its request plumbing,
    and where a chat stream that ran to its end leaves its ``ChatEnd``."""

    last_stream_end: ChatEnd | None

    async def _start(
        self, request: Message, bounded: bool = True
    ) -> tuple[AsyncConnection, AsyncInbox, float | None]: ...

    async def _await_reply(
        self,
        connection: AsyncConnection,
        inbox: AsyncInbox,
        request_id: int,
        deadline: float | None,
    ) -> Reply: ...


class _AsyncReplies(AsyncClosing, Generic[ItemT]):
    """The replies of one request that continues (a chat stream, a subscription), read as
    the ``ItemT`` each is: sent on entering its ``async with`` block or at the first read;
    closing it before its end cancels the request, and later replies to it are dropped."""

    __slots__ = ("_client", "_connection", "_deadline", "_inbox", "_request", "finished")
    _bounded: ClassVar[bool]
    """Whether the client's timeout bounds the whole request (from when it is sent)."""

    def _begin(self, client: _AsyncRequestSender, request: Message) -> None:
        self._client = client
        self._request = request
        self._connection: AsyncConnection | None = None
        self._inbox: AsyncInbox | None = None
        self._deadline: float | None = None
        self.finished = False

    async def _start(self) -> tuple[AsyncConnection, AsyncInbox]:
        started = await self._client._start(self._request, self._bounded)
        self._connection, self._inbox, self._deadline = started
        return started[0], started[1]

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

    @abstractmethod
    def _absorb(self, reply: Reply) -> ItemT | None:
        """The item ``reply`` is, or ``None`` at the end; raises the error it carries."""

    def _ended(self) -> None:
        """The request has ended with its last reply (:meth:`_absorb` said ``None``)."""

    async def __aenter__(self) -> Self:
        if self._inbox is None:
            await self._start()
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ItemT:
        if self.finished:
            raise StopAsyncIteration
        reply = await self._next_reply()
        try:
            item = self._absorb(reply)
        except BaseException:
            await self._abandon()
            raise
        if item is None:
            self._ended()
            raise StopAsyncIteration
        return item

    def __del__(self) -> None:
        """Dropped before its end (a ``break`` out of its loop, and no reference left): the
        request is cancelled, without waiting, and its replies are dropped."""
        connection = getattr(self, "_connection", None)  # None if never sent (or not made)
        if connection is not None and not self.finished:
            connection.abandon_soon(self._request.id)

    async def aclose(self) -> None:
        """Cancel the request if it has not ended; later replies to it are dropped."""
        if not self.finished:
            await self._abandon()

    async def _abandon(self) -> None:
        """End the request here: stop waiting for it, and cancel it unless the daemon has
        ended it (a reply of the wrong kind does not)."""
        self.finished = True
        if self._connection is not None:
            await self._connection.abandon(self._request.id)


class AsyncChatStream(StreamedChat, _AsyncReplies[ChatChunk]):
    """The chunks of one streamed chat; ``.end`` and ``.content`` once it ends.

    Closing it (or leaving its ``async with`` block) before the end cancels the request.
    """

    __slots__ = ()
    _bounded = True

    def __init__(self, client: _AsyncRequestSender, request: Message) -> None:
        super().__init__()
        self._begin(client, request)

    def _ended(self) -> None:
        self._client.last_stream_end = self.end


class AsyncSubscription(_AsyncReplies[Snapshot]):
    """Snapshots from ``subscribe()``; closing it ends the subscription."""

    __slots__ = ()
    _bounded = False

    def __init__(self, client: _AsyncRequestSender, request: Message) -> None:
        self._begin(client, request)

    def _absorb(self, reply: Reply) -> Snapshot:
        return expect(reply, Snapshot)
