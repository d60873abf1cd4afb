"""Thin clients for the quotad daemon (DESIGN §6).

:class:`Client` is blocking (a plain socket, no event loop); :class:`AsyncClient` has the same
API, awaited, and runs under asyncio and trio. Both speak the wire protocol of
:mod:`quotad.protocol` over the daemon's Unix socket, raise the exceptions of
:mod:`quotad.client.exceptions`, and reconnect after a daemon restart. The async client (and
anyio with it) is imported on first use, so that blocking users start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quotad.client._sync import Client, HeldPermit
from quotad.client._sync_stream import ChatStream, Subscription
from quotad.client.exceptions import (
    BadFrameError,
    BadRequestError,
    BlockedError,
    BudgetExceededError,
    ConnectionLostError,
    DaemonUnavailableError,
    InternalError,
    OverloadedError,
    QuotadError,
    RateLimitedError,
    RequestCancelledError,
    RequestTimeoutError,
    UnauthorizedError,
    UnknownModelError,
    UpstreamError,
    error_from_reply,
)
from quotad.protocol.messages import (
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    EmbedReply,
    Ok,
    Permit,
    Snapshot,
    SpendReply,
    StatusReply,
    Usage,
    Welcome,
)

if TYPE_CHECKING:
    from quotad.client._async import AsyncClient, AsyncHeldPermit
    from quotad.client._async_stream import AsyncChatStream, AsyncSubscription

__all__ = [
    "AsyncChatStream",
    "AsyncClient",
    "AsyncHeldPermit",
    "AsyncSubscription",
    "BadFrameError",
    "BadRequestError",
    "BlockedError",
    "BudgetExceededError",
    "ChatChunk",
    "ChatEnd",
    "ChatMessage",
    "ChatReply",
    "ChatStream",
    "Client",
    "ConnectionLostError",
    "DaemonUnavailableError",
    "EmbedReply",
    "HeldPermit",
    "InternalError",
    "Ok",
    "OverloadedError",
    "Permit",
    "QuotadError",
    "RateLimitedError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "Snapshot",
    "SpendReply",
    "StatusReply",
    "Subscription",
    "UnauthorizedError",
    "UnknownModelError",
    "UpstreamError",
    "Usage",
    "Welcome",
    "error_from_reply",
]

_ASYNC_CLIENT_NAMES = frozenset({"AsyncClient", "AsyncHeldPermit"})
_ASYNC_STREAM_NAMES = frozenset({"AsyncChatStream", "AsyncSubscription"})


def __getattr__(name: str) -> Any:
    if name in _ASYNC_CLIENT_NAMES:
        from quotad.client import _async

        return getattr(_async, name)
    if name in _ASYNC_STREAM_NAMES:
        from quotad.client import _async_stream

        return getattr(_async_stream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
