"""Frames: a 4-byte big-endian length N, then N bytes of MessagePack holding one message.

:class:`FrameEncoder` and :class:`FrameDecoder` are built once per connection (or process) and
reused: encoding writes the payload and its length prefix into one reused buffer, decoding reads
every complete frame out of the bytes received so far. A length over ``max_frame`` is refused
before anything is allocated for it. The msgspec decoder of each message type is built once per
process and shared by every :class:`FrameDecoder` of that type.

Whatever a frame holds, decoding it either yields a message or raises a :class:`FrameError`
naming what is wrong (and the field, where one can be named): a frame nested deeper than
:data:`MAX_NESTING` is refused before msgspec walks it (see :mod:`quotad.protocol.scan`), a
string that is not UTF-8 is a bad frame (msgspec raises a bare ``UnicodeDecodeError`` for it),
and any other exception out of msgspec is caught too, so that no frame can raise anything a
reader of frames does not expect.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final, Generic, TypeVar

import msgspec

from quotad.protocol.messages import Reply, Request, RequestId
from quotad.protocol.scan import (
    NO_ITEM_BOUNDS,
    ItemBounds,
    TooDeep,
    TooMany,
    TooWide,
    bound_exceeded,
    end_of_items,
    field_of_invalid_string,
)

DEFAULT_MAX_FRAME: Final = 8 * 1024 * 1024
MAX_FRAME_CEILING: Final = 1024 * 1024 * 1024
"""The largest ``max_frame`` anything may set: ``daemon.max_frame`` is refused over it, and a
client reads no larger reply whatever a ``Welcome`` says (a frame's length prefix could ask
for 4 GiB of buffer)."""
HEADER_SIZE: Final = 4
MAX_NESTING: Final = 64
"""How many containers deep a frame's MessagePack may nest (the message's own map is the
first): deep enough for any JSON schema a tool declares, shallow enough that nothing walking a
message recursively runs out of stack."""
MAX_CONTAINER_ITEMS: Final = 50_000
"""The most items a map (its entries) or an array in a request may hold, read from its header
before msgspec decodes the frame (see :mod:`quotad.protocol.scan`): msgspec holds the GIL for
all of a frame's decoding, one of 500,000 keys in ``extra`` for 0.3 s, so that every other
client waited, and each step after it read them all again. Well above what a request needs:
a chat's messages, parts, tools and an embedding's inputs are bounded at 10,000 (the daemon's
``request_limits``), and OpenAI takes at most 5,000 properties and 1,000 enum values in a
schema (about 20,000 items with their types and descriptions)."""
MAX_SETTLE_HEADERS: Final = 1_000
"""How many of a ``Settle``'s headers are read, the first ones: they are hints (a provider's
rate-limit headers), and a settle is never refused for them (its permit would stay held until
its lease ends). A provider answers with a few dozen; 700,000 held the event loop for 1.2 s,
decoded and then parsed."""
MAX_FREE_FORM_ITEMS: Final = MAX_CONTAINER_ITEMS
"""The most items (a map's entries, an array's items, at every depth) one free-form value of a
request may hold: its ``extra``, ``tool_choice``, ``response_format``, ``tools`` (all
together), ``Admin.args``, counted from their headers before the frame is decoded; and each
content part (with the parts nested in it) and each tool call (the daemon's
``request_limits``, after). Spread over many maps and arrays, each within
:data:`MAX_CONTAINER_ITEMS`, 500,000 items in ``extra`` held the event loop 0.7 s walked and
decoded, and about as long again read by the steps (screening, the token bounds, the cache
key, the provider's body, the journal)."""
FREE_FORM_FIELDS: Final = ("extra", "tool_choice", "response_format", "tools", "args")
"""The top-level fields held to :data:`MAX_FREE_FORM_ITEMS` before the frame is decoded."""
REQUEST_ITEMS: Final = ItemBounds(
    each=MAX_CONTAINER_ITEMS,
    own={"headers": MAX_SETTLE_HEADERS},
    total=dict.fromkeys(FREE_FORM_FIELDS, MAX_FREE_FORM_ITEMS),
)
"""What the maps and arrays of a request frame may hold (a Settle's headers past their bound
are cut to it, not refused)."""

T = TypeVar("T")


class FrameError(Exception):
    """A frame could not be read; the connection it came from cannot be trusted any more.

    ``code`` is the protocol error code a daemon answers it with.
    """

    code: str = "bad_frame"


class FrameTooLarge(FrameError):
    """A frame's length prefix is over the limit."""


class MessageInvalid(FrameError):
    """A frame's payload is not a valid message; the text names the problem and the field."""


class MessageValidationError(MessageInvalid):
    """A frame's payload is well-formed MessagePack but not a valid message (an unknown type, a
    missing field, a value out of range): a bad request rather than a bad frame.

    ``request_id`` is the message's ``id`` when it could still be read: the frame's bounds were
    sound, so the request can be answered by its id and the frames after it read on. ``field``
    is the field that is wrong (``tags[0]``), when one is."""

    code = "bad_request"

    def __init__(
        self, message: str, request_id: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.field = field


class _Addressed(msgspec.Struct):
    """Only the ``id`` of a message (whatever else it holds)."""

    id: RequestId = -1


_ADDRESSED: Final = msgspec.msgpack.Decoder(_Addressed)


def _request_id_of(payload: bytearray) -> int | None:
    """The ``id`` of a payload that is a map holding a valid one, else None."""
    try:
        request_id = _ADDRESSED.decode(payload).id
    except Exception:  # whatever msgspec raises: the id cannot be read
        return None
    return request_id if request_id >= 0 else None


class FrameEncoder:
    """Encodes messages into length-prefixed frames, reusing one buffer."""

    __slots__ = ("_buffer", "_encoder")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray(256)

    def encode(self, message: object) -> bytes:
        """One frame holding ``message``."""
        buffer = self._buffer
        self._encoder.encode_into(message, buffer, HEADER_SIZE)
        size = len(buffer) - HEADER_SIZE
        buffer[:HEADER_SIZE] = size.to_bytes(HEADER_SIZE, "big")
        frame = bytes(buffer)
        if len(buffer) > 65536:  # do not keep a huge buffer alive after one big message
            self._buffer = bytearray(256)
        return frame


_DECODERS: dict[object, msgspec.msgpack.Decoder[Any]] = {}


def _message_decoder(message_type: type[T]) -> msgspec.msgpack.Decoder[T]:
    """The one msgspec decoder of ``message_type``, built on first use (building one takes tens
    of microseconds; decoding with one does not change it, so all connections share it)."""
    decoder = _DECODERS.get(message_type)
    if decoder is None:
        decoder = _DECODERS[message_type] = msgspec.msgpack.Decoder(message_type)
    return decoder


_TOP_LEVEL: Final = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_RAW_ENCODER: Final = msgspec.msgpack.Encoder()


def _first_items_only(payload: bytearray, wide: TooWide, count: int) -> bytearray:
    """``payload`` with the map of top-level field ``wide.path`` cut to its first ``count``
    entries (msgspec skips the others in C, without building them); as it is when it is not
    a map of string keys (the decoder then says what is wrong)."""
    if not wide.is_map:
        return payload
    try:
        fields = _TOP_LEVEL.decode(payload)
    except Exception:  # whatever msgspec raises: no map of named fields
        return payload
    cut = end_of_items(payload, wide.items_at, 2 * count)
    fields[wide.path] = msgspec.Raw(_map_header(count) + payload[wide.items_at : cut])
    return bytearray(_RAW_ENCODER.encode(fields))


def too_many_items(field: str, most: int) -> str:
    """What a free-form value past its bound on items is told (``field``, the value)."""
    return (
        f"{field}: a free-form value holds at most {most:,} items (the entries of its maps and "
        "the items of its arrays, at every depth)"
    )


def _map_header(count: int) -> bytes:
    """The header of a MessagePack map of ``count`` entries."""
    if count <= 15:
        return bytes([0x80 | count])
    return (
        b"\xde" + count.to_bytes(2, "big")
        if count <= 0xFFFF
        else b"\xdf" + count.to_bytes(4, "big")
    )


class FrameDecoder(Generic[T]):
    """Splits received bytes into frames and decodes each into a ``T`` message."""

    __slots__ = ("_buffer", "_decoder", "frame_size", "items", "max_frame")

    def __init__(
        self,
        message_type: type[T],
        max_frame: int = DEFAULT_MAX_FRAME,
        items: ItemBounds = NO_ITEM_BOUNDS,
    ) -> None:
        self._decoder = _message_decoder(message_type)  # shared, not built per connection
        self._buffer = bytearray()
        self.max_frame = max_frame
        self.items = items
        """What a frame's maps and arrays may hold (a map of a top-level field in its
        ``own`` past its bound is cut to its first entries, not refused)."""
        self.frame_size = 0
        """The bytes (length prefix included) of the frame :meth:`feed` yielded (or refused
        as :class:`MessageInvalid`) last."""

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[T]:
        """Add received bytes; yield every message now complete.

        Raises :class:`FrameTooLarge` or :class:`MessageInvalid` (for a payload that decodes but
        is no valid message: :class:`MessageValidationError`) at the first bad frame.
        """
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= HEADER_SIZE:
                size = int.from_bytes(buffer[offset : offset + HEADER_SIZE], "big")
                if size > self.max_frame:
                    raise FrameTooLarge(
                        f"frame of {size} bytes is over the limit of {self.max_frame} bytes"
                    )
                start = offset + HEADER_SIZE
                if end - start < size:
                    break
                payload = buffer[start : start + size]  # a copy: the buffer moves on
                offset = start + size
                self.frame_size = HEADER_SIZE + size
                yield self._decode(payload)
        finally:
            if offset:
                del buffer[:offset]

    def _decode(self, payload: bytearray) -> T:
        """One frame's message; a :class:`FrameError` for anything else it holds."""
        bounds = self.items
        found = bound_exceeded(payload, MAX_NESTING, bounds)
        if isinstance(found, TooWide) and found.depth == 2 and found.path in bounds.own:
            payload = _first_items_only(payload, found, bounds.own[found.path])
            found = bound_exceeded(payload, MAX_NESTING, bounds)
        if isinstance(found, TooDeep):
            raise MessageValidationError(
                f"invalid message: {found.field}: nested deeper than {MAX_NESTING} levels",
                field=field_named(found.field),
            )
        if isinstance(found, TooWide):
            kind = "a map" if found.is_map else "an array"
            most = bounds.own.get(found.path, bounds.each) if found.depth == 2 else bounds.each
            raise MessageValidationError(
                f"invalid message: {found.path}: {kind} of {found.items:,} items; a map or an "
                f"array in a request holds at most {most:,}",
                _request_id_of(payload),
                field_named(found.path),
            )
        if isinstance(found, TooMany):
            raise MessageValidationError(
                f"invalid message: {too_many_items(found.field, bounds.total[found.field])}",
                _request_id_of(payload),
                field_named(found.field),
            )
        try:
            return self._decoder.decode(payload)
        except msgspec.ValidationError as exc:
            described = describe(exc)
            raise MessageValidationError(
                f"invalid message: {described}", _request_id_of(payload), field_named(described)
            ) from None
        except msgspec.DecodeError as exc:
            raise MessageInvalid(f"malformed MessagePack: {exc}") from None
        except UnicodeDecodeError as exc:
            where = field_of_invalid_string(payload) or "a string"
            raise MessageInvalid(
                f"malformed MessagePack: {where}: not valid UTF-8 ({exc.reason} at byte "
                f"{exc.start} of the string)"
            ) from None
        except Exception as exc:  # msgspec raising what it does not document: still one frame
            raise MessageInvalid(
                f"undecodable frame: {type(exc).__name__}: {str(exc)[:200]}"
            ) from None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)


_MISSING_FIELD: Final = re.compile(
    r"Object missing required field `(?P<field>[^`]*)`(?: - at `\$\.?(?P<path>[^`]*)`)?$"
)


def describe(error: msgspec.ValidationError) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.max_tokens``` as
    ``max_tokens: expected int, got str`` (``message: ...`` for the message as a whole, and
    ``extra: a key: ...`` for a key of a map)."""
    text = str(error)
    missing = _MISSING_FIELD.match(text)
    if missing is not None:  # named as the field itself: messages[1].role: required
        path, field = missing["path"] or "", missing["field"]
        return f"{path}.{field}: required" if path else f"{field}: required"
    head, sep, where = text.rpartition(" - at `")
    what = f"{head[:1].lower()}{head[1:].replace('`', '')}" if sep else text.replace("`", "")
    if not sep:
        return f"message: {what[:1].lower()}{what[1:]}"
    key, in_key, where = where.partition("` in `")
    if not in_key:
        where = key
    path = where.rstrip("`").removeprefix("$").removeprefix(".") or "message"
    return f"{path}: a key: {what}" if in_key else f"{path}: {what}"


def field_named(description: str) -> str | None:
    """The field a :func:`describe` text (or a bare path) names: ``tags[0]`` of ``tags[0]:
    expected str of length <= 256``; None when it is about the message as a whole."""
    field = description.partition(": ")[0]
    return None if field == "message" else field


def request_decoder(max_frame: int = DEFAULT_MAX_FRAME) -> FrameDecoder[Request]:
    """A decoder for frames a daemon receives, their maps and arrays held to
    :data:`REQUEST_ITEMS`."""
    return FrameDecoder(Request, max_frame, REQUEST_ITEMS)  # type: ignore[arg-type]


def reply_decoder(max_frame: int = DEFAULT_MAX_FRAME) -> FrameDecoder[Reply]:
    """A decoder for frames a client receives."""
    return FrameDecoder(Reply, max_frame)  # type: ignore[arg-type]
