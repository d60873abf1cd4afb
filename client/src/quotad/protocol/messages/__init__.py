"""The messages of the quotad wire protocol (DESIGN §5).

Every message is a ``msgspec.Struct`` tagged with its class name (field ``type``), in one
tagged union per direction: :data:`Request` (client → daemon) and :data:`Reply`
(daemon → client). Requests carry an ``id`` chosen by the client, unique per connection;
replies carry the id of the request they answer, so many requests may be in flight on one
connection. Every field added after version 1 must have a default, so that old peers keep
decoding new messages (schema evolution); unknown fields are ignored for the same reason.

The messages live in :mod:`.fields` (field types and bounds, the base, shared parts),
:mod:`.requests`, :mod:`.replies` and :mod:`.status` (what a status reply holds); every name
is imported from here.
"""

from __future__ import annotations

import msgspec

from quotad.protocol.messages.fields import (
    ANSWERED,
    MAX_NAME,
    MAX_TAGS,
    MAX_TOKEN_COUNT,
    MAX_WAIT_S,
    PRIORITIES,
    PROTOCOL_VERSION,
    SEMANTIC_HIT,
    CacheMatch,
    CacheMode,
    ChatMessage,
    Message,
    Name,
    NonNegativeFloat,
    PositiveInt,
    Priority,
    RequestId,
    Role,
    SettleStatus,
    SpendKey,
    SpendPeriod,
    Tags,
    TokenCount,
    Usage,
    WaitSeconds,
)
from quotad.protocol.messages.replies import (
    CONTINUING_REPLIES,
    SNAPSHOT_REQUESTS,
    ChatChunk,
    ChatEnd,
    ChatReply,
    EmbedReply,
    Error,
    Ok,
    Permit,
    PipelineReply,
    Reply,
    RequestRecord,
    Snapshot,
    SpendReply,
    SpendRow,
    StatusReply,
    Welcome,
)
from quotad.protocol.messages.requests import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    Acquire,
    Admin,
    Cancel,
    Chat,
    Embed,
    Hello,
    PipelineRequest,
    Request,
    Settle,
    Spend,
    Status,
    Subscribe,
)
from quotad.protocol.messages.status import (
    AppStatus,
    BreakerState,
    BudgetStatus,
    CacheStatus,
    ClusterHost,
    ClusterStatus,
    ClusterWindow,
    Event,
    GateStatus,
    GroupStatus,
    HealthState,
    QueueStatus,
    TargetStatus,
    WindowStatus,
)

__all__ = [
    "ANSWERED",
    "CONTINUING_REPLIES",
    "MAX_INTERVAL_S",
    "MAX_NAME",
    "MAX_TAGS",
    "MAX_TOKEN_COUNT",
    "MAX_WAIT_S",
    "MIN_INTERVAL_S",
    "PRIORITIES",
    "PROTOCOL_VERSION",
    "SEMANTIC_HIT",
    "SNAPSHOT_REQUESTS",
    "Acquire",
    "Admin",
    "AppStatus",
    "BreakerState",
    "BudgetStatus",
    "CacheMatch",
    "CacheMode",
    "CacheStatus",
    "Cancel",
    "Chat",
    "ChatChunk",
    "ChatEnd",
    "ChatMessage",
    "ChatReply",
    "ClusterHost",
    "ClusterStatus",
    "ClusterWindow",
    "Embed",
    "EmbedReply",
    "Error",
    "Event",
    "GateStatus",
    "GroupStatus",
    "HealthState",
    "Hello",
    "Message",
    "Name",
    "NonNegativeFloat",
    "Ok",
    "Permit",
    "PipelineReply",
    "PipelineRequest",
    "PositiveInt",
    "Priority",
    "QueueStatus",
    "Reply",
    "Request",
    "RequestId",
    "RequestRecord",
    "Role",
    "Settle",
    "SettleStatus",
    "Snapshot",
    "Spend",
    "SpendKey",
    "SpendPeriod",
    "SpendReply",
    "SpendRow",
    "Status",
    "StatusReply",
    "Subscribe",
    "Tags",
    "TargetStatus",
    "TokenCount",
    "Usage",
    "WaitSeconds",
    "Welcome",
    "WindowStatus",
]


def _fill_in_field_types() -> None:
    """Have msgspec fill in every message type's field information now, at import.

    msgspec does it on a type's first use, and on GIL builds (0.22) it makes the information
    visible to other threads before it is filled in: another thread converting or decoding the
    same type in that moment reads a NULL field type and the process dies of SIGSEGV (16
    threads each sending their first chat did). Importing a module holds the import lock, so no
    other thread of this process can use these types until it is done. The two unions reach
    every Struct of this module.
    """
    msgspec.msgpack.Decoder(Request | Reply)


_fill_in_field_types()
