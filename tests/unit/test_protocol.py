"""The wire protocol (quotad.protocol): frames, messages, schema evolution, hostile input.

Every message type must survive a trip through FrameEncoder and the decoder of its direction,
however the bytes are split on the way; old and new peers must understand each other (unknown
fields ignored, missing fields defaulted); and no input may make a decoder do anything but
yield messages or raise a FrameError that names what was wrong.
"""

from __future__ import annotations

import contextlib
import math
import random
import tracemalloc
from collections.abc import Callable
from typing import Any, get_args

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.protocol import scan
from quotad.protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAX_CONTAINER_ITEMS,
    MAX_FREE_FORM_ITEMS,
    MAX_NESTING,
    MAX_SETTLE_HEADERS,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    FrameTooLarge,
    MessageInvalid,
    MessageValidationError,
    reply_decoder,
    request_decoder,
)
from quotad.protocol.messages import (
    MAX_TOKEN_COUNT,
    MAX_WAIT_S,
    PROTOCOL_VERSION,
    Acquire,
    Admin,
    AppStatus,
    BudgetStatus,
    CacheStatus,
    Cancel,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    Embed,
    EmbedReply,
    Error,
    Event,
    GateStatus,
    GroupStatus,
    Hello,
    Message,
    Ok,
    Permit,
    QueueStatus,
    Reply,
    Request,
    RequestRecord,
    Settle,
    Snapshot,
    Spend,
    SpendReply,
    SpendRow,
    Status,
    StatusReply,
    Subscribe,
    TargetStatus,
    Usage,
    Welcome,
    WindowStatus,
)
from quotad.protocol.scan import ItemBounds, TooDeep, TooMany, TooWide, bound_exceeded
from tests.support.fuzz import mutated
from tests.support.fuzz_extremes import wide_message

REQUEST_TYPES: tuple[type[Message], ...] = get_args(Request)
REPLY_TYPES: tuple[type[Message], ...] = get_args(Reply)

ENCODER = FrameEncoder()
RAW = msgspec.msgpack.Encoder()


def frame(payload: bytes) -> bytes:
    """``payload`` behind its 4-byte big-endian length."""
    return len(payload).to_bytes(4, "big") + payload


def decode_all(decoder: FrameDecoder[Any], *chunks: bytes) -> list[Any]:
    return [message for chunk in chunks for message in decoder.feed(chunk)]


# --------------------------------------------------------------------------- examples

USAGE = Usage(prompt_tokens=12, completion_tokens=34, cached_tokens=5)
STATUS = StatusReply(
    id=7,
    daemon_version="0.1.0",
    pid=4242,
    uptime_s=12.5,
    socket="/run/quotad/quotad.sock",
    targets=[
        TargetStatus(
            name="openai/gpt-4o-mini",
            provider="openai",
            model="gpt-4o-mini",
            breaker="half_open",
            latency_ewma_s=0.25,
            gates=["openai"],
        )
    ],
    groups=[GroupStatus(name="fast", strategy="failover", order=["a/b", "c/d"], why="healthy")],
    gates=[
        GateStatus(
            name="openai",
            windows=[WindowStatus(unit="tokens", limit=1000, window_s=60, used=10)],
            paused_until=99.5,
        )
    ],
    queues=QueueStatus(low=1, critical=2),
    cache=CacheStatus(mode="on", entries=3, hits=2, misses=1, hit_rate=0.66),
    budgets=[BudgetStatus(name="daily", limit_usd=20, spent_usd=1.5, alert=True)],
    apps=[AppStatus(name="indexer", priority="low", share=2)],
    events=[Event(time=1.0, kind="breaker", message="opened")],
)

