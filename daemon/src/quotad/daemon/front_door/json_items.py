"""The front door's bound on the items of a JSON body's free-form fields, looked for before the
body is decoded: each top-level field but ``messages`` (whose items have bounds of their own,
after decoding: ``request_limits``) holds at most
:data:`~quotad.protocol.framing.MAX_FREE_FORM_ITEMS` items (its objects' entries and its
arrays' items, at every depth), as a frame's free-form fields do on the socket.

msgspec decodes a body in one call that holds the GIL, whatever thread runs it: a body of
800,000 keys in ``response_format`` (14 MB) held the event loop 1.3 s. A field holds that many
only if its commas and opening brackets outnumber the bound, which C-speed counts tell: the
body's first, a MiB at a time (:func:`may_hold_too_many`: nearly every body ends there), then
each field's (:func:`field_past_bound`, on a worker thread, the body split into its fields by
msgspec without decoding them); a field past that is walked token by token, its strings
skipped whole, until its items pass the bound or end (in Python, so that the loop gets its
turns).
"""

from __future__ import annotations

import re
from typing import Final

import anyio.lowlevel
import msgspec

from quotad.protocol.framing import MAX_FREE_FORM_ITEMS

COUNT_BYTES: Final = 1024 * 1024
"""How much of a body is counted in one turn of the event loop (about 1 ms)."""
UNBOUNDED_FIELDS: Final = frozenset({"messages"})
"""Top-level fields whose items together are not bounded here."""
_FIELDS: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_TOKEN: Final = re.compile(rb'[\[\]{},"]')
_NOTHING_BETWEEN: Final = 64
"""Bytes between a container's brackets past which it surely holds an item (short of that, they
are looked at: ``[ ]`` holds none, ``[1]`` one)."""


def _items_at_most(value: bytes) -> int:
    """The commas and opening brackets in ``value`` (in strings too): a JSON value holds at
    most as many items."""
    return value.count(b",") + value.count(b"[") + value.count(b"{")


async def may_hold_too_many(body: bytes) -> bool:
    """Whether a field of ``body`` may hold more items than the bound (see the module
    docstring), counted :data:`COUNT_BYTES` at a time, a turn of the event loop between."""
    if len(body) <= MAX_FREE_FORM_ITEMS:
        return False
    count = 0
    for start in range(0, len(body), COUNT_BYTES):
        if start:
            await anyio.lowlevel.checkpoint()
        count += _items_at_most(body[start : start + COUNT_BYTES])
        if count > MAX_FREE_FORM_ITEMS:
            return True
    return False


def field_past_bound(body: bytes) -> str | None:
    """The first top-level field of ``body`` (but those in :data:`UNBOUNDED_FIELDS`) holding
    more items than the bound; None if none does, or if ``body`` is no JSON object (the
    decoder then says why)."""
    try:
        fields = _FIELDS.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    for name, value in fields.items():
        if name in UNBOUNDED_FIELDS:
            continue
        if len(memoryview(value)) <= MAX_FREE_FORM_ITEMS:
            continue  # too short to hold that many
        raw = bytes(value)
        if _items_at_most(raw) > MAX_FREE_FORM_ITEMS and _holds_more_items(
            raw, MAX_FREE_FORM_ITEMS
        ):
            return name
    return None


def _holds_more_items(value: bytes, most: int) -> bool:
    """Whether the JSON ``value`` holds more than ``most`` items (its objects' entries and
    its arrays' items, at every depth), counted until they do."""
    opened: list[list[int]] = []  # of each array or object the walk is in: [its start, items]
    count = 0
    search = _TOKEN.search
    position = 0
    while (token := search(value, position)) is not None:
        at = token.start()
        byte = value[at]
        position = at + 1
        if byte == 0x22:  # a string: a key, or a value
            position = _past_string(value, position)
            if opened and not opened[-1][1]:
                opened[-1][1] = 1
                count += 1
        elif byte in b"[{":
            if opened and not opened[-1][1]:
                opened[-1][1] = 1
                count += 1
            opened.append([at, 0])
        elif not opened:
            return False  # not JSON: the decoder says why
        elif byte == 0x2C:  # a comma: the item after it (and the one before, if not counted)
            count += 1 if opened[-1][1] else 2
            opened[-1][1] = 1
        else:  # the end of an array or object
            start, items = opened.pop()
            if not items and _holds_one(value, start, at):
                count += 1
        if count > most:
            return True
    return False


def _past_string(value: bytes, start: int) -> int:
    """Where the string whose characters begin at ``start`` ends, past its closing quote."""
    while True:
        quote = value.find(b'"', start)
        if quote < 0:
            return len(value)
        backslashes = 0
        while value[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if not backslashes % 2:
            return quote + 1
        start = quote + 1


def _holds_one(value: bytes, opened_at: int, closed_at: int) -> bool:
    """Whether the array or object between these brackets, in which no string, container nor
    comma was found, holds one item (a number, ``true``, ``false``, ``null``)."""
    between = closed_at - opened_at - 1
    return between > _NOTHING_BETWEEN or bool(value[opened_at + 1 : closed_at].strip())
