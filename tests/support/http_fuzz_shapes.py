"""Requests for the HTTP front door shaped to hurt, beside the random mutations of
:mod:`tests.support.http_fuzz`: what a real attacker or a broken client sends that random
mutation rarely makes. Each is valid JSON (or nearly: duplicate keys, numbers past a double)
aimed at one place: thousands of content parts or messages, an image data URL near the body
bound, odd Unicode around what the guardrails mask (zero-width and bidi characters, full-width
forms, combining marks, noncharacters, NUL, text shaped like a placeholder, thousands of
addresses), numbers at the edges (``-0``, ``1e400``, ``5.0`` for an integer, subnormals),
``n``, ``stream_options`` and ``stream`` of odd types, Anthropic ``system`` blocks and content
blocks of odd or unknown types, ``tool_choice`` in every wrong shape, embeddings of thousands
of inputs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

import msgspec

ODD_TEXT: Final = (
    "ana@exa\u200bmple.com",  # a zero-width space inside an address
    "\u202eana@example.com\u202c",  # bidi override around it
    "\uff41\uff4e\uff41\uff20example.com",  # full-width letters and at sign
    "ana\u0301@example.com",  # a combining mark
    "\x00ana@example.com\x00",
    "\ufeffbom then ana@example.com",
    "\uffff\ufffe\U0010ffff\U0001f600",  # noncharacters, the last code point, an emoji
    "line\u2028separator\u2029paragraph",
    "[EMAIL_1] [SECRET_1] [EMAIL_999999999]",  # shaped like the guardrails' placeholders
    "sk-" + "A" * 48,  # a secret: blocked by the fuzz daemon's guardrails
    "ana@example.com " * 3000,  # thousands of addresses to mask
    "a@b." * 5000,  # the start of an address, again and again
    "+1 (555) 123-4567 " * 500,
    "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 2000,  # joined emoji
    "é漢字🙂" * 20000,
)
"""Text the guardrails scan, mask and restore, and tokens are counted in."""
ODD_NUMBERS: Final = (
    b"-0", b"-0.0", b"1e400", b"-1e400", b"5.0", b"4.9e-324", b"1e-400", b"0.0", b"1E2",
    b"18446744073709551615", b"9223372036854775808", b"-9223372036854775809", b"1" + b"0" * 25,
)  # fmt: skip
NUMERIC_FIELDS: Final = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "top_k",
    "frequency_penalty", "top_logprobs", "dimensions",
)  # fmt: skip
TOOL_CHOICES: Final[tuple[Any, ...]] = (
    "required", "none", "any", "tool", "", 5, [], None, {}, {"type": "function"},
    {"type": "function", "function": {}}, {"type": "function", "function": {"name": 5}},
    {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}},
    {"type": "tool"}, {"type": "tool", "name": 5}, {"type": "tool", "name": "nope"},
    {"type": "any", "disable_parallel_tool_use": "yes"}, {"type": ["auto"]}, {"type": None},
)  # fmt: skip
ODD_BLOCKS: Final[tuple[Any, ...]] = (
    {"type": "text", "text": "a", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    {"type": "text"}, {"type": 5, "text": "x"}, {}, "a string", None, 5, [],
    {"type": "thinking", "thinking": "hmm", "signature": "s"},
    {"type": "redacted_thinking", "data": "x"},
    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}},
    {"type": "document", "source": None}, {"type": "search_result", "content": 5},
    {"type": "image", "source": {"type": "url", "url": 5}},
    {"type": "image", "source": {"type": "base64", "media_type": None, "data": "AA=="}},
    {"type": "image", "source": {"type": "file", "file_id": "f"}},
    {"type": "tool_use", "id": 5, "name": "f", "input": "not an object"},
    {"type": "tool_use", "id": "t", "name": None, "input": []},
    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"q": 1}},
    {"type": "tool_result", "tool_use_id": "t", "is_error": "yes", "content": [5, None]},
    {"type": "tool_result", "tool_use_id": None},
    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100}},
    {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
    {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA=="}},
    {"type": "refusal", "refusal": "no"},
)  # fmt: skip

Shape = Callable[[random.Random, str], tuple[str, bytes]]


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def many_parts(rnd: random.Random, model: str) -> tuple[str, bytes]:
    count = rnd.choice((1000, 10_000, 25_000))
    parts = [{"type": "text", "text": rnd.choice(("x", "ana@example.com", ""))}] * count
    if rnd.random() < 0.5:
        return "/v1/messages", _json({"model": model, "max_tokens": 5, "messages": [_user(parts)]})
    return "/v1/chat/completions", _json({"model": model, "messages": [_user(parts)]})


def many_messages(rnd: random.Random, model: str) -> tuple[str, bytes]:
    count = rnd.choice((1000, 10_000, 20_000))
    roles = ("user", "assistant") if rnd.random() < 0.5 else ("user", "user", "system", "tool")
    messages = [{"role": roles[index % len(roles)], "content": "m"} for index in range(count)]
    if rnd.random() < 0.5:
        return "/v1/chat/completions", _json({"model": model, "messages": messages})
    messages = [message for message in messages if message["role"] in ("user", "assistant")]
    return "/v1/messages", _json({"model": model, "max_tokens": 5, "messages": messages})


def huge_image(rnd: random.Random, model: str) -> tuple[str, bytes]:
    data = "A" * rnd.choice((100_000, 700_000, 1_100_000))  # the fuzz daemon takes 1 MB
    if rnd.random() < 0.5:
        url = f"data:image/png;base64,{data}"
        part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
        return "/v1/chat/completions", _json({"model": model, "messages": [_user([part])]})
    source = {"type": "base64", "media_type": "image/png", "data": data}
    block = {"type": "image", "source": source}
    return "/v1/messages", _json({"model": model, "max_tokens": 5, "messages": [_user([block])]})


def odd_text(rnd: random.Random, model: str) -> tuple[str, bytes]:
    text = rnd.choice(ODD_TEXT)
    stream = rnd.random() < 0.4
    if rnd.random() < 0.5:
        system = rnd.choice((text, [{"type": "text", "text": text}]))
        turns = [_user(text), {"role": "assistant", "content": text}, _user(text)]
        body = {"model": model, "max_tokens": 5, "system": system, "stream": stream}
        body["messages"] = turns
        return "/v1/messages", _json(body)
    body = {"model": model, "stream": stream, "messages": [
        {"role": "system", "content": text}, _user([{"type": "text", "text": text}]),
        {"role": "assistant", "content": text, "name": text[:64]}, _user(text)]}  # fmt: skip
    if rnd.random() < 0.3:
        return "/v1/embeddings", _json({"model": model, "input": [text, text[:10]]})
    return "/v1/chat/completions", _json(body)


def edge_numbers(rnd: random.Random, model: str) -> tuple[str, bytes]:
    """A number at the edge in a numeric field, written in the bytes (msgspec writes none
    of ``-0``, ``1e400`` or ``5.0`` for an integer)."""
    number = rnd.choice(ODD_NUMBERS)
    field = rnd.choice(NUMERIC_FIELDS)
    path = rnd.choice(("/v1/chat/completions", "/v1/messages", "/v1/embeddings"))
    head = b'{"model": ' + _json(model) + b', "' + field.encode() + b'": ' + number
    if path == "/v1/embeddings":
        return path, head + b', "input": "x"}'
    tail = b', "messages": [{"role": "user", "content": "x"}]'
    if path == "/v1/messages" and field != "max_tokens":
        tail += b', "max_tokens": 5'
    return path, head + tail + b"}"


def duplicate_keys(rnd: random.Random, model: str) -> tuple[str, bytes]:
    """The same key twice, the two values differing in what they allow (the last wins in
    msgspec; some proxies take the first)."""
    pairs = (
        (b'"model": "nope"', b'"model": ' + _json(model)),
        (b'"stream": true', b'"stream": false'),
        (b'"max_tokens": 1', b'"max_tokens": 100000000'),
        (b'"messages": []', b'"messages": [{"role": "user", "content": "x"}]'),
        (b'"messages": [{"role": "user", "content": "sk-' + b"A" * 48 + b'"}]',
         b'"messages": [{"role": "user", "content": "x"}]'),
    )  # fmt: skip
    first, second = rnd.choice(pairs)
    if rnd.random() < 0.5:
        first, second = second, first
    body = b'{"model": ' + _json(model) + b', "max_tokens": 5, "messages": '
    body += b'[{"role": "user", "content": "x"}], ' + first + b", " + second + b"}"
    return rnd.choice(("/v1/chat/completions", "/v1/messages")), body


def odd_options(rnd: random.Random, model: str) -> tuple[str, bytes]:
    """``n``, ``stream``, ``stream_options``, ``tool_choice``, ``stop`` and ``metadata`` of
    odd values and types, on both shapes."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    odd: dict[str, Any] = rnd.choice((
        {"n": rnd.choice((0, 2, 128, -1, 1.0, "1", None))},
        {"stream": rnd.choice(("true", 1, None, [])), "stream_options": {"include_usage": True}},
        {"stream": False, "stream_options": {"include_usage": True}},
        {"stream": True, "stream_options": rnd.choice(({"include_usage": None}, {"x": 1}, [],
                                                       {"include_usage": True, "y": 2}))},
        {"tools": [tool], "tool_choice": rnd.choice(TOOL_CHOICES)},
        {"tool_choice": rnd.choice(TOOL_CHOICES)},
        {"stop": rnd.choice(([""] * 5, ["x"] * 10_000, "", [None], ["\x00"]))},
        {"metadata": rnd.choice(({"user_id": "u" * 300}, {"user_id": 5}, {"k": {"v": 1}}))},
        {"user": rnd.choice(("u" * 300, "", 5, "\x00"))},
        {"logit_bias": {"50256": -100, "x": 1e308, "": None}},
    ))  # fmt: skip
    if rnd.random() < 0.5:
        body = {"model": model, "messages": [_user("x")], **odd}
        return "/v1/chat/completions", _json(body)
    if "tools" in odd:
        odd["tools"] = [{"name": "f", "input_schema": {"type": "object"}}]
    body = {"model": model, "max_tokens": 5, "messages": [_user("x")], **odd}
    return "/v1/messages", _json(body)


