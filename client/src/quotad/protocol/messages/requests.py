"""The requests: what a client sends a daemon (:data:`Request`, DESIGN §5)."""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from quotad.protocol.messages.fields import (
    PROTOCOL_VERSION,
    CacheMode,
    ChatMessage,
    Message,
    Name,
    PositiveInt,
    Priority,
    SettleStatus,
    SpendKey,
    SpendPeriod,
    Tags,
    TokenCount,
    WaitSeconds,
)


class Hello(Message):
    """First frame of a connection: who the client is."""

    version: int = PROTOCOL_VERSION
    app: Name = ""
    client: Name = ""


class PipelineRequest(Message, kw_only=True):
    """What a request the pipeline serves (:class:`Chat`, :class:`Embed`: routed, gated, cached,
    recorded) says of how to serve it: its priority (the app's when None), how long it may
    wait at the gates, the cache mode, its app (the connection's when ""), user and tags, and
    ``extra``, passed through to the provider."""

    priority: Priority | None = None
    max_wait_s: WaitSeconds | None = None
    cache: CacheMode = "use"
    app: Name = ""
    user: Name = ""
    tags: Tags = msgspec.field(default_factory=list)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Chat(PipelineRequest):
    """A chat completion through the daemon (plain, or streamed when ``stream``)."""

    model: Name
    messages: list[ChatMessage]
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False


class Embed(PipelineRequest):
    """Embeddings for one or more input strings."""

    model: Name
    input: str | list[str]
    dimensions: PositiveInt | None = None


class Acquire(Message):
    """Ask for a permit on a target's gates, for a caller that calls the provider itself."""

    target: Name
    tokens: TokenCount = 0
    priority: Priority | None = None
    max_wait_s: WaitSeconds | None = None
    app: Name = ""
    lease_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Settle(Message):
    """Report what a permitted call really used; returns the unused reservation."""

    permit_id: Name
    tokens_used: TokenCount = 0
    status: SettleStatus = "ok"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    prompt_tokens: TokenCount | None = None
    completion_tokens: TokenCount | None = None


class Cancel(Message):
    """Stop the request whose id is ``id``; it answers ``Error(code="cancelled")``."""


class Status(Message):
    """Ask for the daemon's state (targets, gates, breakers, queues, cache, budgets)."""


MIN_INTERVAL_S: Final = 0.05
"""The shortest ``Subscribe.interval_s``."""
MAX_INTERVAL_S: Final = 3600.0
"""The longest ``Subscribe.interval_s``."""


class Subscribe(Message):
    """Ask for a :class:`Snapshot` every ``interval_s`` until cancelled."""

    interval_s: Annotated[float, msgspec.Meta(ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)] = 1.0
    requests: bool = True


class Spend(Message):
    """Ask for a ledger report: this daemon's, or with ``fleet`` every host's of its fleet
    (DESIGN §10; ``bad_request`` from a daemon with no ``[cluster]``)."""

    period: SpendPeriod = "day"
    by: SpendKey = "app"
    fleet: bool = False


class Admin(Message):
    """An operator action: ``enable``/``disable``/``reset`` a target, ``reload`` the config,
    or ``key_create``/``key_list``/``key_revoke`` for HTTP front door keys."""

    action: Name
    target: Name = ""
    args: dict[str, Any] = msgspec.field(default_factory=dict)


Request = Hello | Chat | Embed | Acquire | Settle | Cancel | Status | Subscribe | Spend | Admin
