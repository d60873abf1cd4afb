"""Providers for in-process broker tests: what the :class:`~quotad.daemon.providers.base.Provider`
protocol asks written once (:class:`InProcessProvider`: a name, no models, nothing to close,
no call it was not given), a stream of set pieces (:class:`PiecesStream`), and the config of
one provider ``p`` behind the group ``g`` those tests share (:func:`one_provider_config`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from quotad.daemon.config import Config, parse_config
from quotad.daemon.providers.base import (
    ChatDelta,
    ChatResult,
    ChatStream,
    EmbedResult,
    UsageReported,
)
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS
from quotad.protocol.messages import Chat, Usage

UNREACHABLE = "http://127.0.0.1:9/v1"
"""The base URL of a provider no test reaches over the network."""


def one_provider_config(model: str = "gpt-4o", **tables: Any) -> Config:
    """Provider ``p`` (OpenAI wire format, never reached) and group ``g`` = ``p/{model}``,
    plus any other top-level ``tables``."""
    return parse_config(
        {
            "providers": {"p": {"kind": "openai", "base_url": UNREACHABLE}},
            "models": {"g": {"targets": [f"p/{model}"]}},
            **tables,
        }
    )


class InProcessProvider:
    """A provider called in process; a test overrides the calls it needs (the others are
    not expected: ``NotImplementedError``)."""

    kind = "openai"
    name = "p"

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        raise NotImplementedError

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> ChatStream:
        raise NotImplementedError

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        pass


class PiecesStream:
    """A provider stream of set pieces, then its usage (reported when given) and finish
    reason; with ``breaks``, that error instead of its end."""

    rate_limits = NO_RATE_LIMITS

    def __init__(
        self,
        pieces: Sequence[ChatDelta],
        *,
        usage: Usage | None = None,
        finish_reason: str | None = "stop",
        breaks: Exception | None = None,
    ) -> None:
        self.pieces = pieces
        self.usage = usage or Usage()
        given = usage is not None
        self.usage_reported = UsageReported(prompt=given, completion=given)
        self.finish_reason = finish_reason
        self.breaks = breaks

        self._left = self._pieces_then_end()

    def deltas(self) -> AsyncIterator[ChatDelta]:
        """The pieces not yet taken: as a provider's stream, a second call goes on where the
        first left off (the broker takes the first piece apart)."""
        return self._left

    async def _pieces_then_end(self) -> AsyncIterator[ChatDelta]:
        for piece in self.pieces:
            yield piece
        if self.breaks is not None:
            raise self.breaks

    async def aclose(self) -> None:
        pass
