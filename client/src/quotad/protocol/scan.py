"""A walk over a frame's MessagePack bytes that decodes nothing: how deeply it nests, how many
items its maps and arrays hold, and which top-level field holds a string that is not UTF-8.

msgspec decodes a frame recursively, so a frame nested a thousand levels deep (in a free-form
field such as ``Chat.extra``) ends its decoding in ``RecursionError``, and whatever survives
below that depth reaches code that walks it again. :func:`bound_exceeded` bounds the depth
before msgspec sees the frame, and the items of each map and array (their headers count them):
msgspec holds the GIL while it decodes a frame, a map of 500,000 keys for 0.3 s, in one call
that no other thread nor task can interrupt. It costs a C-speed count of the bytes that can
open a container when there are fewer of them than the depth's bound and none can open one of
more than 15 items (nearly every frame), else one pass over the elements that skips strings by
their length and runs of one-byte values in C, and stops at the first container too wide, from
its header. :func:`end_of_items` is where a number of elements ends. msgspec also
reports a string that is not UTF-8 as a bare ``UnicodeDecodeError`` with no path
(msgspec/msgspec#714); :func:`field_of_invalid_string` finds the field that holds it, so that
the error can name it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

_FIXED_SIZE: Final = bytearray(256)
"""Size of an element whose first byte is the index, when that byte alone says it (scalars,
fixstr); 0 for containers and for strings, binaries and extensions with a length field."""
for _byte in [*range(0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3]:
    _FIXED_SIZE[_byte] = 1  # fixint, nil, false, true
for _byte, _size in {
    0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,  # uint 8/16/32/64
    0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9,  # int 8/16/32/64
    0xCA: 5, 0xCB: 9,  # float 32/64
    0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18,  # fixext 1/2/4/8/16
}.items():  # fmt: skip
    _FIXED_SIZE[_byte] = _size
for _byte in range(0xA0, 0xC0):
    _FIXED_SIZE[_byte] = 1 + (_byte & 0x1F)  # fixstr

_LENGTH_FIELD: Final = {
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),  # str 8/16/32
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),  # bin 8/16/32
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),  # ext 8/16/32 (and their type byte)
}  # fmt: skip
"""Width of the length field, and bytes between it and the data, by first byte."""

_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_OTHER_BYTES: Final = bytes(sorted(set(range(256)) - set(_CONTAINER_BYTES)))
_ONE_BYTE_RUN: Final = re.compile(rb"[\x00-\x7f\xa0\xc0\xc2\xc3\xe0-\xff]+")
"""Elements of one byte: fixint, the empty fixstr, nil, false, true."""
_COUNTED_HEADER_BYTES: Final = b"\xdc\xdd\xde\xdf"
"""First bytes of an array or a map whose header counts its items in 16 or 32 bits."""
_COUNTED_HEADER: Final = re.compile(b"[\xdc-\xdf]")
_MAX_QUICK_DEPTH: Final = 64
"""The deepest bound on nesting for which :func:`bound_exceeded` may skip its walk (the
frames' is 64)."""
_FIX_ITEMS: Final = 15
"""The most items a fixarray or a fixmap holds (its count in its first byte)."""
_ANY_NUMBER: Final = 2**32
"""More items than any header can count."""
_STRING_BYTES: Final = frozenset([*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB])
_MAX_FIELD_NAME: Final = 31


def _container(data: bytes | bytearray, i: int, first: int) -> tuple[int, int]:
    """Elements in the container that starts at ``i`` (a map's keys and values both count),
    and the size of its header."""
    if first <= 0x8F:
        return (first & 0x0F) * 2, 1
    if first <= 0x9F:
        return first & 0x0F, 1
    width = 2 if first in (0xDC, 0xDE) else 4
    count = int.from_bytes(data[i + 1 : i + 1 + width], "big")
    return (count * 2 if first >= 0xDE else count), 1 + width


def _past_length_field(data: bytes | bytearray, i: int, length_field: tuple[int, int]) -> int:
    """Where the string, binary or extension that starts at ``i`` ends (its
    :data:`_LENGTH_FIELD` entry given)."""
    width, gap = length_field
    return i + 1 + width + gap + int.from_bytes(data[i + 1 : i + 1 + width], "big")


class TooDeep(NamedTuple):
    """A frame nests deeper than it may, under the top-level ``field`` (``"message"``: not
    under one)."""

    field: str


class TooWide(NamedTuple):
    """A map or an array in a frame holds more ``items`` than it may (a map's entries, an
    array's items): the first such, ``path`` naming where (:func:`_path_to`), ``depth``
    containers deep (the message's own map is 1, a top-level field's value 2), its items
    starting at offset ``items_at``."""

    path: str
    is_map: bool
    items: int
    items_at: int
    depth: int


class TooMany(NamedTuple):
    """The value of the top-level ``field`` holds more items than it may, counted at every
    depth (its maps' entries and its arrays' items): ``items`` by where the count passed."""

    field: str
    items: int


@dataclass(frozen=True, slots=True)
class ItemBounds:
    """How many items the maps and arrays of a frame may hold (a map's entries, an array's
    items; counted from their headers)."""

    each: int = 2**32
    """Any one map or array (more than any header counts: no bound)."""
    own: Mapping[str, int] = field(default_factory=dict)
    """The value of a top-level field named here, by the field's name."""
    total: Mapping[str, int] = field(default_factory=dict)
    """The value of a top-level field named here, at every depth together."""
    fewest: int = field(init=False)
    """The lowest bound of any one map or array (:attr:`each`, :attr:`own`)."""
    fix_items_fit: bool = field(init=False)
    """Whether containers of at most 15 items each (fixmaps and fixarrays), nested no deeper
    than a frame may, stay within every bound: then a frame with no other container but its
    own map needs no walk (:func:`bound_exceeded`)."""

    def __post_init__(self) -> None:
        fewest = min([self.each, *self.own.values()])
        fits = fewest >= _FIX_ITEMS and min([*self.total.values(), _ANY_NUMBER]) >= (
            _MAX_QUICK_DEPTH * _FIX_ITEMS
        )
        object.__setattr__(self, "fewest", fewest)
        object.__setattr__(self, "fix_items_fit", fits)


NO_ITEM_BOUNDS: Final = ItemBounds()


def bound_exceeded(
    data: bytes | bytearray, max_depth: int, items: ItemBounds = NO_ITEM_BOUNDS
) -> TooDeep | TooWide | TooMany | None:
    """None when the MessagePack value in ``data`` nests at most ``max_depth`` containers deep
    and its maps and arrays hold no more ``items`` than they may; else the first bound
    passed, and where. A container's count is read from its header, before any of its items.

    Bytes that are not MessagePack end the walk with None: the decoder then says what is wrong.
    """
    fewest = items.fewest
    if len(data) <= min(max_depth, fewest):
        return None  # too short for any bound to be passed
    candidates = data.translate(None, _OTHER_BYTES)  # every byte that could open a container
    if len(candidates) < max_depth <= _MAX_QUICK_DEPTH and items.fix_items_fit:
        first = data[0]  # the message's own map: a Chat's 16 fields and more take a map16
        own = first in _COUNTED_HEADER_BYTES and _container(data, 0, first)[0] <= 2 * fewest
        if _COUNTED_HEADER.search(candidates, 1 if own else 0) is None:
            return None  # too few containers to nest so deep, each of at most 15 items
    found = _walk(data, 0, 1, max_depth, items)
    return None if isinstance(found, int) else found


def end_of_items(data: bytes | bytearray, start: int, count: int) -> int:
    """Where the ``count`` elements from ``start`` end (a map entry is two); ``len(data)``
    if the data ends first."""
    found = _walk(data, start, count, _ANY_NUMBER, NO_ITEM_BOUNDS)
    assert isinstance(found, int)  # no bound to pass
    return min(found, len(data))


def _walk(
    data: bytes | bytearray, start: int, count: int, max_depth: int, bounds: ItemBounds
) -> TooDeep | TooWide | TooMany | int:
    """The walk of :func:`bound_exceeded` over the ``count`` elements from ``start`` (at the
    top level: the one value in ``data``): the first bound passed, else where the elements
    end (past the data's end, or at the byte that is no MessagePack)."""
    fixed_size = _FIXED_SIZE
    most = bounds.each
    end = len(data)
    i = start
    left = count  # elements left in the innermost open container (the whole value at first)
    outer: list[int] = []  # the same for every container around it
    opened: list[int] = []  # the header's offset of each open container
    field_at = -1
    field = "message"  # the top-level field whose value is walked (when any)
    field_items = field_most = 0  # its items so far, and the most it may hold
    while left:
        if i >= end:
            return i
        first = data[i]
        size = fixed_size[first]
        if size == 1 and left > 4:  # skip a run of one-byte elements in one C call
            run = _ONE_BYTE_RUN.match(data, i, i + left)
            assert run is not None
            left -= run.end() - i
            i = run.end()
        elif size:
            i += size
            left -= 1
        elif 0x80 <= first <= 0x9F or first >= 0xDC:  # 0xe0+ are fixints (size 1)
            elements, header = _container(data, i, first)
            left -= 1
            if elements:
                outer.append(left)
                opened.append(i)
                depth = len(outer)
                is_map = first <= 0x8F or first >= 0xDE
                items = elements // 2 if is_map else elements
                limit = most
                if depth == 2:  # a top-level field's value opens here
                    field_at = i
                    field, field_items = _field_before(data, i), 0
                    field_most = bounds.total.get(field, _ANY_NUMBER)
                    limit = bounds.own.get(field, most)
                if depth > max_depth:
                    return TooDeep(_field_before(data, field_at))
                if items > limit:
                    path = _path_to(data, opened, outer)
                    return TooWide(path, is_map, items, i + header, depth)
                field_items += items
                if field_items > field_most and depth >= 2:
                    return TooMany(field, field_items)
                left = elements
            i += header
        elif (length_field := _LENGTH_FIELD.get(first)) is not None:
            i = _past_length_field(data, i, length_field)
            left -= 1
        else:  # 0xc1: never used
            return i
        while not left and outer:
            left = outer.pop()
            opened.pop()
    return i


def field_of_invalid_string(data: bytes | bytearray, max_elements: int = 100_000) -> str | None:
    """The top-level field (of a map) holding the first string in ``data`` that is not UTF-8
    (``"message"`` if it is not under one); None if none is found within ``max_elements``
    elements (the walk is for an error message, so it is bounded)."""
    end = len(data)
    i = 0
    left = 1
    outer: list[int] = []
    field_at = -1
    for _ in range(max_elements):
        if i >= end:
            return None
        first = data[i]
        if len(outer) == 1 and left % 2:  # a value of the top-level map
            field_at = i
        if first in _STRING_BYTES:
            if first >= 0xD9:
                width = 1 << (first - 0xD9)
                start = i + 1 + width
                stop = start + int.from_bytes(data[i + 1 : start], "big")
            else:
                start, stop = i + 1, i + 1 + (first & 0x1F)
            try:
                data[start:stop].decode()
            except UnicodeDecodeError:
                return (
                    "message" if len(outer) == 1 and not left % 2 else _field_before(data, field_at)
                )
            i = stop
            left -= 1
        elif size := _FIXED_SIZE[first]:
            i += size
            left -= 1
        elif 0x80 <= first <= 0x9F or first >= 0xDC:
            count, header = _container(data, i, first)
            left -= 1
            if count:
                outer.append(left)
                left = count
            i += header
        elif (length_field := _LENGTH_FIELD.get(first)) is not None:
            i = _past_length_field(data, i, length_field)
            left -= 1
        else:
            return None
        while not left:
            if not outer:
                return None
            left = outer.pop()
    return None


def _field_before(data: bytes | bytearray, value_at: int) -> str:
    """The name of the top-level field whose value starts at ``value_at`` (see
    :func:`_key_before`); "message" when it cannot be read."""
    return _key_before(data, value_at) or "message"


def _key_before(data: bytes | bytearray, value_at: int) -> str | None:
    """The key of the map entry whose value starts at ``value_at``: the string just before
    it, when that is a short ASCII name (as every message field name is); else None."""
    for length in range(1, _MAX_FIELD_NAME + 1):
        start = value_at - length - 1
        if start < 0:
            break
        if data[start] == 0xA0 | length:
            name = data[start + 1 : value_at]
            if name.isascii() and name.replace(b"_", b"").isalnum():
                return name.decode()
            break
    return None


def _path_to(data: bytes | bytearray, opened: list[int], outer: list[int]) -> str:
    """Where the innermost open container is, from the message's own map: its keys and
    indexes (``response_format.json_schema``, ``messages[0].content[2]``), as far as they can
    be read (a key that is no short ASCII name ends it: ``"message"`` if it is the first).
    ``opened`` holds the header's offset of each open container, ``outer`` the elements its
    parent had left after it."""
    path = ""
    for depth in range(1, len(opened)):
        parent_at = opened[depth - 1]
        count, _ = _container(data, parent_at, data[parent_at])
        position = count - outer[depth] - 1  # of the container among its parent's elements
        if 0x90 <= data[parent_at] <= 0x9F or data[parent_at] in (0xDC, 0xDD):  # an array
            path += f"[{position}]"
            continue
        key = _key_before(data, opened[depth]) if position % 2 else None
        if key is None:
            break
        path = f"{path}.{key}" if path else key
    return path or "message"
