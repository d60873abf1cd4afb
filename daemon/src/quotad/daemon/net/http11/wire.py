"""An answer's bytes on the wire: its head (status line and headers, each checked so that no
header can split the head or carry a control byte), and the trailer section that ends a chunked
body."""

from __future__ import annotations

import logging
from http import HTTPStatus

from quotad.daemon.net.http11.messages import HttpResponse, StreamingResponse

logger = logging.getLogger("quotad.daemon.net.http11.server")  # the HTTP core logs as its server

_REASON_TEXT: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
NO_BODY_STATUSES = frozenset({204, 304})
"""Statuses whose answers have no body (nor a length)."""
_CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D} | {0x7F}
_NOT_CONTROL = bytes(byte for byte in range(256) if byte not in _CONTROL_BYTES)
"""Every byte but the control bytes no response head may hold (tab is allowed; CR and LF
are checked apart): ``head.translate(None, _NOT_CONTROL)`` leaves those it holds."""


def encode_head(
    response: HttpResponse | StreamingResponse, *, keep_alive: bool, chunked: bool
) -> bytes:
    """Status line and headers; raises ValueError on a header that would split the head or
    that holds another control byte than tab, or a character beyond latin-1."""
    status = response.status
    parts = [f"HTTP/1.1 {status} {_REASON_TEXT.get(status, '')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    if isinstance(response, HttpResponse):
        if status not in NO_BODY_STATUSES:
            parts.append(f"content-length: {len(response.body)}\r\n")
    elif chunked:
        parts.append("transfer-encoding: chunked\r\n")
        if response.trailer_names:
            parts.append(f"trailer: {', '.join(response.trailer_names)}\r\n")
    if not keep_alive:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    lines = len(parts)
    if head.count("\n") != lines or head.count("\r") != lines:
        raise ValueError(f"a response header holds a line break: {response.headers!r}")
    encoded = head.encode("latin-1")
    if encoded.translate(None, _NOT_CONTROL):
        raise ValueError(f"a response header holds a control byte: {response.headers!r}")
    return encoded


def closing_answer(response: HttpResponse) -> bytes:
    """``response`` whole, head and body, as the last answer of a connection (``connection:
    close``): what the server writes at once when it refuses or evicts a connection."""
    return encode_head(response, keep_alive=False, chunked=True) + response.body


def trailer_section(response: StreamingResponse) -> bytes:
    """The trailer fields of a chunked body's end: those announced and filled in, each
    checked as the head's are (one that is not sound is left out, and logged)."""
    lines = []
    for name, value in response.trailers:
        field = f"{name}: {value}"
        if name in response.trailer_names and _sound_field(field):
            lines.append(f"{field}\r\n".encode("latin-1"))
        else:
            logger.error("trailer %r not sent: not announced, or not a sound field", name)
    return b"".join(lines)


def _sound_field(field: str) -> bool:
    """``field`` (``name: value``) is latin-1 and holds no control byte (tab aside)."""
    try:
        encoded = field.encode("latin-1")
    except UnicodeEncodeError:
        return False
    line_break = b"\r" in encoded or b"\n" in encoded
    return not line_break and not encoded.translate(None, _NOT_CONTROL)
