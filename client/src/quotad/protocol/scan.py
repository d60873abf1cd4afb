"""A walk over a frame's MessagePack bytes that decodes nothing: how deeply it nests, and which
top-level field holds a string that is not UTF-8.

msgspec decodes a frame recursively, so a frame nested a thousand levels deep (in a free-form
field such as ``Chat.extra``) ends its decoding in ``RecursionError``, and whatever survives
below that depth reaches code that walks it again. :func:`nesting_exceeds` bounds the depth
before msgspec sees the frame. It costs a C-speed count of the bytes that can open a container
when there are fewer of them than the limit (nearly every frame), else one pass over the
elements that skips strings by their length and runs of one-byte values in C. msgspec also
reports a string that is not UTF-8 as a bare ``UnicodeDecodeError`` with no path
(msgspec/msgspec#714); :func:`field_of_invalid_string` finds the field that holds it, so that
the error can name it.
"""

from __future__ import annotations

import re
from typing import Final

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


def nesting_exceeds(data: bytes | bytearray, limit: int) -> str | None:
    """None when the MessagePack value in ``data`` nests at most ``limit`` containers deep; else
    the name of the top-level field (of a map) under which it nests deeper, or ``"message"``.

    Bytes that are not MessagePack end the walk with None: the decoder then says what is wrong.
    """
    if len(data) <= limit or len(data.translate(None, _OTHER_BYTES)) < limit:
        return None  # fewer bytes that can open a container than the limit
    fixed_size = _FIXED_SIZE
    end = len(data)
    i = 0
    left = 1  # elements left in the innermost open container (the whole value at first)
    outer: list[int] = []  # the same for every container around it
    field_at = -1
    while True:
        if i >= end:
            return None
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
            count, header = _container(data, i, first)
            left -= 1
            if count:
                outer.append(left)
                if len(outer) == 2:
                    field_at = i  # a top-level field's value opens here
                if len(outer) > limit:
                    return _field_before(data, field_at)
                left = count
            i += header
        elif (length_field := _LENGTH_FIELD.get(first)) is not None:
            i = _past_length_field(data, i, length_field)
            left -= 1
        else:  # 0xc1: never used
            return None
        while not left:
            if not outer:
                return None
            left = outer.pop()


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
    """The name of the top-level field whose value starts at ``value_at``: the key just before
    it, when that is a short ASCII string (as every message field name is); else "message"."""
    for length in range(1, _MAX_FIELD_NAME + 1):
        start = value_at - length - 1
        if start < 0:
            break
        if data[start] == 0xA0 | length:
            name = data[start + 1 : value_at]
            if name.isascii() and name.replace(b"_", b"").isalnum():
                return name.decode()
            break
    return "message"
