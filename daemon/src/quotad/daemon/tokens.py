"""Token counts of a request before the provider says what it used, for two different uses.

**Estimates** (``estimate_*``): about four characters a token, plus a few tokens of framing
per message. The rate gates reserve them for a chat's prompt and settle to the provider's
reported usage; OpenAI itself counts a request against TPM by such an estimate, so close is
what matters there. (Embedding inputs are reserved at their upper bound.)

**Upper bounds** (``*_upper_bound``): a count the provider's own can never exceed, for the
budgets, which must never be exceeded (their reservation is settled to the real cost after).
Byte-level BPE tokenizers (OpenAI's cl100k and o200k, Llama 3, Claude's) and SentencePiece with
byte fallback never produce more tokens than the UTF-8 bytes of a text, where characters/4
undercounts Japanese twelvefold. So:

- every string of a message counts its UTF-8 bytes: the content, parts of any type and every
  field in them (nested too), ``name``, ``tool_calls``, ``tool_call_id``; and so do tools,
  ``tool_choice``, ``response_format`` and the passthrough ``extra`` (as their JSON, whose bytes
  bound those of the strings, keys and numbers in it);
- framing: :data:`TOKENS_PER_MESSAGE_UPPER_BOUND` per message (special tokens and the role;
  OpenAI's is 3 or 4), :data:`TOKENS_PER_REPLY_UPPER_BOUND` once (the primed reply; OpenAI's
  is 3); with tools, :data:`TOOLS_FRAMING_TOKENS_UPPER_BOUND` once (Anthropic's tool-use system
  prompt is 346 tokens) and :data:`TOKENS_PER_TOOL_UPPER_BOUND` per function tool; a tool that
  Anthropic defines (computer, text editor, bash, memory) brings a fixed definition of up to
  735 tokens (computer use, with its ~500-token system prompt):
  :data:`DEFINED_TOOL_TOKENS_UPPER_BOUND` each;
- an image counts :data:`IMAGE_TOKENS_UPPER_BOUND`, whatever its bytes or where it lives:
  providers resize an image before counting it, so its tokens have a ceiling, and its bytes
  do not bound them (a 1x1 PNG at high detail is 255 tokens at gpt-4o and 8,500 at gpt-4o-mini).
  The ceiling is gpt-4o-mini's high-detail maximum: 2,833 + 8 tiles x 5,667 = 48,169 tokens
  (gpt-4o's is 1,445, gpt-4.1-nano's 3,779, Claude's about 1,600, or 4,784 at high resolution);
- audio counts the bytes of its base64 data: any codec takes more than 750 bytes a second of
  speech, providers count at most a few dozen tokens a second;
- content whose tokens its bytes do not bound, or that the request does not carry, makes the
  prompt's bound a whole context window, :data:`CONTEXT_WINDOW_TOKENS_UPPER_BOUND` (no prompt
  is billed past the model's window, and 1,048,576 is the largest among the models of the
  built-in price table: gpt-4.1's is 1,047,576): documents and files (a PDF is billed as its
  text plus an image of each page), parts of a type not named here (quotad cannot know what a
  provider makes of them), server tools (web search and fetch, code execution: what they fetch
  is billed as input) and OpenAI's ``web_search_options``.

A completion is bounded by its ``max_tokens`` (the provider stops there); a stream that broke
before its usage came, or an answer whose provider did not report it, is counted by
:func:`text_tokens_upper_bound` of what it delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from quotad.protocol.messages import Chat, ChatMessage

CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REPLY: Final = 3
MEDIA_TOKENS_ESTIMATE: Final = 765
"""The gates' estimate of an image or a clip of audio: a high-detail gpt-4o image of
1024x1024 (85 + 4 tiles x 170)."""

TOKENS_PER_MESSAGE_UPPER_BOUND: Final = 8
TOKENS_PER_REPLY_UPPER_BOUND: Final = 8
TOOLS_FRAMING_TOKENS_UPPER_BOUND: Final = 1024
TOKENS_PER_TOOL_UPPER_BOUND: Final = 16
DEFINED_TOOL_TOKENS_UPPER_BOUND: Final = 2048
IMAGE_TOKENS_UPPER_BOUND: Final = 48_169
CONTEXT_WINDOW_TOKENS_UPPER_BOUND: Final = 1_048_576

TEXT_PART_TYPES: Final = frozenset(
    {
        "text",
        "input_text",
        "output_text",
        "refusal",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "search_result",
        "input_audio",
        "audio",
    }
)
"""Part types whose tokens their bytes bound (audio: see the module docstring)."""
IMAGE_PART_TYPES: Final = frozenset({"image_url", "input_image", "image"})
MEDIA_PART_TYPES: Final = IMAGE_PART_TYPES | {"input_audio", "audio"}
PLAIN_TOOL_TYPES: Final = frozenset({"function", "custom"})
"""Tool types the model sees as their definition's text (Anthropic's custom tools have no
type)."""
DEFINED_TOOL_PREFIXES: Final = ("computer", "text_editor", "bash", "memory")
"""Anthropic-defined tools run by the caller: a fixed definition, no fetched content."""
UNMEASURED_EXTRA: Final = frozenset({"web_search_options"})
"""Passthrough fields whose effect on the prompt the request does not bound."""

_JSON: Final = msgspec.json.Encoder()


# --------------------------------------------------------------------------- estimates


def estimate_text_tokens(text: str) -> int:
    """Tokens in a piece of text, estimated: ceil(len / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _estimate_value_tokens(value: Any) -> int:
    """The estimated tokens of every string in ``value`` (a part, a tool call…), in one walk
    (called again for each item and through a generator, 9,000 parts took 26 ms of the event
    loop; now 15)."""
    total = 0
    unread = [value]
    while unread:
        item = unread.pop()
        if isinstance(item, str):
            total += estimate_text_tokens(item)
        elif isinstance(item, dict):  # what JSON and MessagePack decode to: no ABC's check
            unread.extend(item.values())
        elif isinstance(item, list | tuple):
            unread.extend(item)
        elif isinstance(item, Mapping):
            unread.extend(item.values())
    return total


def _part_type(part: Any) -> str | None:
    """A content part's or a tool's ``type`` when it is a string: another value (an object, an
    array: the request is anyone's) names no type, and is no key to look up."""
    # a dict first, what JSON and MessagePack decode to: no ABC's check
    is_object = isinstance(part, dict) or isinstance(part, Mapping)  # noqa: SIM101
    kind = part.get("type") if is_object else None
    return kind if type(kind) is str else None


def _estimate_content_tokens(content: str | list[dict[str, Any]] | None) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return estimate_text_tokens(content)
    total = 0
    for part in content:
        if _part_type(part) in MEDIA_PART_TYPES:
            total += MEDIA_TOKENS_ESTIMATE
        else:
            total += _estimate_value_tokens(part)
    return total


def estimate_prompt_tokens(
    messages: Sequence[ChatMessage], tools: Iterable[dict[str, Any]] | None = None
) -> int:
    """Tokens the prompt of a chat request will count as, estimated (for the gates)."""
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + _estimate_content_tokens(message.content)
        if message.tool_calls:
            total += _estimate_value_tokens(message.tool_calls)
    if tools:
        total += sum(estimate_text_tokens(str(tool)) for tool in tools)
    return total


# --------------------------------------------------------------------------- upper bounds


def text_tokens_upper_bound(text: str) -> int:
    """The most tokens ``text`` can be: its UTF-8 bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def value_tokens_upper_bound(value: Any) -> int:
    """The most tokens the strings, keys and numbers of ``value`` (a part, a tool, a JSON
    schema…) can be: the bytes of ``value`` as JSON, which bound theirs."""
    try:
        return len(_JSON.encode(value))
    except (TypeError, ValueError, OverflowError):  # not JSON-shaped: its text, then
        return text_tokens_upper_bound(str(value))


def _part_upper_bound(part: Any) -> int | None:
    """A content part's bound; None when its bytes do not bound it (see the module docstring)."""
    kind = _part_type(part)
    if kind in IMAGE_PART_TYPES:
        return max(IMAGE_TOKENS_UPPER_BOUND, value_tokens_upper_bound(part))
    if kind == "tool_result":  # its content may hold images or documents
        content = part.get("content")
        if isinstance(content, list):
            inner = [_part_upper_bound(block) for block in content]
            if None in inner:
                return None
            rest = {key: value for key, value in part.items() if key != "content"}
            return value_tokens_upper_bound(rest) + sum(b for b in inner if b is not None)
        return value_tokens_upper_bound(part)
    if kind in TEXT_PART_TYPES:
        return value_tokens_upper_bound(part)
    return None


def _tools_upper_bound(tools: Any) -> int | None:
    """The bound of tool definitions; None when one is a server tool (or not a tool at all)."""
    if not isinstance(tools, list):
        return None
    total = TOOLS_FRAMING_TOKENS_UPPER_BOUND if tools else 0
    for tool in tools:
        if not isinstance(tool, Mapping):
            return None
        kind = tool.get("type")
        if kind is None or _part_type(tool) in PLAIN_TOOL_TYPES:
            total += TOKENS_PER_TOOL_UPPER_BOUND + value_tokens_upper_bound(tool)
        elif isinstance(kind, str) and kind.startswith(DEFINED_TOOL_PREFIXES):
            total += DEFINED_TOOL_TOKENS_UPPER_BOUND + value_tokens_upper_bound(tool)
        else:
            return None
    return total


def prompt_tokens_upper_bound(
    messages: Sequence[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    *others: Any,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """The most prompt tokens a provider can count for a chat request: what its budgets
    reserve (see the module docstring). ``others`` are further request fields sent as they
    are (``tool_choice``, ``response_format``); ``extra`` is the passthrough, whose ``tools``
    and ``functions`` count as tools."""
    total = TOKENS_PER_REPLY_UPPER_BOUND
    measured = True
    for message in messages:
        total += TOKENS_PER_MESSAGE_UPPER_BOUND + len(message.role)
        content = message.content
        if isinstance(content, str):
            total += text_tokens_upper_bound(content)
        elif content is not None:
            for part in content:
                bound = _part_upper_bound(part)
                if bound is None:
                    measured = False
                else:
                    total += bound
        if message.name is not None:
            total += text_tokens_upper_bound(message.name)
        if message.tool_calls:
            total += value_tokens_upper_bound(message.tool_calls)
        if message.tool_call_id is not None:
            total += text_tokens_upper_bound(message.tool_call_id)
    if tools:
        bound = _tools_upper_bound(tools)
        if bound is None:
            measured = False
        else:
            total += bound
    total += sum(value_tokens_upper_bound(other) for other in others if other is not None)
    for name, value in (extra or {}).items():
        if name in ("tools", "functions"):
            bound = _tools_upper_bound(value)
            if bound is None:
                measured = False
            else:
                total += bound
        elif name in UNMEASURED_EXTRA:
            measured = False
        else:
            total += text_tokens_upper_bound(name) + value_tokens_upper_bound(value)
    return total if measured else max(total, CONTEXT_WINDOW_TOKENS_UPPER_BOUND)


def input_tokens_upper_bound(inputs: str | Sequence[str]) -> int:
    """The most tokens embedding inputs can count as: their UTF-8 bytes, and two special
    tokens (begin and end of text) each."""
    if isinstance(inputs, str):
        return text_tokens_upper_bound(inputs) + 2
    return sum(text_tokens_upper_bound(text) + 2 for text in inputs)


def chat_prompt_tokens_upper_bound(request: Chat) -> int:
    """:func:`prompt_tokens_upper_bound` of everything a chat request sends as its prompt."""
    return prompt_tokens_upper_bound(
        request.messages,
        request.tools,
        request.tool_choice,
        request.response_format,
        extra=request.extra,
    )
