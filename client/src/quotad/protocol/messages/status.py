"""The parts of a daemon's state that a :class:`~quotad.protocol.messages.replies.StatusReply`
holds: gates and their windows, targets, groups, queues, the cache, budgets, apps, events and
the fleet (DESIGN §10)."""

from __future__ import annotations

from typing import Literal

import msgspec

BreakerState = Literal["closed", "open", "half_open"]
"""A target's circuit breaker (DESIGN §7)."""
HealthState = Literal["healthy", "degraded", "unhealthy", "unknown"]
"""A target's health from its recent outcomes and health checks."""


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
    breaker: BreakerState = "closed"
    health: HealthState = "unknown"
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
