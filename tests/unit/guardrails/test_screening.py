"""A request's :class:`Screening` on its own: the way back of whole replies, streams and
replayed streams, its counts as the ledger keeps them, and the measure of a request's text
that decides whether its check leaves the event loop."""

from __future__ import annotations

from typing import Any

import pytest

from quotad.daemon.config import parse_config
from quotad.daemon.guardrails import Blocked, Guard
from quotad.daemon.guardrails.screening import (
    IDLE,
    Screening,
    decode_entities,
    text_size,
)
from quotad.protocol.messages import Chat, ChatChunk, ChatEnd, ChatMessage, ChatReply, Embed
from tests.support import guardrails as samples

EMAIL = "jane.doe@example.com"


def screening(content: str, **rules: Any) -> Screening:
    config = parse_config(
        {"guardrails": rules or {"input": {"email": "mask"}, "output": {"secret": "mask"}}}
    )
    request = Chat(model="m", messages=[ChatMessage(role="user", content=content)])
    checked = Guard(config).for_app("a").check_chat(request)
    return Screening(checked.counts, checked.restorer)


def test_a_reply_is_screened_for_the_cache_then_restored_for_the_caller() -> None:
    screen = screening(f"mail {EMAIL}")
    reply = ChatReply(content=f"[EMAIL_1] gets {samples.GITHUB_TOKEN}")
    screened = screen.screen(reply)
    assert screened.content == "[EMAIL_1] gets [SECRET_1]"
    assert screen.restore(screened).content == f"{EMAIL} gets [SECRET_1]"
    assert screen.counts == {"email": 1, "secret": 1}
    assert screen.ledger_entities() == '{"email":1,"secret":1}'
    assert decode_entities(screen.ledger_entities()) == {"email": 1, "secret": 1}
    assert decode_entities("") == {}


def test_nothing_to_do_gives_back_the_same_objects() -> None:
    reply = ChatReply(content="[EMAIL_1]")
    assert IDLE.reply(reply) is reply
    chunk = ChatChunk(delta="x")
    stream = IDLE.stream(1, keep=True)
    assert stream.chunk(chunk) is chunk
    assert stream.sent == [chunk]
    assert stream.flush() is None
    end = ChatEnd(content="x")
    assert stream.end(end) is end
    assert IDLE.ledger_entities() == ""


def test_a_stream_without_a_finish_gives_what_was_held_at_its_flush() -> None:
    screen = screening(f"mail {EMAIL}")
    stream = screen.stream(3, keep=True)
    shown = [stream.first(ChatChunk(id=3, delta="to [EMAIL", request_id="r"))]
    shown.append(stream.chunk(ChatChunk(id=3, delta="_1] at ")))  # type: ignore[arg-type]
    shown.append(stream.chunk(ChatChunk(id=3, delta=samples.GITHUB_TOKEN)))  # type: ignore[arg-type]
    tail = stream.flush()
    assert tail is not None
    assert tail.id == 3
    text = "".join(chunk.delta for chunk in [*shown, tail] if chunk is not None)
    assert text == f"to {EMAIL} at [SECRET_1]"
    kept = stream.end(ChatEnd(content="raw", finish_reason="stop"))
    end = screen.restore(kept)
    assert kept.content == "to [EMAIL_1] at [SECRET_1]" == "".join(c.delta for c in stream.sent)
    assert end.content == text
    assert end.finish_reason == "stop"
    assert stream.flush() is None  # once


def test_a_replayed_stream_keeps_its_first_chunk_and_restores_the_rest() -> None:
    screen = screening(f"mail {EMAIL}")
    chunks = [
        ChatChunk(id=1, delta="[EMA"),
        ChatChunk(id=1, delta="IL_1] ok", finish_reason="stop"),
    ]
    shown, end = screen.replay(chunks, ChatEnd(id=1, content="[EMAIL_1] ok"), 1)
    assert [chunk.delta for chunk in shown] == ["", f"{EMAIL} ok"]
    assert end.content == f"{EMAIL} ok"


def test_an_output_block_raises_from_the_stream() -> None:
    screen = screening("hi", output={"secret": "block"})
    stream = screen.stream(1)
    stream.first(ChatChunk(id=1, delta="key "))
    with pytest.raises(Blocked):
        stream.chunk(ChatChunk(id=1, delta=samples.GITHUB_TOKEN, finish_reason="stop"))


def test_text_size_counts_what_a_check_reads() -> None:
    request = Chat(
        model="m",
        messages=[
            ChatMessage(role="user", content="abcd"),
            ChatMessage(role="user", content=[{"type": "text", "text": "efg"}]),
            ChatMessage(
                role="assistant",
                tool_calls=[{"id": "c", "function": {"name": "f", "arguments": '{"a":1}'}}],
            ),
        ],
    )
    assert text_size(request) == 4 + 3 + 7
    assert text_size(Embed(model="m", input=["ab", "cde"])) == 5
