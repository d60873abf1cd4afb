"""Local token estimates (no tokenizer downloads): about four characters per token, plus a
few tokens of framing per message. Reservations use the estimate; settlement uses the
provider's reported usage, so the estimate only needs to be close, and on the high side."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from quotad.protocol.messages import ChatMessage

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def estimate_text_tokens(text: str) -> int:
    """Tokens in a piece of text: ceil(len / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_text_tokens(content: str | list[dict[str, Any]] | None) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_text_tokens(content)
    total = 0
    for part in content:
        text = part.get("text")
        if isinstance(text, str):
            total += estimate_text_tokens(text)
        elif part.get("type") in ("image_url", "image", "input_audio"):
            total += 765  # a high-detail image tile budget; settled to real usage later
    return total


def estimate_prompt_tokens(
    messages: Sequence[ChatMessage], tools: Iterable[dict[str, Any]] | None = None
) -> int:
    """Tokens the prompt of a chat request will count as, estimated."""
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + _content_text_tokens(message.content)
        if message.tool_calls:
            total += sum(estimate_text_tokens(str(call)) for call in message.tool_calls)
    if tools:
        total += sum(estimate_text_tokens(str(tool)) for tool in tools)
    return total


def estimate_input_tokens(inputs: str | Sequence[str]) -> int:
    """Tokens of embedding inputs, estimated."""
    if isinstance(inputs, str):
        return estimate_text_tokens(inputs)
    return sum(estimate_text_tokens(text) for text in inputs)
