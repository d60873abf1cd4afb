"""What every provider wire format offers the broker, and the values they exchange.

A provider knows one wire format (OpenAI-compatible or Anthropic) and one account (base URL,
key, one pooled httpx client). It knows nothing of gates, budgets or routing: it turns a
protocol :class:`~quotad.protocol.messages.Chat` into an HTTP call and the answer into a
:class:`ChatResult`, a :class:`ChatStream` or a classified :class:`ProviderError`. Every answer,
good or bad, carries the provider's rate-limit headers parsed into
:class:`~quotad.daemon.rate_limit_info.RateLimitInfo`.

Exceptions::

    ProviderError            kind says which:
        connect              could not connect (refused, DNS, reset before an answer)
        timeout              connect, read or the whole request timed out
        rate_limited         HTTP 429 (retry_after_s from retry-after)
        server               HTTP 5xx
        client               HTTP 4xx other than 408/409/429: the caller's error
        conflict             HTTP 408 or 409: retryable like a server error
        protocol             the answer could not be understood
        stream_broken        a stream ended without its end, after it had started
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final, Literal, NamedTuple, Protocol

import msgspec

from quotad.daemon.rate_limit_info import NO_RATE_LIMITS, RateLimitInfo
from quotad.protocol.messages import Chat, Usage

ErrorKind = Literal[
    "connect",
    "timeout",
    "rate_limited",
    "server",
    "client",
    "conflict",
    "protocol",
    "stream_broken",
]
RETRYABLE_KINDS: frozenset[str] = frozenset(
    {"connect", "timeout", "rate_limited", "server", "conflict", "stream_broken"}
)
# A provider's usage holds protocol.messages.TokenCount: a count past MAX_TOKEN_COUNT, or a
# negative one, makes the answer one that cannot be understood (``protocol``).
UNDECODABLE: Final = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
"""What decoding a provider's JSON may raise: msgspec's own error (not JSON, or not the
expected shape), RecursionError (nested past msgspec's depth), UnicodeDecodeError (a string
whose bytes are not UTF-8: msgspec raises it as it is)."""


class ProviderError(Exception):
    """A provider call failed; ``kind`` classifies it (see the module docstring)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        rate_limits: RateLimitInfo = NO_RATE_LIMITS,
        body: Any = None,
        field: str | None = None,
        may_bill: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.may_bill = may_bill
        """The provider had the whole request and no answer said it refused it (its answer
        did not come in time, the connection was lost while waiting for it, or it came as a
        2xx that could not be read): it may run the call to its end and bill it. An error
        status or event, and a failure to connect or to send, are never billed."""
        self.field = field
        """The request field a ``client`` error is about, when quotad's adapter knows it."""
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.rate_limits = rate_limits
        self.body = body

    @property
    def retryable(self) -> bool:
        """Whether another attempt (here or at another target) may succeed."""
        return self.kind in RETRYABLE_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind!r}, {self.message!r}, status={self.status})"


class UsageReported(NamedTuple):
    """Which of an answer's token counts its provider reported. One it left out is 0 in the
    answer's :class:`~quotad.protocol.messages.Usage` (a wire message, which cannot tell
    "not reported" from "reported 0"): an OpenAI-compatible server that ignores
    ``stream_options.include_usage``, a body without ``usage``, an Anthropic stream without
    the usage of ``message_start`` or ``message_delta``. The broker charges an upper bound
    for it (:meth:`~quotad.daemon.request_context.RequestContext.charged_usage`)."""

    prompt: bool
    completion: bool
    """A final count: in an Anthropic stream, ``message_delta``'s, not ``message_start``'s."""


ALL_REPORTED: Final = UsageReported(prompt=True, completion=True)
NOTHING_REPORTED: Final = UsageReported(prompt=False, completion=False)


class ChatResult(msgspec.Struct, kw_only=True):
    """A provider's complete answer to a chat request."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    usage_reported: UsageReported = ALL_REPORTED
    """Which counts of ``usage`` the provider reported (each adapter says what it left out)."""
    rate_limits: RateLimitInfo = NO_RATE_LIMITS


class ChatDelta(msgspec.Struct, kw_only=True):
    """One piece of a streamed answer."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class ProviderAnswer(Protocol):
    """Any provider result: each carries the provider's rate-limit headers."""

    @property
    def rate_limits(self) -> RateLimitInfo: ...


class ChatStream(Protocol):
    """An open streamed answer: the provider accepted the request (headers are in).

    Iterate :meth:`deltas` for the pieces; after it is exhausted, ``usage`` and
    ``finish_reason`` hold the totals, and ``usage_reported`` which counts of ``usage`` the
    provider reported. A break after the start raises ``ProviderError("stream_broken")`` from
    the iteration. Always :meth:`aclose` it.
    """

    rate_limits: RateLimitInfo
    usage: Usage
    usage_reported: UsageReported
    finish_reason: str | None

    def deltas(self) -> AsyncIterator[ChatDelta]: ...

    async def aclose(self) -> None: ...


class EmbedResult(msgspec.Struct, kw_only=True):
    """Embedding vectors in input order."""

    embeddings: list[list[float]]
    usage: Usage = msgspec.field(default_factory=Usage)
    usage_reported: UsageReported = ALL_REPORTED
    """Whether the provider reported the prompt's count (``prompt``: embeddings have no
    completion)."""
    rate_limits: RateLimitInfo = NO_RATE_LIMITS


class Provider(Protocol):
    """One provider account speaking one wire format."""

    name: str
    kind: str

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        """One chat completion; ``max_tokens`` is the effective limit the broker reserved for."""
        ...

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        """Start a streamed chat completion; returns once the provider has accepted it."""
        ...

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        """Embeddings of ``inputs``."""
        ...

    async def list_models(self) -> list[str]:
        """The model names the provider serves (``GET {base_url}/models``); also a health probe."""
        ...

    async def aclose(self) -> None:
        """Close the pooled HTTP client."""
        ...
