"""Values JSON cannot carry, refused where they can come in: the Unix socket.

A chat or an embedding request reaches its provider as JSON, free-form fields included
(content parts, tool calls, tools, ``tool_choice``, ``response_format``, ``extra``). Over HTTP
they were JSON already. Over the socket they are MessagePack, which can hold what JSON cannot:
an extension value (``msgspec.msgpack.Ext``), or a map key that is an array, a boolean or nil.
Such a request would fail only when its provider's body is encoded, after its gates and budgets
were held, as an internal error. :func:`check_json_values` refuses it first, as
``bad_request`` naming where (``extra.meta.when: ...``).

The check is one JSON encoding of the request into a reused buffer (C speed, nothing kept); only
when it fails is the request walked to say where. Byte strings and timestamps pass, sent as
msgspec writes them (base64, RFC 3339), as they were before.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from quotad.daemon.errors import RequestError
from quotad.protocol.messages import Chat, Embed

_PROBE: Final = msgspec.json.Encoder()
_KEPT_BUFFER_BYTES: Final = 65536
"""A probe buffer grown past this by one large request is not kept for the next."""
_buffer = bytearray()


def check_json_values(request: Chat | Embed) -> None:
    """Refuse ``request`` (``bad_request`` naming where) if JSON cannot carry a value in it."""
    global _buffer
    try:
        _PROBE.encode_into(request, _buffer)
    except (TypeError, ValueError, OverflowError) as error:
        where, what = _where_not_json(request, "") or ("message", str(error))
        raise RequestError(
            "bad_request", f"{where}: {what}, which JSON cannot carry", details={"field": where}
        ) from None
    finally:
        if len(_buffer) > _KEPT_BUFFER_BYTES:
            _buffer = bytearray()


def _where_not_json(value: Any, where: str) -> tuple[str, str] | None:
    """Where in ``value`` the first value JSON cannot carry stands, and what it is."""
    if isinstance(value, msgspec.msgpack.Ext):
        return where or "message", f"a MessagePack extension (type {value.code})"
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            found = _where_not_json(getattr(value, name), f"{where}.{name}" if where else name)
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodes({key: None}):
                return where or "message", f"a key that is {_kind(key)}"
            found = _where_not_json(item, f"{where}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _where_not_json(item, f"{where}[{index}]")
            if found is not None:
                return found
    return None


def _encodes(value: Any) -> bool:
    try:
        _PROBE.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _kind(key: Any) -> str:
    if isinstance(key, tuple):
        return "an array"
    if isinstance(key, bool):
        return "a boolean"
    return "nil" if key is None else type(key).__name__
