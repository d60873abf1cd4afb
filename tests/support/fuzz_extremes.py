"""Hostile frames that are valid MessagePack of the right shape, for the socket fuzz beside
:mod:`tests.support.fuzz`: a valid request of each kind with one to three of its fields set
to a value at an edge (every integer bound MessagePack has, NaN, the infinities, ``-0.0``,
the smallest subnormal, priorities and cache modes in the wrong case or with a blank, the
wrong type), and permits really granted and then settled with such values (token counts at
2**64 - 1, a 429 whose ``retry-after`` is years or junk, rate-limit headers of every odd
form): the settle path needs the permit's id, which only the daemon's answer gives, so these
are played as a conversation (:func:`play_permits`); and valid requests with one field far
wider or longer than any client sends, within the bound on a frame (:func:`wide_request`).
"""

from __future__ import annotations

import math
import random
import socket
from pathlib import Path
from typing import Any, Final

import msgspec

from quotad.protocol.framing import FrameEncoder, reply_decoder
from quotad.protocol.messages import Acquire, Admin, Hello, Permit, Settle
from tests.support.provider_fuzz import ODD_HEADER_VALUES, RATE_LIMIT_HEADERS

ENCODER: Final = FrameEncoder()
RAW: Final = msgspec.msgpack.Encoder()
EDGES: Final[tuple[Any, ...]] = (
    0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, math.nan, math.inf,
    -math.inf, -0.0, 5e-324, 1e308, 0.05, 600.0, 3600.0001, "", "1", "HIGH", " normal",
    "critical", "only", "refresh", "day ", True, None, [], {}, ["x"] * 3,
)  # fmt: skip
"""Values at an edge, for any field."""
FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Chat": ("id", "max_tokens", "temperature", "top_p", "seed", "max_wait_s", "priority",
             "cache", "stream", "tags", "stop", "app", "user", "tool_choice"),
    "Embed": ("id", "dimensions", "max_wait_s", "priority", "cache", "input", "app"),
    "Acquire": ("id", "tokens", "max_wait_s", "lease_s", "priority", "app"),
    "Subscribe": ("id", "interval_s", "requests"),
    "Spend": ("id", "period", "by", "fleet"),
    "Hello": ("version", "app", "client"),
    "Admin": ("id", "action", "target", "args"),
}  # fmt: skip
"""The fields of each request kind set to an edge."""
PERMIT_TARGET: Final = "sim/permits"
"""What permits are asked on: a target of its own, so that a settle that pauses it (a 429 of a
day) leaves the fuzz's other requests alone."""
SETTLE_COUNTS: Final[tuple[int | None, ...]] = (
    None, 0, 1, 7, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1,
)  # fmt: skip


def edge_request(rnd: random.Random, model: str) -> bytes:
    """A valid request of one kind (a frame, prefix included) with fields set to edges."""
    kind = rnd.choice(list(FIELDS))
    fields: dict[str, Any] = {"type": kind, "id": rnd.randint(1, 50)}
    if kind in ("Chat", "Embed"):
        fields["model"] = model
    if kind == "Chat":
        fields["messages"] = [{"role": "user", "content": "edge"}]
        fields["max_tokens"] = 4
    elif kind == "Embed":
        fields["input"] = ["edge"]
    elif kind == "Acquire":
        fields["target"] = PERMIT_TARGET
    elif kind == "Admin":
        fields["action"] = "nothing"
    for name in rnd.sample(FIELDS[kind], min(len(FIELDS[kind]), rnd.randint(1, 3))):
        fields[name] = rnd.choice(EDGES)
    payload = RAW.encode(fields)
    return len(payload).to_bytes(4, "big") + payload


WIDE_COUNTS: Final = (1000, 20_000, 100_000)
"""How many items a wide field holds (a frame of at most a few MB: the bound is 8 MiB)."""
LONG_TEXT: Final = (10_000, 1_000_000)
"""How long a long string is, in characters."""


WIDE_SHAPES: Final = (
    "extra", "tool_choice", "response_format", "part_fields", "tool_schema", "stop",
    "embed_input", "tool_calls", "settle_headers", "admin_args", "content", "name",
    "spread_extra",
)  # fmt: skip
"""The fields :func:`wide_message` makes wide, by name."""


