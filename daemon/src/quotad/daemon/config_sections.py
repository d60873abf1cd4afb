"""The config file's vocabulary (DESIGN §4): one msgspec Struct per TOML table, from
:class:`DaemonConfig` (``[daemon]``) to :class:`Config` (the whole file), and the annotated
types and bounds their keys are declared with (:data:`Positive`, :data:`Count` up to
:data:`MAX_COUNT`, :data:`Size` up to :data:`MAX_SIZE`, :data:`Price` up to :data:`MAX_PRICE`,
the guardrails' :data:`ENTITY_KINDS`).

A Struct bounds each key on its own; what needs several keys at once is checked by
:mod:`quotad.daemon.config_checks`, and :mod:`quotad.daemon.config` loads a file into these
Structs (import them from there).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Final, Literal

import msgspec

from quotad.protocol.framing import DEFAULT_MAX_FRAME, MAX_FRAME_CEILING
from quotad.protocol.messages import MAX_WAIT_S

Priority = Literal["low", "normal", "high", "critical"]
Strategy = Literal["failover", "round-robin", "weighted", "least-busy", "latency", "cost"]
EntityKind = Literal["email", "phone", "credit_card", "iban", "ip", "us_ssn", "secret"]
"""What the guardrails detect (DESIGN §12)."""
GuardrailAction = Literal["mask", "block", "log", "off"]
"""What a guardrail does with what it found; ``off``: not looked for (an app's way out)."""
ENTITY_KINDS: Final[tuple[EntityKind, ...]] = typing.get_args(EntityKind)
GUARDRAIL_ACTIONS: Final[tuple[GuardrailAction, ...]] = typing.get_args(GuardrailAction)

MAX_SIZE: Final = 1_048_576.0
"""The largest size key (``*_mb``, ``*_kb``): 1 TiB in MB (a size past it overflowed the
64-bit integers the daemon counts bytes in)."""
MAX_PRICE: Final = 1_000_000.0
"""The largest price, in USD per million tokens (a dearer one made costs overflow to inf)."""

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
MAX_COUNT: Final = 10**15
"""The largest count key (``rpm``, ``max_queue``, ``retry.attempts``...): a quadrillion, under
2**53, where the floats the gates pace with stop counting by one. A limit past 2**64 was taken,
served, and broke ``quotad status`` (its reply could not be encoded)."""

Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Size = Annotated[float, msgspec.Meta(gt=0, le=MAX_SIZE)]
Price = Annotated[float, msgspec.Meta(ge=0, le=MAX_PRICE)]

MAX_RETENTION_DAYS: Final = 36500
"""``daemon.ledger_retention_days`` at most (a century: beyond, dates are out of range)."""

MAX_DRAIN_S: Final = 86_400.0
"""``daemon.drain_s`` at most: a day."""

DEFAULT_HTTP_LISTEN: Final = "127.0.0.1:8787"


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config table: unknown keys are errors."""


class DaemonConfig(Section, kw_only=True):
    """``[daemon]``: where the daemon listens and keeps its state."""

    socket: str = ""
    state_dir: str = ""
    durability: Literal["normal", "full"] = "normal"
    max_db_mb: Annotated[float, msgspec.Meta(ge=0, le=MAX_SIZE)] = 0.0
    """Largest size of quotad.db (0: no limit); past it, writes fail with a clear error."""
    ledger_retention_days: Annotated[float, msgspec.Meta(ge=0, le=MAX_RETENTION_DAYS)] = 0.0
    """Ledger and audit rows older than this many days are deleted (0: all are kept); the
    daily spend summaries are kept at least 62 days (:mod:`quotad.daemon.store.retention`)."""
    max_frame: Annotated[int, msgspec.Meta(ge=1024, le=MAX_FRAME_CEILING)] = DEFAULT_MAX_FRAME
    drain_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_DRAIN_S)] = 10.0
    """On SIGTERM, how long requests in flight may take to finish (1e308 crashed the stop)."""
    allow_uids: list[int] = msgspec.field(default_factory=list)
    allow_gids: list[int] = msgspec.field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    """``text`` lines, or one JSON object per line (``quotad serve --log-format`` overrides)."""
    timezone: str = ""
    max_connections: Count = 1024
    """Connections the Unix socket holds at once; one more is answered ``overloaded``."""
    max_in_flight_per_connection: Count = 4096
    """Requests in flight plus permits held by one connection; one more is ``overloaded``."""
    hello_timeout_s: Positive = 10.0
    """How long a new connection may take to send its Hello before it is closed."""


class HttpConfig(Section, kw_only=True):
    """``[http]``: the OpenAI/Anthropic-compatible front door."""

    listen: str = DEFAULT_HTTP_LISTEN
    auth: Literal["keys", "none"] = "keys"
    max_body_mb: Size = 16.0
    max_header_kb: Size = 64.0
    idle_timeout_s: Positive = 75.0
    read_timeout_s: Positive = 30.0
    max_connections: Count = 1024


class LimitConfig(Section, kw_only=True):
    """One extra limit window: ``{ requests = N, window_s = S }`` or ``{ tokens = N, ... }``."""

    window_s: Positive
    requests: Count | None = None
    tokens: Count | None = None


class RateLimits(Section, kw_only=True):
    """The limit keys shared by providers, models and apps."""

    rpm: Count | None = None
    tpm: Count | None = None
    rpd: Count | None = None
    tpd: Count | None = None
    limits: list[LimitConfig] = msgspec.field(default_factory=list)
    pace: bool | None = None
    """Spread admissions over the window (``gates.burst`` of the limit at once beyond the
    pace) instead of admitting the whole limit at once; unset: on for provider and model
    gates (providers enforce limits over shorter slices), off for app gates."""


class ModelConfig(RateLimits, kw_only=True):
    """``[providers.X.models."m"]``: per-model limits (OpenAI limits are per model)."""


class BreakerConfig(Section, kw_only=True):
    """A target's circuit breaker."""

    failures: Count = 5
    failure_ratio: Fraction = 0.5
    window_s: Positive = 30.0
    cooldown_s: Positive = 30.0
    probes: Count = 1
    min_calls: Count = 10
    max_cooldown_s: Positive | None = None  # None: 10 x cooldown_s


class ProviderConfig(RateLimits, kw_only=True):
    """``[providers.X]``: one provider account, or ``kind = "local"``: the embedding model
    bundled with ``quotad[semantic]``, computed inside the daemon (no ``base_url``)."""

    kind: Literal["openai", "anthropic", "local"]
    base_url: str = ""
    api_key_env: str = ""
    api_key_file: str = ""
    timeout_s: Positive = 60.0
    connect_timeout_s: Positive = 5.0
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    health_check_s: NonNegative = 0.0
    max_concurrency: Count = 64
    max_response_mb: Annotated[float, msgspec.Meta(gt=0, le=4096)] = 32.0
    """The largest answer read from this provider (a whole body, or a whole stream), MiB."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)


class GroupConfig(Section, kw_only=True):
    """``[models.G]``: a model group, what clients ask for."""

    targets: Annotated[list[str], msgspec.Meta(min_length=1)]
    strategy: Strategy = "failover"
    weights: list[Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(default_factory=list)


class SemanticConfig(Section, kw_only=True):
    """``[cache.semantic]``: answers for questions asked in other words (DESIGN §11)."""

    mode: Literal["off", "shadow", "on"] = "off"
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.92
    max_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.0


class CacheConfig(Section, kw_only=True):
    """``[cache]``: the response cache."""

    mode: Literal["on", "off"] = "on"
    ttl_s: Positive = 86400.0
    max_mb: Size = 256.0
    eviction: Literal["lru", "lfu", "cost"] = "lru"
    semantic: SemanticConfig = msgspec.field(default_factory=SemanticConfig)


class BudgetsConfig(Section, kw_only=True):
    """``[budgets]``: global spend limits."""

    daily_usd: NonNegative | None = None
    monthly_usd: NonNegative | None = None
    alert_at: Fraction = 0.8


class GuardrailsConfig(Section, kw_only=True):
    """``[guardrails]`` (DESIGN §12): the action for each entity kind found in what is sent
    (``input``) and in what comes back (``output``), and whether masked values are put back.
    Entities and actions are checked by ``config_checks._guardrails_problems``, which names
    the key path (msgspec's own errors cannot name a table's key), so after loading every
    value is one of :data:`GUARDRAIL_ACTIONS`."""

    input: dict[str, Any] = msgspec.field(default_factory=dict)
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    restore: bool = True


class AppGuardrailsConfig(Section, kw_only=True):
    """``[apps.A.guardrails]``: any key of ``[guardrails]``, for this app. ``input`` and
    ``output`` are merged entity by entity over the global ones; ``restore`` replaces it."""

    input: dict[str, Any] = msgspec.field(default_factory=dict)
    output: dict[str, Any] = msgspec.field(default_factory=dict)
    restore: bool | None = None


class AppConfig(RateLimits, kw_only=True):
    """``[apps.A]``: per-app policy; apps are named by clients or HTTP keys."""

    priority: Priority = "normal"
    share: Positive = 1.0
    daily_usd: NonNegative | None = None
    monthly_usd: NonNegative | None = None
    guardrails: AppGuardrailsConfig = msgspec.field(default_factory=AppGuardrailsConfig)


class PriceConfig(Section, kw_only=True):
    """``[prices."provider/model"]``: USD per 1M tokens."""

    input: Price
    output: Price
    cached_input: Price | None = None


class GatesConfig(Section, kw_only=True):
    """``[gates]``: how admissions are reserved and queued."""

    guard_s: NonNegative = 0.05
    """How much longer than its window an admission stays counted, from its hand-off to the
    provider call: the jitter allowed between that hand-off and arrival at the provider."""
    burst: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.1
    """On paced gates, the share of a limit that may go at once beyond the pace (1: none
    paced)."""
    default_max_tokens: Count = 1024
    max_wait_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_S)] = 30.0
    max_queue: Count = 10000
    aging_s: Positive = 10.0
    lease_s: Positive = 120.0
    max_lease_s: Positive = 600.0
    """The longest lease an ``Acquire`` may ask for (a longer one is refused)."""


class RetryConfig(Section, kw_only=True):
    """``[retry]``: retries and the retry budget."""

    attempts: Count = 3
    base_s: Positive = 0.1
    max_s: Positive = 20.0
    budget_ratio: Fraction = 0.2
    budget_min: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] = 3
    budget_window_s: Positive = 10.0
    deadline_s: Positive = 120.0


class ClusterConfig(Section, kw_only=True):
    """``[cluster]`` (DESIGN §10): the daemons of several hosts share gates, 429 pauses and
    budgets through one Redis or Valkey. ``redis_url = ""`` (the default) is one host."""

    redis_url: str = ""
    """redis://, rediss:// or unix:// URL; never with a password in it."""
    redis_password_env: str = ""
    redis_password_file: str = ""
    key_prefix: str = "quotad"
    """Keys are ``{key_prefix}:...``; several fleets may share one Redis."""
    host: str = ""
    """This daemon's name in the fleet; "" = the hostname."""
    on_unreachable: Literal["share", "closed"] = "share"
    margin: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    """``share``: the fraction of each limit the fleet leaves unused while Redis is away."""
    lease_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 1.0
    """How long a borrowed slice of a limit may be spent locally before it is returned."""
    timeout_s: Annotated[float, msgspec.Meta(ge=0.01, le=30)] = 0.25
    """A Redis call slower than this puts the host in degraded mode."""
    heartbeat_s: Annotated[float, msgspec.Meta(ge=0.1, le=60)] = 1.0
    host_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0
    """A host counts as seen while its last heartbeat is this recent."""


class Config(Section, kw_only=True):
    """The whole config file."""

    daemon: DaemonConfig = msgspec.field(default_factory=DaemonConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    models: dict[str, GroupConfig] = msgspec.field(default_factory=dict)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    budgets: BudgetsConfig = msgspec.field(default_factory=BudgetsConfig)
    apps: dict[str, AppConfig] = msgspec.field(default_factory=dict)
    prices: dict[str, PriceConfig] = msgspec.field(default_factory=dict)
    gates: GatesConfig = msgspec.field(default_factory=GatesConfig)
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    guardrails: GuardrailsConfig = msgspec.field(default_factory=GuardrailsConfig)
    source: str = ""
    """Where this config came from (a path, or "built-in default"); not a TOML key."""