REQUESTS: list[Message] = [
    Hello(version=1, app="indexer", client="quotad-client/0.1.0"),
    Chat(
        id=1,
        model="fast",
        messages=[
            ChatMessage(role="system", content="be brief"),
            ChatMessage(role="user", content=[{"type": "text", "text": "hi"}], name="ann"),
            ChatMessage(role="assistant", tool_calls=[{"id": "c1", "function": {"name": "f"}}]),
            ChatMessage(role="tool", content="42", tool_call_id="c1"),
        ],
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        stop=["\n\n"],
        seed=-7,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        response_format={"type": "json_object"},
        stream=True,
        priority="critical",
        max_wait_s=2.5,
        cache="refresh",
        app="indexer",
        user="u1",
        tags=["batch", "nightly"],
        extra={"logit_bias": {"50256": -100}, "n": 1, "x": [1.5, None, True]},
    ),
    Embed(id=2, model="emb", input=["a", "b"], dimensions=256, priority="low", tags=["t"]),
    Embed(id=3, model="emb", input="just one"),
    Acquire(
        id=4, target="openai/gpt-4o-mini", tokens=1500, priority="high", max_wait_s=5, lease_s=30
    ),
    Settle(
        id=5,
        permit_id="p-1",
        tokens_used=900,
        status="rate_limited",
        headers={"retry-after": "3"},
        prompt_tokens=700,
        completion_tokens=200,
    ),
    Cancel(id=1),
    Status(id=6),
    Subscribe(id=7, interval_s=0.5, requests=False),
    Spend(id=8, period="month", by="target"),
    Admin(id=9, action="disable", target="openai/gpt-4o-mini", args={"reason": "maintenance"}),
]

REPLIES: list[Message] = [
    Welcome(version=1, daemon_version="0.1.0", features=["stream", "permits"]),
    ChatReply(
        id=1,
        content="hello",
        tool_calls=[{"id": "c1", "type": "function"}],
        finish_reason="stop",
        usage=USAGE,
        cost_usd=0.00012,
        cached=True,
        target="openai/gpt-4o-mini",
        attempts=2,
        wait_s=0.1,
        latency_s=0.8,
        request_id="r-1",
    ),
    ChatChunk(id=1, delta="hel", tool_calls=[{"index": 0}], finish_reason=None),
    ChatEnd(id=1, content="hello", usage=USAGE, cost_usd=0.1, target="groq/llama", attempts=1),
    EmbedReply(id=2, embeddings=[[0.1, -0.2], [3.0, 4.5]], usage=USAGE, target="e/m"),
    Permit(id=4, permit_id="p-1", wait_s=0.25, lease_s=120),
    STATUS,
    Snapshot(
        id=7,
        seq=3,
        time=1700000000.5,
        status=STATUS,
        requests=[RequestRecord(request_id="r-1", app="indexer", status="error", cached=True)],
        requests_per_s=12.5,
    ),
    SpendReply(
        id=8,
        period="month",
        by="target",
        total=SpendRow(key="total", requests=10, cost_usd=1.25),
        rows=[SpendRow(key="openai/gpt-4o-mini", requests=10, unpriced=True, anomalous=True)],
        budgets=[BudgetStatus(name="monthly", period="month", limit_usd=300)],
        forecast_month_usd=40.0,
    ),
    Ok(id=9, message="disabled", data={"target": "openai/gpt-4o-mini"}),
    Error(
        id=1,
        code="upstream_error",
        message="every attempt failed",
        retry_after_s=2.0,
        details={"attempts": [{"target": "a/b", "error": "timeout"}]},
    ),
]


def test_examples_cover_every_message_type() -> None:
    assert {type(message) for message in REQUESTS} == set(REQUEST_TYPES)
    assert {type(message) for message in REPLIES} == set(REPLY_TYPES)


