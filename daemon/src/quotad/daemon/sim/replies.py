"""What the sim answers, before a wire format shapes it, all deterministic: the reply to a
chat (:func:`compose_reply` → :class:`Reply`: its words, or a call of the first tool when the
last user message asks for a "tool", its schema's defaults or samples as arguments),
embedding vectors drawn from a hash of the input, the models it lists, and the chat request
field both wire formats share (:data:`Messages`)."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import struct
from typing import Annotated, Any

import msgspec

from quotad.daemon.tokens import estimate_text_tokens
from quotad.protocol.messages import ChatMessage

REPLY_WORDS = 16
DEFAULT_MAX_TOKENS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8
SIM_MODELS = ("sim-small", "sim-large", "sim-embed")
FILLER_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")

Messages = Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]

_json = msgspec.json.Encoder()
_TOOL_WORD = re.compile(r"\btool\b", re.IGNORECASE)
_SAMPLE_BY_TYPE: dict[str, Any] = {
    "string": "sim",
    "integer": 1,
    "number": 1.0,
    "boolean": True,
    "array": [],
    "object": {},
}


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message's content (its text parts joined)."""
    if content is None or isinstance(content, str):
        return content or ""
    return " ".join(part["text"] for part in content if isinstance(part.get("text"), str))


def last_user_text(messages: list[ChatMessage]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message.content)
    return ""


def utf8_bytes_of_strings(value: Any) -> int:
    """The UTF-8 bytes of every string in ``value``, dict keys included."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(utf8_bytes_of_strings(k) + utf8_bytes_of_strings(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(utf8_bytes_of_strings(item) for item in value)
    return 0


def worst_case_prompt_tokens(
    messages: list[ChatMessage], tools: list[dict[str, Any]] | None, system: Any = None
) -> int:
    """The prompt tokens of a worst-case byte-level tokenizer (``--count-tokens bytes``): one
    per UTF-8 byte of every string of the messages (their role, content and parts, name, tool
    calls, tool call id), the system prompt and the tools; 3 of framing per message and 3 for
    the reply, as OpenAI counts them."""
    total = 3 + utf8_bytes_of_strings(tools) + utf8_bytes_of_strings(system)
    for message in messages:
        fields = [message.role, message.content, message.name]
        total += 3 + utf8_bytes_of_strings([*fields, message.tool_calls, message.tool_call_id])
    return total


def reply_words(prompt: str, max_tokens: int) -> tuple[list[str], bool]:
    """The deterministic reply, one word per token, and whether max_tokens cut it."""
    words = ["sim", "reply", "to:", *prompt.split()[:REPLY_WORDS]][:REPLY_WORDS]
    words.extend(itertools.islice(itertools.cycle(FILLER_WORDS), REPLY_WORDS - len(words)))
    if max_tokens < REPLY_WORDS:
        return words[:max_tokens], True
    return words, False


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool call: one value per property of its JSON schema, its
    ``default`` when it has one, else a sample of its type."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {name: _sample(spec) for name, spec in properties.items()}


def _sample(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return "sim"
    if "default" in spec:
        return spec["default"]
    return _SAMPLE_BY_TYPE.get(str(spec.get("type")), "sim")


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of ``text``: the same input, the same vector."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", digest)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Reply(msgspec.Struct, kw_only=True):
    """What the sim answers a chat, before a wire format shapes it: words of text (one token
    each, ``cut`` when max_tokens stopped them) or one call of ``tool_name``."""

    number: int
    model: str
    prompt_tokens: int
    words: list[str] = []
    cut: bool = False
    tool_name: str = ""
    tool_arguments: dict[str, Any] = {}

    @property
    def arguments_json(self) -> str:
        """The tool call's arguments as JSON text."""
        return _json.encode(self.tool_arguments).decode()

    @property
    def completion_tokens(self) -> int:
        """Tokens of the answer: its words, or the call's estimate."""
        if self.tool_name:
            return estimate_text_tokens(self.tool_name + self.arguments_json)
        return len(self.words)


def compose_reply(
    number: int,
    model: str,
    messages: list[ChatMessage],
    tool: tuple[str, Any] | None,
    max_tokens: int,
    prompt_tokens: int,
) -> Reply:
    """The deterministic answer to ``messages``: a call of ``tool`` (name, JSON schema) when
    the last user message asks for a "tool", else the reply words."""
    prompt = last_user_text(messages)
    if tool is not None and _TOOL_WORD.search(prompt):
        name, schema = tool
        return Reply(
            number=number,
            model=model,
            prompt_tokens=prompt_tokens,
            tool_name=name,
            tool_arguments=sample_arguments(schema),
        )
    words, cut = reply_words(prompt, max_tokens)
    return Reply(number=number, model=model, prompt_tokens=prompt_tokens, words=words, cut=cut)
