# Generated from _async.py by scripts/unasync.py: edit that file and run the script,
# never this one (the test suite fails while the two differ).
"""The client API (DESIGN §6): the client and its held permits (its chat streams and
subscriptions, the requests that continue, are in ``_sync_stream.py``).

Written once: ``_async.py`` is the source, and ``_sync.py`` is generated from it by
``scripts/unasync.py``, a table of token replacements (see there). Edit ``_async.py``, then run
``uv run python scripts/unasync.py``; the test suite fails while the two differ. The socket I/O
beneath is written by hand on each side, in the connection modules.

A client holds one connection at a time. Every request gets the next id of that connection
and waits for the replies to that id, so any number of tasks (or threads, for a blocking
client) may share one client with their requests in flight at once. When the connection
drops, every waiter fails with :class:`ConnectionLostError` (the request may have run, and
cost money), and the next call reconnects, retrying for ``reconnect_s`` while the daemon
restarts; a request whose frame never reached the daemon is sent again on the new connection
(at most ``SEND_ATTEMPTS`` tries in all).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from quotad.client._common import (
    SEND_ATTEMPTS,
    FrameNotSent,
    ReplyT,
    SendTimedOut,
    build,
    chat_request,
    checked_seconds,
    checked_timeout,
    connect_failure,
    default_app,
    expect,
    is_retryable,
)
from quotad.client._connection import (
    Connection,
    Inbox,
    Lock,
    ReaderTasks,
    current_time,
    handshake,
    is_cancellation,
    shielded,
    sleep,
)
from quotad.client._sync_stream import ChatStream, Closing, Subscription
from quotad.client.exceptions import (
    ConnectionLostError,
    DaemonUnavailableError,
    QuotadError,
    RequestTimeoutError,
)
from quotad.protocol.framing import FrameError
from quotad.protocol.messages import (
    Acquire,
    Admin,
    CacheMode,
    ChatEnd,
    ChatMessage,
    ChatReply,
    Embed,
    EmbedReply,
    Message,
    Ok,
    Permit,
    Priority,
    Reply,
    Settle,
    SettleStatus,
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

__all__ = ["Client", "HeldPermit"]


class Client(Closing):
    """A connection to the quotad daemon (DESIGN §6), for any number of concurrent callers.

    ``with Client(...) as qd:`` connects, and closes at the end of the block. (An
    async client must be opened so: its reader task runs in a task group the block owns. A
    blocking :class:`Client` also connects on its first call, and may be shared by threads.)

    ``socket`` None tries ``$QUOTAD_SOCKET``, the user socket, then the system socket;
    ``app`` None is ``$QUOTAD_APP`` or the program's name. ``timeout`` bounds each call, a
    stream from its start to its end (on expiry the request is cancelled and
    :class:`RequestTimeoutError` raised); subscriptions are not bounded. The first connect
    tries each socket once; after a connection was lost, the next call retries for
    ``reconnect_s`` while the sockets are absent or refusing. Seconds are above 0
    (``reconnect_s`` may be 0), ``inf`` meaning no limit; another value raises ``ValueError``.
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
        name = type(self).__name__
        self.timeout = checked_timeout(name, timeout)
        self.connect_timeout = checked_seconds(name, "connect_timeout", connect_timeout)
        self.reconnect_s = checked_seconds(name, "reconnect_s", reconnect_s, zero_ok=True)
        self.welcome: Welcome | None = None
        """The daemon's ``Welcome`` on the last connection."""
        self.last_stream_end: ChatEnd | None = None
        """The ``ChatEnd`` of the last chat stream on this client that ran to its end."""
        self._connection: Connection | None = None
        self._connect_lock = Lock()
        self._readers = ReaderTasks()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self._readers.open()
        try:
            self._connected()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the connection. An async client also stops its reader task, so the task
        that opened the client must close it (leaving its block does); a blocking client
        opens a new connection at its next call. Async clients opened by one task close in
        the reverse order (a ``RuntimeError`` says so otherwise, before closing anything)."""
        self._readers.check_closing()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close("the client was closed")
        self._readers.close()

    def _connected(self) -> Connection:
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        self._readers.check_open()
        with self._connect_lock:
            connection = self._connection
            if connection is not None:
                if connection.lost is None:
                    return connection
                self._connection = None
                connection.close(connection.lost)
            # after a first connection, a lost one is retried while the daemon restarts
            connection = self._connect(self.reconnect_s if self.welcome is not None else 0.0)
            self._readers.start(connection)
            self._connection = connection
            self.welcome = connection.welcome
            return connection

    def _connect(self, retry_s: float) -> Connection:
        """Handshake with the first socket that answers, retrying for ``retry_s`` while
        they are absent or refusing."""
        deadline = current_time() + retry_s
        delay = 0.02
        while True:
            tried: list[tuple[str, str]] = []
            retryable = False
            for path in self.sockets:
                try:
                    return handshake(str(path), self.app, self.connect_timeout)
                except (OSError, FrameError) as error:
                    tried.append((str(path), connect_failure(error, self.connect_timeout)))
                    retryable = retryable or is_retryable(error)
            if not retryable or current_time() + delay > deadline:
                raise DaemonUnavailableError.after_trying(tried)
            sleep(delay)
            delay = min(delay * 2, 0.25)

    # ----------------------------------------------------------------- request plumbing

    def _start(
        self, request: Message, bounded: bool = True
    ) -> tuple[Connection, Inbox, float | None]:
        """Send ``request``, reconnecting if its frame did not get through (at most
        ``SEND_ATTEMPTS`` tries); with its deadline (None unless ``bounded``), which also
        bounds the sending."""
        connection = self._connected()
        deadline = self._deadline() if bounded else None
        attempt = 1
        try:
            while True:
                try:
                    return connection, connection.send(request, deadline), deadline
                except FrameNotSent as error:
                    if attempt == SEND_ATTEMPTS:
                        raise ConnectionLostError(
                            f"could not send to quotad at {connection.path}: {error}"
                        ) from None
                attempt += 1  # none of the frame got through: again, on a new connection
                connection = self._connected()
        except SendTimedOut as error:
            raise RequestTimeoutError(
                f"could not send the request to quotad within {self.timeout:g} s: {error}"
            ) from None

    def _deadline(self) -> float | None:
        return None if self.timeout is None else current_time() + self.timeout

    def _await_reply(
        self,
        connection: Connection,
        inbox: Inbox,
        request_id: int,
        deadline: float | None,
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

    def _call(self, request: Message, kind: type[ReplyT]) -> ReplyT:
        connection, inbox, deadline = self._start(request)
        reply = self._await_reply(connection, inbox, request.id, deadline)
        try:
            return expect(reply, kind)
        except BaseException:  # an error, or a reply of another kind (it may not be the end)
            connection.abandon(request.id)
            raise

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
        """A streamed chat completion, with the arguments of :meth:`chat`: its ``ChatChunk``s
        as they come (``for chunk in stream``), then ``.end`` holds the ``ChatEnd``
        (also kept as the client's ``last_stream_end``). The request is sent when iteration
        begins, or on entering its ``with`` block."""
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
        request = build(
            Embed,
            model=model,
            input=input,
            dimensions=dimensions,
            priority=priority,
            max_wait_s=max_wait_s,
            cache=cache,
            user=user,
            tags=tags or [],
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
        *,
        fleet: bool = False,
    ) -> SpendReply:
        """A ledger report for ``period``, grouped ``by`` one key; with ``fleet``, every
        host's of the daemon's fleet (``bad_request`` when it has no ``[cluster]``)."""
        return self._call(build(Spend, period=period, by=by, fleet=fleet), SpendReply)

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
        request = build(
            Acquire,
            target=target,
            tokens=tokens,
            priority=priority,
            max_wait_s=max_wait_s,
            lease_s=lease_s,
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
        request = build(
            Settle,
            permit_id=permit_id,
            tokens_used=tokens_used,
            status=status,
            headers=dict(headers or {}),
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
        with the reserved ``tokens`` (status ``error``, or ``cancelled`` if the block was
        cancelled or interrupted)."""
        granted = self.acquire(
            target, tokens, priority=priority, max_wait_s=max_wait_s, lease_s=lease_s
        )
        held = HeldPermit(self, granted, tokens)
        try:
            yield held
        except BaseException as error:
            if not held.settled:
                status: SettleStatus = "cancelled" if is_cancellation(error) else "error"
                with shielded(self.connect_timeout), contextlib.suppress(QuotadError):
                    held.settle(status=status)
            raise
        if not held.settled:
            held.settle()

    def subscribe(self, interval_s: float = 1.0, *, requests: bool = True) -> Subscription:
        """Snapshots of the daemon's state every ``interval_s`` (with the requests finished
        since the previous one, unless ``requests`` is false) until closed."""
        return Subscription(self, build(Subscribe, interval_s=interval_s, requests=requests))


class HeldPermit:
    """A granted permit inside ``permit()``: settle it once with what the call used."""

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