@pytest.mark.parametrize("message", REQUESTS, ids=lambda message: type(message).__name__)
def test_every_request_round_trips(message: Message) -> None:
    [decoded] = decode_all(request_decoder(), ENCODER.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", REPLIES, ids=lambda message: type(message).__name__)
def test_every_reply_round_trips(message: Message) -> None:
    [decoded] = decode_all(reply_decoder(), ENCODER.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize(
    ("messages", "make_decoder"),
    [(REQUESTS, request_decoder), (REPLIES, reply_decoder)],
    ids=["requests", "replies"],
)
def test_frames_split_at_every_byte_boundary_decode_the_same(
    messages: list[Message], make_decoder: Any
) -> None:
    stream = b"".join(ENCODER.encode(message) for message in messages)
    for cut in range(len(stream) + 1):
        decoder = make_decoder()
        assert decode_all(decoder, stream[:cut], stream[cut:]) == messages
        assert decoder.pending == 0
    decoder = make_decoder()
    byte_by_byte = decode_all(decoder, *(stream[n : n + 1] for n in range(len(stream))))
    assert byte_by_byte == messages


def test_encoder_reuses_its_buffer_without_leaking_bytes_between_frames() -> None:
    encoder = FrameEncoder()
    big = Chat(model="m", messages=[ChatMessage(role="user", content="x" * 200_000)])
    small = Status(id=1)
    stream = encoder.encode(big) + encoder.encode(small) + encoder.encode(big)
    assert decode_all(request_decoder(), stream) == [big, small, big]


# --------------------------------------------------------------------------- schema evolution


def test_unknown_fields_are_ignored() -> None:
    newer_chat = {
        "type": "Chat",
        "id": 3,
        "model": "fast",
        "messages": [{"role": "user", "content": "hi", "audio": {"voice": "x"}}],
        "reasoning_effort": "high",
        "future_struct": {"nested": [1, 2, 3]},
    }
    [chat] = decode_all(request_decoder(), frame(RAW.encode(newer_chat)))
    assert chat == Chat(id=3, model="fast", messages=[ChatMessage(role="user", content="hi")])
    newer_welcome = {"type": "Welcome", "version": 2, "compression": ["zstd"]}
    [welcome] = decode_all(reply_decoder(), frame(RAW.encode(newer_welcome)))
    assert welcome == Welcome(version=2)


def test_missing_optional_fields_take_their_defaults() -> None:
    older_chat = {"type": "Chat", "model": "fast", "messages": []}
    [chat] = decode_all(request_decoder(), frame(RAW.encode(older_chat)))
    assert isinstance(chat, Chat)
    assert (chat.id, chat.cache, chat.tags, chat.extra, chat.priority) == (0, "use", [], {}, None)
    older_reply = {"type": "ChatReply", "id": 4, "content": "x"}
    [reply] = decode_all(reply_decoder(), frame(RAW.encode(older_reply)))
    assert isinstance(reply, ChatReply)
    assert reply.usage == Usage()
    assert reply.usage.total_tokens == 0


def test_defaults_are_left_off_the_wire() -> None:
    assert RAW.encode(Status()) == RAW.encode({"type": "Status"})


# --------------------------------------------------------------------------- hostile input


def test_a_4_gib_length_prefix_is_refused_before_anything_is_allocated() -> None:
    decoder = request_decoder()
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge, match="over the limit"):
            decode_all(decoder, b"\xff\xff\xff\xff" + b"\x00" * 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_the_frame_limit_is_inclusive() -> None:
    message = ENCODER.encode(Admin(action="reload", args={"pad": "x" * 1000}))
    size = len(message) - 4
    assert decode_all(FrameDecoder(Request, max_frame=size), message)  # type: ignore[arg-type]
    with pytest.raises(FrameTooLarge):
        decode_all(FrameDecoder(Request, max_frame=size - 1), message)  # type: ignore[arg-type]
    assert DEFAULT_MAX_FRAME == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"messages": [{"role": "robot"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}, {"content": "no role"}]}, "messages[1]"),
        ({"stream": "yes"}, "stream: expected bool, got str"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"cache": "sometimes"}, "cache"),
        ({"model": "m" * 300}, "model"),
    ],
)
def test_invalid_messages_name_the_bad_field(fields: dict[str, Any], named: str) -> None:
    chat = {"type": "Chat", "id": 1, "model": "fast", "messages": [], **fields}
    with pytest.raises(MessageInvalid) as caught:
        decode_all(request_decoder(), frame(RAW.encode(chat)))
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"type": "Settle", "permit_id": "pm-1", "tokens_used": 2**64 - 1}, "tokens_used"),
        ({"type": "Settle", "permit_id": "pm-1", "prompt_tokens": 2**31}, "prompt_tokens"),
        ({"type": "Settle", "permit_id": "pm-1", "completion_tokens": 2**31}, "completion_tokens"),
        ({"type": "Acquire", "target": "p/m", "tokens": 10**12}, "tokens"),
    ],
)
def test_a_token_count_past_the_bound_is_refused(
    request_fields: dict[str, Any], field: str
) -> None:
    """A permit's ``Settle`` of 2**64 - 1 tokens was counted: it broke the status (an int
    msgspec cannot encode) and the gates' pace. Token counts are bounded as a provider's are."""
    with pytest.raises(MessageValidationError) as caught:
        decode_all(request_decoder(), frame(RAW.encode({"id": 1, **request_fields})))
    assert f"<= {MAX_TOKEN_COUNT}" in str(caught.value)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "request_fields",
    [
        {"type": "Chat", "model": "fast", "messages": []},
        {"type": "Embed", "model": "local/m", "input": ["a"]},
        {"type": "Acquire", "target": "p/m"},
    ],
    ids=["Chat", "Embed", "Acquire"],
)
def test_a_wait_past_a_day_or_infinite_is_refused(request_fields: dict[str, Any]) -> None:
    """``max_wait_s`` inf once waited for ever on the socket, where the HTTP header refused it."""
    for seconds in (math.inf, MAX_WAIT_S + 1):
        message = frame(RAW.encode({**request_fields, "id": 1, "max_wait_s": seconds}))
        with pytest.raises(MessageInvalid) as caught:
            decode_all(request_decoder(), message)
        assert "max_wait_s" in str(caught.value)
    longest = {**request_fields, "id": 1, "max_wait_s": MAX_WAIT_S}
    (decoded,) = decode_all(request_decoder(), frame(RAW.encode(longest)))
    assert isinstance(decoded, Chat | Embed | Acquire)
    assert decoded.max_wait_s == MAX_WAIT_S


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used in MessagePack
        RAW.encode([1, 2, 3]),
        RAW.encode({"type": "Teleport", "id": 1}),
        RAW.encode({"id": 1}),
        RAW.encode({"type": "Welcome"}),  # a reply is not a request
    ],
    ids=["empty", "reserved-byte", "array", "unknown-type", "untagged", "wrong-direction"],
)
def test_malformed_payloads_raise_message_invalid(payload: bytes) -> None:
    with pytest.raises(MessageInvalid):
        decode_all(request_decoder(), frame(payload))