def wide_message(
    shape: str, count: int, length: int, model: str, request_id: int = 1, *, masked: bool = True
) -> dict[str, Any]:
    """A valid request (the map a frame holds) whose field ``shape`` (one of
    :data:`WIDE_SHAPES`) is far wider, longer or larger than any client sends, each item of it
    small: ``extra``, ``tool_choice``, ``response_format``, a content part, a tool's schema or
    ``Admin.args`` with ``count`` keys, or ``extra`` with ``count`` keys in maps of 1,000;
    ``stop``, an embedding's ``input``, a conversation's tool calls (at most 20,000) or a
    Settle's headers with ``count`` items; a message's content (addresses to mask, with
    ``masked``), name or tool call id ``length`` characters long."""
    wide = {f"k{index}": index for index in range(count)}
    user: dict[str, Any] = {"role": "user", "content": "wide"}
    fields: dict[str, Any] = {
        "type": "Chat", "id": request_id, "model": model, "messages": [user], "max_tokens": 4,
    }  # fmt: skip
    text = "ana@example.com " if masked else "a" * 16
    match shape:
        case "extra":
            fields["extra"] = wide
        case "tool_choice":
            fields["tool_choice"] = wide
        case "response_format":
            fields["response_format"] = {"type": "json_schema", "json_schema": wide}
        case "part_fields":
            user["content"] = [{"type": "text", "text": "x", "meta": wide}]
        case "tool_schema":
            function = {"name": "f", "parameters": {"type": "object", "properties": wide}}
            fields["tools"] = [{"type": "function", "function": function}]
        case "stop":
            fields["stop"] = ["ana@example.com" if masked else "x"] * count
        case "embed_input":
            fields = {"type": "Embed", "id": request_id, "model": model,
                      "input": ["ana@example.com" if masked else "x"] * count}  # fmt: skip
        case "tool_calls":
            call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            fields["messages"] = [{"role": "assistant", "tool_calls": [call] * min(count, 20_000)}]
        case "settle_headers":
            fields = {"type": "Settle", "id": request_id, "permit_id": "pm-000000-1",
                      "headers": {f"x-h{index}": "1" for index in range(count)}}  # fmt: skip
        case "admin_args":
            fields = {"type": "Admin", "id": request_id, "action": "nothing", "args": wide}
        case "content":
            user["content"] = text * (length // len(text))
        case "spread_extra":
            block = {f"k{index}": index for index in range(1000)}
            fields["extra"] = {f"m{index}": block for index in range(max(1, count // 1000))}
        case "name":
            user["name" if masked else "tool_call_id"] = "n" * length
        case _:
            raise ValueError(shape)
    return fields


def wide_request(rnd: random.Random, model: str) -> bytes:
    """A valid request (a frame, prefix included) with one field far wider, longer or larger
    than any client sends (:func:`wide_message` of a random shape, count and length)."""
    count = rnd.choice(WIDE_COUNTS)
    length = rnd.choice(LONG_TEXT)
    shape = rnd.choice(WIDE_SHAPES)
    fields = wide_message(
        shape, count, length, model, rnd.randint(1, 50), masked=rnd.random() < 0.5
    )
    payload = RAW.encode(fields)
    return len(payload).to_bytes(4, "big") + payload


def _settle(rnd: random.Random, permit_id: str) -> Settle:
    headers = {
        rnd.choice(RATE_LIMIT_HEADERS): rnd.choice(ODD_HEADER_VALUES)
        for _ in range(rnd.randint(0, 4))
    }
    tokens = rnd.choice(SETTLE_COUNTS)
    return Settle(
        id=2,
        permit_id=permit_id,
        tokens_used=tokens if tokens is not None else 0,
        status=rnd.choice(("ok", "error", "rate_limited", "cancelled")),
        headers=headers,
        prompt_tokens=rnd.choice(SETTLE_COUNTS),
        completion_tokens=rnd.choice(SETTLE_COUNTS),
    )


def play_permits(path: Path, rnd: random.Random, rounds: int) -> tuple[int, int]:
    """``rounds`` conversations, each on a new connection: Hello, an Acquire with odd tokens
    and lease, and when a permit is granted, a Settle of it with odd values (now and then the
    same one twice, or none: the lease or the close settles it), then a reset of the target.
    Every answer must be a reply frame. How many permits were granted, and settles
    answered."""
    granted = settled = 0
    for _ in range(rounds):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            replies = _Replies(sock)
            tokens = rnd.choice((0, 1, 100, 2**31, 2**63 - 1))
            lease_s = rnd.choice((None, 0.05, 1.0, 600.0, 5e-324))
            acquire = Acquire(id=1, target=PERMIT_TARGET, tokens=tokens, max_wait_s=0.05)
            acquire.lease_s = lease_s
            sock.sendall(ENCODER.encode(Hello(app="fuzz")) + ENCODER.encode(acquire))
            permit = replies.to(1)
            if not isinstance(permit, Permit):
                continue
            granted += 1
            if rnd.random() < 0.1:
                continue  # never settled: the close does it
            settle = _settle(rnd, permit.permit_id)
            repeat = 2 if rnd.random() < 0.15 else 1
            sock.sendall(ENCODER.encode(settle) * repeat)
            settled += sum(1 for _ in range(repeat) if replies.to(2) is not None)
            # what the settle taught the gates (a 429's pause of up to a day, a window said
            # to be spent until a reset far off) is forgotten, so that the next is granted
            sock.sendall(ENCODER.encode(Admin(id=3, action="target_reset", target=PERMIT_TARGET)))
            replies.to(3)
    return granted, settled


class _Replies:
    """The replies read from one connection, by the id they answer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = reply_decoder()
        self.pending: list[Any] = []

    def to(self, request_id: int) -> Any:
        """The next reply to ``request_id``; None if the daemon closed first."""
        while True:
            for index, reply in enumerate(self.pending):
                if reply.id == request_id:
                    return self.pending.pop(index)
            received = self.sock.recv(65536)
            if not received:
                return None
            self.pending.extend(self.decoder.feed(received))