def odd_blocks(rnd: random.Random, model: str) -> tuple[str, bytes]:
    """Anthropic ``system`` and content blocks (and OpenAI content parts) of odd or unknown
    types, mixed with valid ones."""
    blocks = [{"type": "text", "text": "ok"}, *rnd.sample(ODD_BLOCKS, rnd.randint(1, 4))]
    rnd.shuffle(blocks)
    if rnd.random() < 0.35:
        system = [{"type": "text", "text": "be brief"}, *rnd.sample(ODD_BLOCKS, 2)]
        body = {"model": model, "max_tokens": 5, "system": system, "messages": [_user("x")]}
        return "/v1/messages", _json(body)
    if rnd.random() < 0.5:
        role = rnd.choice(("user", "assistant"))
        turns = [_user("x"), {"role": "assistant", "content": "y"}] if role == "user" else []
        messages = [*turns, {"role": role, "content": blocks}, _user("z")]
        return "/v1/messages", _json({"model": model, "max_tokens": 5, "messages": messages})
    role = rnd.choice(("user", "system", "assistant", "tool", "developer"))
    message: dict[str, Any] = {"role": role, "content": blocks}
    if role == "tool":
        message["tool_call_id"] = "c1"
    return "/v1/chat/completions", _json({"model": model, "messages": [_user("x"), message]})


def many_inputs(rnd: random.Random, model: str) -> tuple[str, bytes]:
    count = rnd.choice((2048, 5000, 30_000))
    inputs = [rnd.choice(("x", "", "ana@example.com"))] * count
    return "/v1/embeddings", _json({"model": model, "input": inputs})


SHAPES: Final[tuple[Shape, ...]] = (
    many_parts, many_messages, huge_image, odd_text, odd_text, edge_numbers, edge_numbers,
    duplicate_keys, odd_options, odd_options, odd_blocks, odd_blocks, many_inputs,
)  # fmt: skip


def shaped(rnd: random.Random, model: str) -> tuple[str, bytes]:
    """One shaped request: its path and body."""
    return rnd.choice(SHAPES)(rnd, model)