def test_invalid_utf8_in_a_string_is_a_bad_frame_naming_its_field() -> None:
    """The 12-byte frame that killed the daemon: msgspec raises a bare UnicodeDecodeError."""
    with pytest.raises(MessageInvalid) as caught:
        decode_all(request_decoder(), bytes.fromhex("00000008 81a474797065a1ff"))
    assert caught.value.code == "bad_frame"
    assert "type: not valid UTF-8" in str(caught.value)


BAD_TEXT = "not-utf8"
"""Stands for a string that is not UTF-8: the encoder refuses one, so it is patched in."""


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"model": BAD_TEXT}, "model"),
        ({"messages": [{"role": "user", "content": BAD_TEXT}]}, "messages"),
        ({"extra": {BAD_TEXT: 1}}, "extra"),
        ({"tags": ["fine", BAD_TEXT]}, "tags"),
    ],
)
def test_invalid_utf8_anywhere_names_the_top_level_field(
    fields: dict[str, Any], named: str
) -> None:
    chat = {"type": "Chat", "id": 1, "model": "fast", "messages": [], **fields}
    payload = RAW.encode(chat).replace(BAD_TEXT.encode(), b"not-\xff\xfe\xfd8")
    with pytest.raises(MessageInvalid) as caught:
        decode_all(request_decoder(), frame(payload))
    assert caught.value.code == "bad_frame"
    assert f"{named}: not valid UTF-8" in str(caught.value)


DEEP = "@@deep@@"


