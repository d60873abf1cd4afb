"""What a chat request asks, as the semantic cache sees it: a partition and a last user turn.

Two requests may share an answer semantically only when everything but the wording of their
last user turn is the same: the model asked for (a group or a target), the system prompt and
every earlier turn, the tools, every sampling parameter and ``extra``, whether it streams, and
the last turn's role and name. That is the *partition*: a hash of all of it (the exact cache's
key, DESIGN §8, with the last turn's text left out). A question is asked only of a request whose
last message is a user turn of plain text (a string, or only ``text`` parts) and whose
temperature is at most ``max_temperature``; an unset temperature counts as 1.0, the providers'
default, so it is *warm* and never served semantically unless that is allowed.

Nothing here needs numpy: a request that is not eligible costs no embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from quotad.daemon.semantic.rules import Facets, Refusal, read
from quotad.daemon.store.answers import chat_encoding, digest_off_loop
from quotad.protocol.messages import Chat

if TYPE_CHECKING:
    from quotad.daemon.semantic.model import Vector

PROVIDER_DEFAULT_TEMPERATURE: Final = 1.0
"""The temperature a request without one runs at (OpenAI's and Anthropic's default)."""
PARTITION_SCHEME: Final = "semantic-1"
"""Part of every partition key: a change to what partitions mean changes every key."""

Ineligible = Literal["warm", "not_user_turn", "not_text"] | Refusal
"""Why a request asks no question of the semantic cache."""


@dataclass(slots=True)
class Question:
    """One eligible request's partition, last user turn and its facets (the vector is
    filled in by the cache when first needed, then reused to store the answer)."""

    partition: bytes
    text: str
    facets: Facets
    vector: Vector | None = field(default=None, repr=False)


async def partition_key(request: Chat) -> bytes:
    """The hash of everything in ``request`` that a semantic hit must share (16 bytes): a
    long conversation's is hashed off the event loop, as its exact key is
    (:func:`~quotad.daemon.store.answers.digest_off_loop`: every turn but the last is hashed,
    and 13 MB of them held the loop 27 ms)."""
    last = request.messages[-1] if request.messages else None
    last_but_text = (last.role, last.name, last.tool_calls, last.tool_call_id) if last else None
    encoded = chat_encoding(request, PARTITION_SCHEME, request.messages[:-1], last_but_text)
    return await digest_off_loop(encoded)


def last_user_text(request: Chat) -> str | None:
    """The text of the last message when it is a user turn of plain text, else None."""
    if not request.messages or request.messages[-1].role != "user":
        return None
    content = request.messages[-1].content
    if isinstance(content, str) or content is None:
        return content
    texts = []
    for part in content:
        text = part.get("text")
        if part.get("type") != "text" or not isinstance(text, str):
            return None  # an image, audio or file part: its meaning is not in the text
        texts.append(text)
    return "\n".join(texts)


async def question_of(request: Chat, max_temperature: float) -> Question | Ineligible:
    """The question ``request`` asks of the semantic cache, or why it asks none."""
    temperature = request.temperature
    if temperature is None:
        temperature = PROVIDER_DEFAULT_TEMPERATURE
    if temperature > max_temperature:
        return "warm"
    if not request.messages or request.messages[-1].role != "user":
        return "not_user_turn"
    text = last_user_text(request)
    if not text:
        return "not_text"
    facets = read(text)
    if not isinstance(facets, Facets):
        return facets
    return Question(await partition_key(request), text, facets)
