"""The replies: what a daemon sends a client (:data:`Reply`, DESIGN §5); each carries the id of
the request it answers."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from quotad.protocol.messages.fields import (
    PROTOCOL_VERSION,
    CacheMatch,
    Message,
    Usage,
)
from quotad.protocol.messages.status import (
    AppStatus,
    BudgetStatus,
    CacheStatus,
    ClusterStatus,
    Event,
    GateStatus,
    GroupStatus,
    QueueStatus,
    TargetStatus,
)


class Welcome(Message, omit_defaults=False):
    """Answer to :class:`Hello`. Every field is written, defaults included (once per
    connection), so that a peer reading plain MessagePack sees the protocol version."""

    version: int = PROTOCOL_VERSION
    daemon_version: str = ""
    features: list[str] = msgspec.field(default_factory=list)
    max_frame: int = 0
    """The largest frame this daemon takes or sends (``daemon.max_frame``); a client reads
    replies up to it. 0: not said (a daemon before this field), the protocol's default."""


class PipelineReply(Message, kw_only=True):
    """What the answer to a :class:`~quotad.protocol.messages.requests.PipelineRequest` tells
    of how it was served: usage and cost, whether the cache answered, which target, after how
    many attempts and how long at the gates and in all, and its ledger row's id."""

    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    cached: bool = False
    target: str = ""
    attempts: int = 0
    wait_s: float = 0.0
    latency_s: float = 0.0
    request_id: str = ""
    saved_usd: float = 0.0
    """On a cache hit: what the call it replaced cost."""


class ChatReply(PipelineReply):
    """A completed chat request."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    cache: CacheMatch = ""
    """How a cache hit was found: ``exact`` (the same request) or ``semantic`` (the same
    question in other words, DESIGN §11); "" when the answer is not from the cache."""
    similarity: float = 0.0
    """On a semantic hit: the cosine similarity of the two questions' last user turns."""


class ChatChunk(Message):
    """One piece of a streamed chat reply. A stream's first chunk also says who is answering
    (``request_id``, ``target``, ``attempts``, ``wait_s``, ``cached``), which the HTTP front
    door sends as response headers before the end; later chunks leave them at their defaults."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    request_id: str = ""
    target: str = ""
    attempts: int = 0
    wait_s: float = 0.0
    cached: bool = False
    cache: CacheMatch = ""
    similarity: float = 0.0


class ChatEnd(ChatReply):
    """The end of a stream: the whole content and the request's accounting."""


class EmbedReply(PipelineReply):
    """Embeddings, one vector per input string, in input order."""

    embeddings: list[list[float]] = msgspec.field(default_factory=list)


class Permit(Message):
    """A granted :class:`Acquire`: settle it by ``permit_id`` before ``lease_s`` runs out."""

    permit_id: str = ""
    wait_s: float = 0.0
    lease_s: float = 0.0


class StatusReply(Message):
    """The daemon's state at one instant."""

    daemon_version: str = ""
    pid: int = 0
    uptime_s: float = 0.0
    socket: str = ""
    http: str = ""
    config_path: str = ""
    connections: int = 0
    in_flight: int = 0
    requests_total: int = 0
    targets: list[TargetStatus] = msgspec.field(default_factory=list)
    groups: list[GroupStatus] = msgspec.field(default_factory=list)
    gates: list[GateStatus] = msgspec.field(default_factory=list)
    queues: QueueStatus = msgspec.field(default_factory=QueueStatus)
    cache: CacheStatus = msgspec.field(default_factory=CacheStatus)
    budgets: list[BudgetStatus] = msgspec.field(default_factory=list)
    apps: list[AppStatus] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)
    permits: int = 0
    """Permits granted (``Acquire``) and not yet settled: each holds its gates' admission, and
    its provider's in-flight slot, like a request in flight."""
    problems: list[str] = msgspec.field(default_factory=list)
    """What keeps the daemon from serving fully now, one short line each (e.g. a listener
    whose accept fails: "unix socket: accept failing: EMFILE (too many open files) since 12 s");
    empty when all is well."""
    cluster: ClusterStatus | None = None
    """The fleet (DESIGN §10); None with no ``[cluster]``."""


class RequestRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One finished request, as shown in a live tail."""

    request_id: str = ""
    time: float = 0.0
    kind: str = "chat"
    app: str = ""
    target: str = ""
    status: str = "ok"
    """``ok``, ``semantic`` (a semantic cache hit), an error code or ``cancelled``."""
    wait_s: float = 0.0
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0
    priority: str = "normal"
    semantic: bool = False
    """A semantic cache hit (``cached`` is true too)."""


SNAPSHOT_REQUESTS: Final = 200
"""At most this many finished requests per :class:`Snapshot` (the newest)."""


class Snapshot(Message):
    """Periodic state for a :class:`Subscribe`: status plus the requests finished since the
    previous snapshot (at most the newest :data:`SNAPSHOT_REQUESTS`)."""

    seq: int = 0
    time: float = 0.0
    status: StatusReply = msgspec.field(default_factory=StatusReply)
    requests: list[RequestRecord] = msgspec.field(default_factory=list)
    requests_per_s: float = 0.0


class SpendRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Ledger totals for one key of a report (an app, a model, a target, a day or a host)."""

    key: str = ""
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cache_hits: int = 0
    saved_usd: float = 0.0
    unpriced: bool = False
    anomalous: bool = False
    semantic_hits: int = 0
    """The semantic hits among ``cache_hits`` (their savings are in ``saved_usd``)."""
    blocked: int = 0
    """Requests a guardrail refused (DESIGN §12; counted in ``errors`` too)."""
    entities: dict[str, int] = msgspec.field(default_factory=dict)
    """Entities the guardrails found in requests and replies, by kind (never what)."""


class SpendReply(Message):
    """A ledger report for a period, grouped by one key."""

    period: str = "day"
    by: str = "app"
    since: float = 0.0
    until: float = 0.0
    total: SpendRow = msgspec.field(default_factory=SpendRow)
    rows: list[SpendRow] = msgspec.field(default_factory=list)
    budgets: list[BudgetStatus] = msgspec.field(default_factory=list)
    forecast_month_usd: float | None = None
    fleet: bool = False
    """Every host's spend (``quotad spend --fleet``): the budgets' ``spent_usd`` is then the
    fleet's, their ``reserved_usd`` what the hosts hold of them."""
    hosts: list[str] = msgspec.field(default_factory=list)
    """The hosts a fleet report counts (those with spend in its days)."""


class Ok(Message):
    """A request that has nothing else to answer succeeded."""

    message: str = ""
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class Error(Message):
    """A request failed; ``code`` is one of :data:`quotad.protocol.errors.ERROR_CODES`."""

    code: str = "internal"
    message: str = ""
    retry_after_s: float | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


Reply = (
    Welcome
    | ChatReply
    | ChatChunk
    | ChatEnd
    | EmbedReply
    | Permit
    | StatusReply
    | Snapshot
    | SpendReply
    | Ok
    | Error
)

CONTINUING_REPLIES: Final = (ChatChunk, Snapshot)
"""Replies after which more replies with the same id follow; any other reply ends its request."""