def nested_chat(depth: int, field: str = "extra") -> bytes:
    """A Chat frame whose MessagePack nests ``depth`` containers deep, the innermost ones in
    ``field`` (the message's own map is the first level). Built as bytes: msgspec's encoder
    would stop at its own recursion limit."""
    shapes: dict[str, tuple[dict[str, Any], int]] = {
        "extra": ({"extra": {"x": DEEP}}, 2),
        "tools": ({"tools": [DEEP]}, 2),
        "messages": ({"messages": [{"role": "user", "content": DEEP}]}, 3),
    }
    fields, around = shapes[field]
    payload = RAW.encode({"type": "Chat", "id": 1, "model": "m", "messages": [], **fields})
    lists = b"\x91" * (depth - around) + b"\x01"
    return frame(payload.replace(RAW.encode(DEEP), lists))


@pytest.mark.parametrize("field", ["extra", "tools", "messages"])
def test_nesting_is_bounded_before_msgspec_recurses(field: str) -> None:
    """1,500 levels in an Any field ended the decoding (and the daemon) in RecursionError."""
    for depth in (MAX_NESTING + 1, 1500, 100_000):
        with pytest.raises(MessageValidationError) as caught:
            decode_all(request_decoder(), nested_chat(depth, field))
        assert caught.value.code == "bad_request"
        assert f"{field}: nested deeper than {MAX_NESTING} levels" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "request_id"),
    [
        ({"id": 7, "temperature": 5.0}, 7),  # a value out of range: answered by its id
        ({"id": 0, "messages": "x"}, 0),
        ({"temperature": 5.0}, None),  # no id to answer by
        ({"id": -1, "temperature": 5.0}, None),
        ({"id": "7", "temperature": 5.0}, None),
        ({"id": 2**64 - 1, "messages": None}, 2**64 - 1),
    ],
)
def test_an_invalid_message_says_its_id_when_it_can_be_read(
    fields: dict[str, Any], request_id: int | None
) -> None:
    payload = RAW.encode({"type": "Chat", "model": "m", "messages": [], **fields})
    with pytest.raises(MessageValidationError) as caught:
        decode_all(request_decoder(), frame(payload))
    assert caught.value.request_id == request_id
    assert caught.value.code == "bad_request"


