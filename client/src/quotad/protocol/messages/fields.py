"""What every message is made of: the field types and bounds of the wire protocol, the
:class:`Message` base (its ``id``), and the parts requests and replies share (a conversation's
:class:`ChatMessage`, a request's :class:`Usage`)."""

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
MAX_NAME: Final = 256
"""The longest name (a model, an app, a user, a tag...) any message carries, in characters."""
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
MAX_TOKEN_COUNT: Final = 2**31 - 1
"""The largest token count a message or a provider's usage may carry (hundreds of times the
longest context there is): a larger one is refused rather than counted in a gate, a cost and
a ledger row."""
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKEN_COUNT)]
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
