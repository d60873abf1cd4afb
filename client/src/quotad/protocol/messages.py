"""The messages of the quotad wire protocol (DESIGN §5).

Every message is a ``msgspec.Struct`` tagged with its class name (field ``type``), in one
tagged union per direction: :data:`Request` (client → daemon) and :data:`Reply`
(daemon → client). Requests carry an ``id`` chosen by the client, unique per connection;
replies carry the id of the request they answer, so many requests may be in flight on one
connection. Every field added after version 1 must have a default, so that old peers keep
decoding new messages (schema evolution); unknown fields are ignored for the same reason.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

PROTOCOL_VERSION = 1

Priority = Literal["low", "normal", "high", "critical"]
PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high", "critical")
CacheMode = Literal["use", "bypass", "refresh", "only"]
Role = Literal["system", "developer", "user", "assistant", "tool"]
SettleStatus = Literal["ok", "error", "rate_limited", "cancelled"]
SpendPeriod = Literal["day", "week", "month"]
SpendKey = Literal["app", "model", "target", "day", "host"]
CacheMatch = Literal["", "exact", "semantic"]
SEMANTIC_HIT: Final = "semantic"
"""The ledger status of a request the semantic cache answered (DESIGN §11: its own status)."""
ANSWERED: Final = frozenset({"ok", SEMANTIC_HIT})
"""The ledger statuses of a request that was answered; any other is an error code or
``cancelled``."""

NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
MAX_WAIT_S: Final = 86_400.0
"""The longest ``max_wait_s`` a request may ask for: a day (``inf`` waited for ever)."""
WaitSeconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
RequestId = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(max_length=256)]
MAX_TAGS: Final = 64
"""The most tags a request may carry, each a :data:`Name`: they are kept in its ledger row."""
Tags = Annotated[list[Name], msgspec.Meta(max_length=MAX_TAGS)]


class Message(msgspec.Struct, kw_only=True, omit_defaults=True, tag=True):
    """Base of every framed message: ``id`` pairs a reply with its request."""

    id: RequestId = 0


# --------------------------------------------------------------------------- shared parts


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message of a conversation, in the OpenAI chat shape."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tokens a request used, as the provider reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


# --------------------------------------------------------------------------- client → daemon


class Hello(Message):
    """First frame of a connection: who the client is."""

    version: int = PROTOCOL_VERSION
    app: Name = ""
    client: Name = ""


class Chat(Message):
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
    priority: Priority | None = None
    max_wait_s: WaitSeconds | None = None
    cache: CacheMode = "use"
    app: Name = ""
    user: Name = ""
    tags: Tags = msgspec.field(default_factory=list)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Embed(Message):
    """Embeddings for one or more input strings."""

    model: Name
    input: str | list[str]
    dimensions: PositiveInt | None = None
    priority: Priority | None = None
    max_wait_s: WaitSeconds | None = None
    cache: CacheMode = "use"
    app: Name = ""
    user: Name = ""
    tags: Tags = msgspec.field(default_factory=list)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Acquire(Message):
    """Ask for a permit on a target's gates, for a caller that calls the provider itself."""

    target: Name
    tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    priority: Priority | None = None
    max_wait_s: WaitSeconds | None = None
    app: Name = ""
    lease_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Settle(Message):
    """Report what a permitted call really used; returns the unused reservation."""

    permit_id: Name
    tokens_used: Annotated[int, msgspec.Meta(ge=0)] = 0
    status: SettleStatus = "ok"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    prompt_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None
    completion_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


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


# --------------------------------------------------------------------------- daemon → client


class Welcome(Message, omit_defaults=False):
    """Answer to :class:`Hello`. Every field is written, defaults included (once per
    connection), so that a peer reading plain MessagePack sees the protocol version."""

    version: int = PROTOCOL_VERSION
    daemon_version: str = ""
    features: list[str] = msgspec.field(default_factory=list)
    max_frame: int = 0
    """The largest frame this daemon takes or sends (``daemon.max_frame``); a client reads
    replies up to it. 0: not said (a daemon before this field), the protocol's default."""


class ChatReply(Message):
    """A completed chat request."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
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


class EmbedReply(Message):
    """Embeddings, one vector per input string, in input order."""

    embeddings: list[list[float]] = msgspec.field(default_factory=list)
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


class Permit(Message):
    """A granted :class:`Acquire`: settle it by ``permit_id`` before ``lease_s`` runs out."""

    permit_id: str = ""
    wait_s: float = 0.0
    lease_s: float = 0.0


class WindowStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One limit window of a gate: what is used of it now."""

    unit: Literal["requests", "tokens"] = "requests"
    limit: int = 0
    window_s: float = 0.0
    used: int = 0
    provider_remaining: int | None = None
    pace_s: float | None = None
    """On a paced window, the seconds per unit it spreads admissions to (window_s / limit)."""


class GateStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A gate (provider, model or app scope) and its windows."""

    name: str = ""
    scope: Literal["provider", "model", "app"] = "provider"
    windows: list[WindowStatus] = msgspec.field(default_factory=list)
    paused_until: float | None = None


class TargetStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One ``provider/model`` target as the daemon sees it."""

    name: str = ""
    provider: str = ""
    model: str = ""
    kind: str = ""
    enabled: bool = True
    breaker: Literal["closed", "open", "half_open"] = "closed"
    health: Literal["healthy", "degraded", "unhealthy", "unknown"] = "unknown"
    uptime_pct: float | None = None
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    latency_ewma_s: float | None = None
    paused_until: float | None = None
    unpriced: bool = False
    gates: list[str] = msgspec.field(default_factory=list)
    recent: str = ""
    breaker_until: float | None = None
    """Wall time when an open breaker turns half-open."""
    breaker_opens: int = 0
    """How often the breaker has opened since the daemon started."""


class GroupStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A model group: its strategy and the current order of its targets."""

    name: str = ""
    strategy: str = ""
    order: list[str] = msgspec.field(default_factory=list)
    why: str = ""


class QueueStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Waiters queued for gate admission, by priority."""

    low: int = 0
    normal: int = 0
    high: int = 0
    critical: int = 0


class CacheStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Response cache figures."""

    mode: str = "off"
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0
    hits: int = 0
    misses: int = 0
    hit_rate: float = 0.0
    evictions: int = 0
    saved_usd: float = 0.0
    """What the hits saved since the daemon started, exact and semantic."""
    semantic_mode: str = "off"
    """``[cache.semantic] mode``: off, shadow or on (DESIGN §11)."""
    semantic_problem: str = ""
    """Why the semantic cache is not running although its mode asks for it ("" when fine)."""
    semantic_entries: int = 0
    """Questions held in the semantic index (answers that may be served semantically)."""
    semantic_lookups: int = 0
    """Exact misses that were looked up semantically."""
    semantic_hits: int = 0
    """Semantic hits served (mode on); ``hits`` counts exact hits only."""
    semantic_saved_usd: float = 0.0
    """The semantic hits' share of ``saved_usd``."""
    would_be_hits: int = 0
    """Shadow mode: semantic hits found but not served (the provider was called)."""
    shadow_compared: int = 0
    """Would-be hits whose answer was compared with the provider's."""
    shadow_agreed: int = 0
    """Compared would-be hits whose answer agreed with the provider's."""
    shadow_identical: int = 0
    """Compared would-be hits whose answer was the provider's, word for word."""
    semantic_ineligible: dict[str, int] = msgspec.field(default_factory=dict)
    """Requests not looked up semantically, by reason (``warm``: temperature above
    ``max_temperature``; ``script``, ``too_long``, ``not_text``...)."""
    semantic_refused: dict[str, int] = msgspec.field(default_factory=dict)
    """Semantic lookups without a hit, by the rule that refused the most similar candidate
    (``similarity``: none was similar enough; ``numbers``, ``negation``, ``literals``...)."""


class BudgetStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One budget (global or per app, daily or monthly) and its use."""

    name: str = ""
    scope: str = "global"
    period: Literal["day", "month"] = "day"
    limit_usd: float = 0.0
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    alert: bool = False
    fleet: bool = False
    """With ``[cluster]``: ``spent_usd`` is every host's spent and ``reserved_usd`` what the
    hosts hold of it (their requests in flight and a little ahead), as this host last heard
    from the fleet's Redis (``as_of``), with its own figures as they are now. False: this
    host's own figures (one host, or a fleet whose figures this host does not know freshly)."""
    as_of: float = 0.0
    """Wall time the fleet's figures were last heard from Redis (0 when ``fleet`` is False)."""


class AppStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One app (named by its clients or keys): its policy and activity."""

    name: str = ""
    priority: str = "normal"
    share: float = 1.0
    requests: int = 0
    in_flight: int = 0
    queued: int = 0
    wait_s_total: float = 0.0
    spend_today_usd: float = 0.0
    blocked: int = 0
    """Requests a guardrail refused since the daemon started (DESIGN §12)."""
    entities: dict[str, int] = msgspec.field(default_factory=dict)
    """Entities the guardrails found in its requests and replies since the daemon started,
    by kind (never what they were)."""


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Something an operator should notice (breaker opened, budget alert, reload…)."""

    time: float = 0.0
    kind: str = ""
    message: str = ""


class ClusterHost(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A host of the fleet with a recent heartbeat, as it last reported itself."""

    name: str = ""
    seen_s_ago: float = 0.0
    in_flight: int = 0
    queued: int = 0
    timezone: str = ""


class ClusterWindow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One fleet-wide window from this host's side: what it holds (borrowed, not yet
    admitted) and the fleet's usage as last seen (``gate|unit|window_s``)."""

    name: str = ""
    held: int = 0
    fleet_used: int = 0
    provider_external: int = 0


class ClusterStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``[cluster]``: this daemon's place in the fleet and the health of its Redis.

    ``health``: ``connecting``, ``resyncing``, ``connected`` or ``degraded``; ``mode``: how
    the gates admit now, ``fleet`` (borrowing from Redis), or while Redis is away ``share``
    (this host's share of each limit) or ``closed`` (only what it already holds)."""

    host: str = ""
    redis_url: str = ""
    key_prefix: str = ""
    health: str = "connecting"
    reason: str = ""
    since: float = 0.0
    """Wall time of the last change of health."""
    on_unreachable: str = "share"
    mode: str = "closed"
    hosts_seen: int = 1
    hosts: list[ClusterHost] = msgspec.field(default_factory=list)
    windows: list[ClusterWindow] = msgspec.field(default_factory=list)
    rtt_ms: float = 0.0
    redis_calls: int = 0
    redis_failures: int = 0
    borrows: int = 0
    refused: int = 0


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


class Snapshot(Message):
    """Periodic state for a :class:`Subscribe`: status plus the requests finished since the
    previous snapshot (sampled: at most the newest few hundred)."""

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