def test_nesting_up_to_the_limit_decodes() -> None:
    (chat,) = decode_all(request_decoder(), nested_chat(MAX_NESTING))
    depth, value = 2, chat.extra["x"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert depth == MAX_NESTING


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ("extra", "extra"),
        ("tool_choice", "tool_choice"),
        ("response_format", "response_format.json_schema"),
        ("part_fields", "messages[0].content[0].meta"),
        ("tool_schema", "tools[0].function.parameters.properties"),
        ("stop", "stop"),
        ("admin_args", "args"),
    ],
)
def test_a_map_or_an_array_past_the_bound_on_items_is_refused_before_msgspec_decodes_it(
    shape: str, field: str
) -> None:
    """Found by the socket fuzz's wide frames: 500,000 keys in ``extra`` (4.2 MiB) held the
    event loop 1.4 s, 0.3-0.5 s of it msgspec's decoding (which holds the GIL whatever thread
    runs it), the rest each step reading them all. Read from the container's header before
    any of its items, the refusal names where, and answers by the request's id."""
    payload = RAW.encode(wide_message(shape, MAX_CONTAINER_ITEMS + 1, 0, "m", request_id=9))
    with pytest.raises(MessageValidationError) as caught:
        decode_all(request_decoder(), frame(payload))
    refused = caught.value
    assert (refused.code, refused.request_id, refused.field) == ("bad_request", 9, field)
    assert f"{field}: " in str(refused)
    assert f"of {MAX_CONTAINER_ITEMS + 1:,} items" in str(refused)
    assert f"at most {MAX_CONTAINER_ITEMS:,}" in str(refused)
    at_the_bound = RAW.encode(wide_message(shape, MAX_CONTAINER_ITEMS, 0, "m"))
    if field.startswith(("response_format", "tools")):  # the field holds more than the map
        with pytest.raises(MessageValidationError, match="a free-form value holds at most"):
            decode_all(request_decoder(), frame(at_the_bound))
    else:
        assert len(decode_all(request_decoder(), frame(at_the_bound))) == 1


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ("extra", "extra"),
        ("tool_choice", "tool_choice"),
        ("response_format", "response_format"),
        ("tools", "tools"),
        ("admin_args", "args"),
    ],
)
def test_a_free_form_field_past_the_bound_on_its_items_is_refused_before_msgspec_decodes_it(
    shape: str, field: str
) -> None:
    """Spread over maps each within the bound on one, 500,000 items in ``extra`` (3.6 MiB)
    held the event loop 0.7 s (walked for nesting, then decoded) before the steps read them
    all. A top-level free-form field's items are counted from their containers' headers, at
    every depth, and refused past MAX_FREE_FORM_ITEMS."""
    block = {f"k{index}": index for index in range(1000)}
    spread = {f"m{index}": block for index in range(MAX_FREE_FORM_ITEMS // 1000 - 1)}
    fields = wide_message("admin_args" if shape == "admin_args" else "extra", 0, 0, "m", 3)
    name = "args" if shape == "admin_args" else shape
    fields[name] = [{"type": "function"}, spread] if shape == "tools" else {"f": spread}
    (decoded,) = decode_all(request_decoder(), frame(RAW.encode(fields)))  # within: read
    assert decoded.id == 3
    spread["over"] = block  # a thousand items more
    with pytest.raises(MessageValidationError) as caught:
        decode_all(request_decoder(), frame(RAW.encode(fields)))
    refused = caught.value
    assert (refused.code, refused.request_id, refused.field) == ("bad_request", 3, field)
    assert f"{field}: a free-form value holds at most {MAX_FREE_FORM_ITEMS:,} items" in str(refused)


@pytest.mark.parametrize("count", [MAX_SETTLE_HEADERS + 1, 5_000, MAX_CONTAINER_ITEMS * 3])
def test_a_settle_reads_its_first_headers_and_drops_the_rest_unread(count: int) -> None:
    """A Settle's headers are hints, and a settle must not be lost: past
    MAX_SETTLE_HEADERS the first are read, in order, and the rest dropped before decoding
    (700,000 headers held the event loop 1.2 s, decoded and then parsed). The fields after
    them are read as sent."""
    fields = wide_message("settle_headers", count, 0, "m", request_id=4)
    fields["tokens_used"] = 77
    fields["headers"]["x-ratelimit-remaining-requests"] = "5"  # past the first: dropped
    (settle,) = decode_all(request_decoder(), frame(RAW.encode(fields)))
    assert isinstance(settle, Settle)
    assert list(settle.headers) == [f"x-h{index}" for index in range(MAX_SETTLE_HEADERS)]
    assert (settle.id, settle.permit_id, settle.tokens_used) == (4, "pm-000000-1", 77)
    fields["headers"] = dict(list(fields["headers"].items())[:MAX_SETTLE_HEADERS])
    (whole,) = decode_all(request_decoder(), frame(RAW.encode(fields)))
    assert whole == settle


def test_any_exception_out_of_msgspec_is_a_frame_error() -> None:
    """msgspec passes through exceptions it does not document (here one a type raises); they
    must still cost only the frame."""

    class Touchy(msgspec.Struct):
        value: int = 0

        def __post_init__(self) -> None:
            raise ArithmeticError("not a ValueError or TypeError: msgspec lets it through")

    with pytest.raises(MessageInvalid, match="ArithmeticError"):
        decode_all(FrameDecoder(Touchy), frame(RAW.encode({"value": 1})))


def _depth(value: Any) -> int:
    """Containers deep ``value`` nests (an empty one counts as no level, as MessagePack has no
    element inside it to reach)."""
    if isinstance(value, dict) and value:
        return 1 + max(_depth(v) for pair in value.items() for v in pair)
    if isinstance(value, list) and value:
        return 1 + max(_depth(v) for v in value)
    return 0


DEEP_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=300)
    | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=60,
)
"""Values for the nesting walk: every kind of MessagePack element, long runs, deep chains."""


@settings(max_examples=300, deadline=None)
@given(DEEP_JSON, st.integers(1, 12))
def test_the_nesting_walk_agrees_with_the_decoded_depth(value: Any, limit: int) -> None:
    payload = RAW.encode({"type": "Chat", "extra": value})
    too_deep = bound_exceeded(payload, limit)
    assert (too_deep is not None) == (_depth({"type": "Chat", "extra": value}) > limit)
    if too_deep is not None and limit > 1:
        assert too_deep == TooDeep("extra")


def _width(value: Any) -> int:
    """The most items a map (its entries) or an array in ``value`` holds."""
    if isinstance(value, dict):
        return max([len(value), *(_width(v) for pair in value.items() for v in pair)])
    if isinstance(value, list):
        return max([len(value), *(_width(v) for v in value)])
    return 0


@settings(max_examples=300, deadline=None)
@given(DEEP_JSON, st.integers(1, 24))
def test_the_walk_agrees_with_the_decoded_widths(value: Any, limit: int) -> None:
    message = {"type": "Chat", "extra": value}
    found = bound_exceeded(RAW.encode(message), MAX_NESTING, ItemBounds(each=limit))
    assert (found is not None) == (_width(message) > limit)
    if found is not None:
        assert isinstance(found, TooWide)
        assert found.items > limit


def _items(value: Any) -> int:
    """The items (maps' entries, arrays' items) in ``value`` at every depth."""
    if isinstance(value, dict):
        return len(value) + sum(_items(v) for pair in value.items() for v in pair)
    if isinstance(value, list):
        return len(value) + sum(_items(v) for v in value)
    return 0


@settings(max_examples=300, deadline=None)
@given(DEEP_JSON, st.integers(1, 60))
def test_the_walk_agrees_with_the_decoded_count_of_a_fields_items(value: Any, limit: int) -> None:
    message = {"type": "Chat", "tags": [[1, 2]] * 40, "extra": value, "id": 1}
    found = bound_exceeded(RAW.encode(message), MAX_NESTING, ItemBounds(total={"extra": limit}))
    assert (found is not None) == (_items(value) > limit)
    if found is not None:
        assert isinstance(found, TooMany)
        assert (found.field, found.items > limit) == ("extra", True)


@pytest.mark.parametrize("message", REQUESTS)
def test_mutated_payloads_only_yield_messages_or_frame_errors(message: Message) -> None:
    payload = RAW.encode(message)
    chooser = random.Random(len(payload))
    for _ in range(300):
        with contextlib.suppress(FrameError):  # anything else fails the test
            decode_all(request_decoder(), frame(mutated(payload, chooser)))


def _check_only_messages_or_frame_errors(decoder: FrameDecoder[Any], data: bytes) -> None:
    """Anything but a message, FrameTooLarge or MessageInvalid escapes and fails the test."""
    messages: list[Any] = []
    with contextlib.suppress(FrameTooLarge, MessageInvalid):
        messages.extend(decoder.feed(data))
    assert all(isinstance(message, REQUEST_TYPES) for message in messages)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_yield_messages_or_frame_errors(data: bytes) -> None:
    _check_only_messages_or_frame_errors(request_decoder(), data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=128), max_size=4))
def test_random_payloads_in_valid_frames_only_yield_messages_or_frame_errors(
    payloads: list[bytes],
) -> None:
    _check_only_messages_or_frame_errors(
        request_decoder(), b"".join(frame(payload) for payload in payloads)
    )


# --------------------------------------------------------------------------- generated messages

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)


def strategy_for(info: mi.Type) -> st.SearchStrategy[Any]:
    """Values valid for a msgspec type, constraints included (built from msgspec.inspect)."""
    match info:
        case mi.StructType(cls=cls, fields=fields):
            return st.builds(cls, **{field.name: strategy_for(field.type) for field in fields})
        case mi.UnionType(types=types):
            return st.one_of([strategy_for(member) for member in types])
        case mi.ListType(item_type=item):
            return st.lists(strategy_for(item), max_size=3)
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
        case mi.LiteralType(values=values):
            return st.sampled_from(values)
        case mi.StrType(max_length=max_length):
            return st.text(st.characters(codec="utf-8"), max_size=min(max_length or 12, 12))
        case mi.IntType(ge=ge, gt=gt, le=le, lt=lt):
            low = ge if ge is not None else (gt + 1 if gt is not None else -(2**63))
            high = le if le is not None else (lt - 1 if lt is not None else 2**63 - 1)
            return st.integers(low, high)
        case mi.FloatType(ge=ge, gt=gt, le=le, lt=lt):
            return st.floats(
                min_value=ge if ge is not None else gt,
                max_value=le if le is not None else lt,
                exclude_min=gt is not None,
                exclude_max=lt is not None,
                allow_nan=False,
            )
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.AnyType():
            return JSON
    raise NotImplementedError(f"no strategy for {info}")


REQUEST_MESSAGES = strategy_for(mi.type_info(Request))
REPLY_MESSAGES = strategy_for(mi.type_info(Reply))


@pytest.mark.parametrize(
    ("generated", "make_decoder"),
    [(REQUEST_MESSAGES, request_decoder), (REPLY_MESSAGES, reply_decoder)],
    ids=["requests", "replies"],
)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_generated_messages_round_trip(
    generated: st.SearchStrategy[Message],
    make_decoder: Callable[[], FrameDecoder[Any]],
    data: st.DataObject,
) -> None:
    messages = data.draw(st.lists(generated, min_size=1, max_size=3))
    stream = b"".join(ENCODER.encode(message) for message in messages)
    cut = data.draw(st.integers(0, len(stream)))
    assert decode_all(make_decoder(), stream[:cut], stream[cut:]) == messages


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([cls.__name__ for cls in REQUEST_TYPES]),
    st.dictionaries(
        TEXT | st.sampled_from(["id", "model", "messages", "max_tokens"]), JSON, max_size=4
    ),
)
def test_well_formed_but_arbitrary_maps_only_yield_messages_or_frame_errors(
    tag: str, fields: dict[str, Any]
) -> None:
    payload = RAW.encode({**fields, "type": tag})
    _check_only_messages_or_frame_errors(request_decoder(), frame(payload))


def test_a_welcome_says_every_field_to_a_peer_reading_plain_messagepack() -> None:
    """DESIGN §5: Hello → Welcome(version, daemon_version, features). Messages leave out
    fields at their default, so a Welcome of protocol version 1 (the default) said no version
    to a peer that reads MessagePack without quotad's types."""
    raw = msgspec.msgpack.decode(ENCODER.encode(Welcome(daemon_version="0.1.0"))[4:])
    assert raw["version"] == PROTOCOL_VERSION
    assert {"daemon_version", "features", "max_frame", "id"} <= set(raw)


def test_a_plain_chat_is_decoded_without_walking_its_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Chat has 16 fields and more, so its own map takes a map16 header, which the quick
    check read as a container that might be wide: every chat frame was walked element by
    element in Python (6 -> 30 us a frame of 445 bytes). Its own map within bounds, a frame
    with no other such header still skips the walk; one holding a wide map does not."""
    walks = 0
    walk = scan._walk

    def counted(*args: Any) -> Any:
        nonlocal walks
        walks += 1
        return walk(*args)

    monkeypatch.setattr(scan, "_walk", counted)
    message = Chat(
        id=7,
        model="p/m",
        messages=[ChatMessage(role="user", content="What is the capital of France?")],
        extra={"top_p": 0.9},
    )
    frame = FrameEncoder().encode(message)
    assert frame[HEADER_SIZE] == 0xDE  # the message's own map: a map16
    assert list(request_decoder().feed(frame)) == [message]
    assert walks == 0
    wide = msgspec.structs.replace(message, extra={f"k{n}": n for n in range(20)})
    assert list(request_decoder().feed(FrameEncoder().encode(wide))) == [wide]
    assert walks == 1
